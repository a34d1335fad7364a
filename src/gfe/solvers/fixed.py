"""Explicit Runge-Kutta schemes (Euler, classical RK4) on a fixed time grid `0, dt, 2dt, ..., tau`.

A scheme is its tableau alone: the same `runge_kutta_step` takes the forward steps
here and replays them for exact decoder gradients (`gfe.gradients`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .active import ActiveSet, StopRule, begin, commit, integrate, step_sizes
from .registry import SolverSpec, Tableau, register_solver
from .runge_kutta import runge_kutta_step

EULER: Tableau = (((0.0,),), (1.0,), (0.0,))
RK4: Tableau = (
    ((0.0, 0.0, 0.0, 0.0), (0.5, 0.0, 0.0, 0.0), (0.0, 0.5, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0)),
    (1 / 6, 1 / 3, 1 / 3, 1 / 6),
    (0.0, 0.5, 0.5, 1.0),
)


@dataclass(frozen=True)
class FixedStepOptions:
    dt: float = 1.0

    def __post_init__(self):
        if not self.dt > 0:
            raise ConfigError(f"dt must be > 0; got {self.dt}")


def solve_fixed(objective, flow, x, weights, y0, rule: StopRule, options: FixedStepOptions = FixedStepOptions(),
                trajectory=None, *, tableau: Tableau):
    """Integrate the flow with steps of `options.dt` (the last one clipped to land on tau).

    A step whose result is not finite is not taken; the sample stops as
    `non-finite` with its last finite state.
    """
    active = begin(objective, flow, x, weights, y0, trajectory)

    def rhs(t, y):
        _, grad = objective.value_and_grad(flow.latent(y), active.x, active.w)
        return flow.field(t, y, grad)

    def step(active: ActiveSet) -> None:
        h = step_sizes(active, torch.full_like(active.t, options.dt), rule)
        k1 = flow.field(active.t, active.y, active.grad)
        y = runge_kutta_step(rhs, active.t, active.y, h, tableau, k1)
        loss, grad = objective.value_and_grad(flow.latent(y), active.x, active.w)
        active.nfe = active.nfe + len(tableau[1])  # stages after the first, and the new point
        finite = torch.isfinite(loss) & torch.isfinite(y).all(1) & torch.isfinite(grad).all(1)
        commit(active, finite, y, loss, grad, h)
        active.nonfinite = ~finite

    return integrate(active, flow, rule, step)


register_solver(SolverSpec("euler", functools.partial(solve_fixed, tableau=EULER), FixedStepOptions,
                           tableau=lambda: EULER, summary="explicit Euler on a fixed grid (dt)"))
register_solver(SolverSpec("rk4", functools.partial(solve_fixed, tableau=RK4), FixedStepOptions,
                           tableau=lambda: RK4, summary="classical Runge-Kutta 4 on a fixed grid (dt)"))
