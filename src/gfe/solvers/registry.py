"""The solver registry: one `SolverSpec` per solver name, read by `gfe.encode`, the exact
gradients, the trainer's method table, the estimator, the command line and the benchmarks.

A solver is a function `solve(objective, flow, x, weights, y0, rule, options, trajectory)`
returning `Results` (build it from `gfe.solvers.active`: `begin`, `commit`, `integrate`),
plus a frozen dataclass of its options. Register one with `register_solver` and every
layer above accepts its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..registry import Registry

# (A, b, c) of an explicit Runge-Kutta scheme
Tableau = tuple[tuple[tuple[float, ...], ...], tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class NoOptions:
    """For a solver without options of its own."""


@dataclass(frozen=True)
class SolverSpec:
    """What every layer needs to know about a solver.

    `tableau` returns the explicit Runge-Kutta tableau its accepted steps follow, so
    exact decoder gradients can replay them (`gfe.gradients`); `descent_steps` says its
    steps are the flow's own `descent_step` (AMD), replayed as such. A solver with
    neither is a plain optimizer: approximate gradients only. `replay_error(options)`
    says why particular options cannot be replayed (None when they can).
    """

    name: str
    solve: Callable[..., Any]
    options: type = NoOptions
    tableau: Callable[[], Tableau] | None = None
    descent_steps: bool = False
    replay_error: Callable[[Any], str | None] = lambda options: None
    summary: str = ""

    @property
    def replayable(self) -> bool:
        return self.tableau is not None or self.descent_steps

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))

    def make_options(self, values: dict):
        """The solver's options dataclass from user values, with a clear error for unknown names."""
        unknown = set(values) - set(self.option_names)
        if unknown:
            accepted = ", ".join(sorted(self.option_names)) or "none"
            raise ConfigError(f"solver {self.name!r} has no option(s) {', '.join(sorted(unknown))}; "
                              f"it accepts {accepted}")
        return self.options(**values)


SOLVERS: Registry[SolverSpec] = Registry("solver")
solver_spec = SOLVERS.spec


def register_solver(spec: SolverSpec) -> SolverSpec:
    """Add `spec` under `spec.name`; every layer above then accepts the name."""
    if not dataclasses.is_dataclass(spec.options):
        raise ConfigError(f"solver {spec.name!r}: options must be a dataclass type")
    return SOLVERS.register(spec)
