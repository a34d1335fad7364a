"""Benchmarks that write JSON: `gfe bench NAME ...`. Each compares methods in the
same run on the same machine, since shared machines are too noisy for absolute
numbers across runs. Each module holds its benchmark's `run` and its command's
parser (`add_parser`); the numbers they measured are in docs/benchmarks.md and
their JSON in bench/results/."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from ..errors import ConfigError


def at_least(minimum: int, **counts) -> None:
    """Refuse, by name, a count (or a sequence of counts: not empty, each
    checked) below `minimum`, before a benchmark loads data or trains."""
    for name, value in counts.items():
        many = isinstance(value, Sequence)
        values = list(value) if many else [value]
        if not values or not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= minimum
                                 for v in values):
            if many:
                raise ConfigError(f"{name} must be one or more whole numbers, each at least {minimum}; got {value!r}")
            raise ConfigError(f"{name} must be at least {minimum}, a whole number; got {value!r}")


def known(name: str, values, allowed) -> None:
    """Refuse an empty selection or one naming something not in `allowed`, listing what is."""
    values = list(values)
    if not values or any(v not in allowed for v in values):
        raise ConfigError(f"{name} must be one or more of {', '.join(allowed)}; got {values!r}")
