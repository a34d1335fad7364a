"""Explicit Runge-Kutta schemes (Euler, classical RK4) on a fixed time grid `0, dt, 2dt, ..., tau`.

A scheme is its tableau alone: the same `runge_kutta_step` takes the forward steps
here and replays them for exact decoder gradients (`gfe.gradients`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .active import ActiveSet, StopRule, begin, commit, integrate, pending, step_sizes
from .registry import SolverSpec, Tableau, register_solver
from .runge_kutta import runge_kutta_step
from .status import Status

RISE = 0.1  # a Lyapunov energy this far (share of the descent so far) above its lowest value: unstable
RESOLUTION = 16  # ... or by more than this many ulps of it, when there has been no descent yet

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
    `non-finite` with its last finite state. A step after which the flow's
    Lyapunov energy (`flow.lyapunov`, which the exact flow never raises) stands
    above its lowest value by more than `RISE` of the descent since the first
    step (which may raise it: the Nesterov flow's first step only gains speed)
    is not taken either: the grid is too coarse for the sample's curvature
    (explicit Euler on the Nesterov flow always gets there once the damping
    `3/t` has faded), and the sample stops as `diverged` instead of running on
    to its step budget.
    """
    active = begin(objective, flow, x, weights, y0, trajectory)
    active.top = active.lowest = flow.lyapunov(active.y, active.loss)
    active.diverged = torch.zeros_like(active.nonfinite)

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
        energy = flow.lyapunov(y, loss)
        first = active.steps == 0
        margin = RISE * (active.top - active.lowest) + RESOLUTION * torch.finfo(loss.dtype).eps * energy.abs()
        diverged = finite & ~first & (energy - active.lowest > margin)
        take = finite & ~diverged
        commit(active, take, y, loss, grad, h)
        active.top = torch.where(take & first, torch.maximum(active.top, energy), active.top)
        active.lowest = torch.where(take, torch.where(first, energy, torch.minimum(active.lowest, energy)), active.lowest)
        active.nonfinite = ~finite
        active.diverged = diverged

    def unstable(active: ActiveSet, status: torch.Tensor | None) -> torch.Tensor | None:
        if not bool(active.diverged.any()):
            return status
        status = pending(active) if status is None else status
        return torch.where((status < 0) & active.diverged, int(Status.DIVERGED), status)

    return integrate(active, flow, rule, step, unstable)


register_solver(SolverSpec("euler", functools.partial(solve_fixed, tableau=EULER), FixedStepOptions,
                           tableau=lambda: EULER, summary="explicit Euler on a fixed grid (dt)"))
register_solver(SolverSpec("rk4", functools.partial(solve_fixed, tableau=RK4), FixedStepOptions,
                           tableau=lambda: RK4, summary="classical Runge-Kutta 4 on a fixed grid (dt)"))
