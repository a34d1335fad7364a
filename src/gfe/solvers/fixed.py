"""Euler and classical Runge-Kutta 4 on a fixed time grid `0, dt, 2dt, ..., tau`."""

from __future__ import annotations

import torch

from .active import ActiveSet, StopRule, begin, commit, integrate, step_sizes


def _rk4_increment(rhs, t, y, k1, h):
    h_ = h.to(y.dtype)[:, None]
    k2 = rhs(t + h / 2, y + h_ / 2 * k1)
    k3 = rhs(t + h / 2, y + h_ / 2 * k2)
    k4 = rhs(t + h, y + h_ * k3)
    return h_ / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


METHODS = {"euler": (0, lambda rhs, t, y, k1, h: h.to(y.dtype)[:, None] * k1), "rk4": (3, _rk4_increment)}


def solve_fixed(objective, flow, x, weights, y0, rule: StopRule, *, method: str, dt: float = 1.0):
    """Integrate the flow with steps of `dt` (the last one clipped to land on tau).

    A step whose result is not finite is not taken; the sample stops as
    `non-finite` with its last finite state.
    """
    extra_evals, increment = METHODS[method]
    active = begin(objective, flow, x, weights, y0)

    def rhs(t, y):
        _, grad = objective.value_and_grad(flow.latent(y), active.x, active.w)
        return flow.field(t, y, grad)

    def step(active: ActiveSet) -> None:
        h = step_sizes(active, torch.full_like(active.t, dt), rule)
        k1 = flow.field(active.t, active.y, active.grad)
        y = active.y + increment(rhs, active.t, active.y, k1, h)
        loss, grad = objective.value_and_grad(flow.latent(y), active.x, active.w)
        active.nfe = active.nfe + extra_evals + 1
        finite = torch.isfinite(loss) & torch.isfinite(y).all(1) & torch.isfinite(grad).all(1)
        commit(active, finite, y, loss, grad, h)
        active.nonfinite = ~finite

    return integrate(active, flow, rule, step)
