"""One mechanism for gfe's registries (solvers, losses, decoders, training methods):
a name-to-spec mapping that every layer reads, so a new entry is one `register` call."""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import ConfigError

Spec = TypeVar("Spec")


class Registry(dict, Generic[Spec]):
    """Specs by their `name`, in registration order (the order choices are listed in)."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, spec: Spec) -> Spec:
        """Add `spec` under `spec.name`; registering the same spec again is harmless, another under a
        taken name is refused."""
        if spec.name in self and self[spec.name] != spec:
            raise ConfigError(f"a {self.what} named {spec.name!r} is registered already")
        self[spec.name] = spec
        return spec

    def spec(self, name: str) -> Spec:
        """The spec named `name`, or a `ConfigError` listing the names there are."""
        if name not in self:
            raise ConfigError(f"unknown {self.what} {name!r}; expected one of {', '.join(self)}")
        return self[name]
