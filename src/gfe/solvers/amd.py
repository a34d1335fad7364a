"""AMD: adaptive steps that are accepted only if they lower the sample's loss.

Each sample tries one step per iteration (`flow.descent_step`), keeps it if the
loss passes the Armijo test `E(new) <= E + σ ∇E·Δz` and strictly decreases, and
then grows its step; on failure it halves its step and tries again. Decisions are
per sample, so a sample's path does not depend on its batch-mates.

For the second-order flow the momentum is dropped (an adaptive restart, as in
O'Donoghue & Candès 2015) when it points uphill (`∇E·v > 0`) or when no step
size down to the smallest one lowers the loss; a sample stalls only when even a
plain gradient step fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .active import ActiveSet, StopRule, begin, commit, integrate, step_sizes
from .status import Status


RESOLUTION = 16  # decreases below this many ulps of the loss cannot be measured


@dataclass(frozen=True)
class AMDOptions:
    """The reference's MNIST constants (DESIGN §2.4)."""

    h0: float = 1.0
    h_max: float = 10.0
    shrink: float = 0.5
    grow: float = 1.1
    max_shrinks: int = 20
    sigma: float = 1e-5
    spectral: bool = False


def solve_amd(objective, flow, x, weights, y0, rule: StopRule, *, options: AMDOptions = AMDOptions()):
    o = options
    active = begin(objective, flow, x, weights, y0)
    active.h = torch.full_like(active.t, o.h0)
    active.clock = torch.zeros_like(active.t)  # time since the last momentum restart
    active.shrinks = torch.zeros_like(active.steps)

    def step(active: ActiveSet) -> None:
        h = step_sizes(active, active.h, rule)
        y = flow.descent_step(active.y, active.grad, active.clock.to(active.y.dtype), h.to(active.y.dtype))
        loss, grad = objective.value_and_grad(flow.latent(y), active.x, active.w)
        active.nfe = active.nfe + 1
        slope = (active.grad * (flow.latent(y) - flow.latent(active.y))).sum(1)
        accept = torch.isfinite(loss) & torch.isfinite(grad).all(1) & (loss < active.loss)
        accept &= loss <= active.loss + o.sigma * slope
        grown = h * o.grow
        if o.spectral and flow.velocity(y) is None:
            s_ = flow.latent(y) - flow.latent(active.y)
            sy = (s_ * (grad - active.grad)).sum(1)
            bb = (s_ * s_).sum(1) / (flow.alpha * sy)
            grown = torch.where(sy > 0, bb.to(h.dtype), grown)
        commit(active, accept, y, loss, grad, h)
        active.clock = torch.where(accept, active.clock + h, active.clock)
        active.h = torch.where(accept, grown.clamp(max=o.h_max), h * o.shrink)
        active.shrinks = torch.where(accept, 0, active.shrinks + 1)
        velocity = flow.velocity(active.y)
        if velocity is not None:
            uphill = accept & ((active.grad * velocity).sum(1) > 0)
            stuck = (active.shrinks > o.max_shrinks) & (velocity.abs().amax(1) > 0)
            restart = uphill | stuck
            active.y = torch.where(restart[:, None], flow.restart(active.y), active.y)
            if active.log is not None:
                active.log.restart(active.rows[restart])
            active.clock = torch.where(restart, 0.0, active.clock)
            active.shrinks = torch.where(stuck, 0, active.shrinks)
            active.h = torch.where(stuck, o.h_max, active.h)  # a restarted step moves ~h²: start wide

    def stalled(active: ActiveSet, status: torch.Tensor) -> torch.Tensor:
        """No step lowers the loss: converged if even the largest step's predicted
        decrease is below the loss's rounding error, stalled otherwise."""
        failed = (status < 0) & (active.shrinks > o.max_shrinks)
        predicted = o.h_max * flow.alpha * active.grad.square().sum(1)
        resolution = RESOLUTION * torch.finfo(active.loss.dtype).eps * active.loss.abs()
        at_precision = predicted <= resolution
        status = torch.where(failed & at_precision, int(Status.CONVERGED), status)
        return torch.where(failed & ~at_precision, int(Status.STALLED), status)

    return integrate(active, flow, rule, step, stalled)
