"""AMD: adaptive steps that are accepted only if they lower the sample's loss.

Each sample tries one step per iteration, keeps it if the loss passes the Armijo
test `E(new) <= E + σ ∇E·Δz` and strictly decreases, and then grows its step; on
failure it shrinks its step and tries again. Decisions are per sample, so a
sample's path does not depend on its batch-mates.

Three step rules (`AMDOptions.step`):

* `"flow"` (the reference's): the flow's own explicit step (`flow.descent_step`),
  step size grown by `grow` up to `h_max` after each accepted step.
* `"spectral"` (first-order flow): the same gradient steps, but after an accepted
  step the next step size is the Barzilai-Borwein estimate `sᵀs / (α sᵀy)` of the
  inverse curvature along the path, so flat directions are crossed in few steps.
* `"bfgs"` (first-order flow): steps along `-H ∇E`, where `H` is each sample's own
  BFGS estimate of the inverse Hessian (dense, `d × d`; latents are small), tried
  at full length first. It starts as `metric0` if given (e.g. the inverse of the
  mean Hessian at converged latents that a refined start map carries,
  `gfe.start`), else as a scaled identity. It is the gradient flow in a learned
  metric: it has the same stationary points and still lowers the loss at every
  accepted step, but it no longer follows the flow's path, so `t` counts step
  fractions, not flow time.

For the second-order flow the momentum is dropped (an adaptive restart, as in
O'Donoghue & Candès 2015) when it points uphill (`∇E·v > 0`) or when no step
size down to the smallest one lowers the loss; a sample stalls only when even a
plain gradient step fails. The BFGS rule likewise resets its metric once before
a sample is declared stalled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .active import ActiveSet, StopRule, begin, commit, integrate, pending, step_sizes
from .registry import SolverSpec, register_solver
from .status import Status

RESOLUTION = 16  # decreases below this many ulps of the loss cannot be measured
STEPS = ("flow", "spectral", "bfgs")


@dataclass(frozen=True)
class AMDOptions:
    """Step-size constants; the defaults are the reference's MNIST constants (DESIGN §2.4)."""

    h0: float = 1.0
    h_max: float = 10.0
    shrink: float = 0.5
    grow: float = 1.1
    max_shrinks: int = 20
    sigma: float = 1e-5
    step: str = "flow"
    metric0: torch.Tensor | None = None  # initial inverse-Hessian estimate (step "bfgs"), symmetric positive definite

    def __post_init__(self):
        if self.step not in STEPS:
            raise ConfigError(f"unknown AMD step rule {self.step!r}; expected one of {', '.join(STEPS)}")
        if self.metric0 is not None:
            _check_metric(self.metric0, self.step)
        if not (self.h0 > 0 and self.h_max > 0 and 0 < self.shrink < 1 and self.grow >= 1 and self.max_shrinks >= 0
                and 0 <= self.sigma < 1):
            raise ConfigError(
                "AMD needs h0, h_max > 0, 0 < shrink < 1, grow >= 1, max_shrinks >= 0 and 0 <= sigma < 1; got "
                f"h0={self.h0}, h_max={self.h_max}, shrink={self.shrink}, grow={self.grow}, "
                f"max_shrinks={self.max_shrinks}, sigma={self.sigma}")


def solve_amd(objective, flow, x, weights, y0, rule: StopRule, options: AMDOptions = AMDOptions(), trajectory=None):
    o = options
    second_order = flow.velocity(y0) is not None
    if second_order and o.step != "flow":
        raise ConfigError(f"the AMD step rule {o.step!r} is for the first-order flow; "
                          "the Nesterov flow uses step='flow'")
    active = begin(objective, flow, x, weights, y0, trajectory)
    active.h = torch.full_like(active.t, o.h0)
    active.clock = torch.zeros_like(active.t)  # time since the last momentum restart
    active.shrinks = torch.zeros_like(active.steps)
    if o.step == "bfgs":
        eye = torch.eye(flow.latent_dim, dtype=y0.dtype, device=y0.device)
        if o.metric0 is None:
            active.metric = (flow.alpha * eye).expand(len(active), -1, -1).clone()
            active.fresh = torch.ones_like(active.steps, dtype=torch.bool)  # metric not yet learned
        else:
            if o.metric0.shape != eye.shape:
                raise ConfigError(f"metric0 has shape {tuple(o.metric0.shape)}; the latents need {tuple(eye.shape)}")
            active.metric = o.metric0.to(eye).expand(len(active), -1, -1).clone()
            active.fresh = torch.zeros_like(active.steps, dtype=torch.bool)

    def trial(active: ActiveSet, h: torch.Tensor) -> torch.Tensor:
        if o.step == "bfgs":
            return active.y - h[:, None] * _times(active.metric, active.grad)
        return flow.descent_step(active.y, active.grad, active.clock.to(active.y.dtype), h)

    def step(active: ActiveSet) -> None:
        h = step_sizes(active, active.h, rule)
        y = trial(active, h.to(active.y.dtype))
        loss, grad = objective.value_and_grad(flow.latent(y), active.x, active.w)
        active.nfe = active.nfe + 1
        s = flow.latent(y) - flow.latent(active.y)
        slope = (active.grad * s).sum(1)
        accept = torch.isfinite(loss) & torch.isfinite(grad).all(1) & (loss < active.loss)
        accept &= loss <= active.loss + o.sigma * slope
        grown = (h * o.grow).clamp(max=o.h_max)
        if o.step != "flow":
            change = grad - active.grad
            sy = (s * change).sum(1)
            curved = accept & (sy > 0)
            if o.step == "spectral":
                spectral = (s * s).sum(1) / (flow.alpha * sy)
                grown = torch.where(curved, spectral.to(h.dtype).clamp(max=o.h_max), grown)
            else:
                active.metric = _bfgs_update(active.metric, s, change, sy, curved, active.fresh)
                active.fresh = active.fresh & ~curved
                grown = torch.ones_like(h)  # a learned metric is tried at full length first
        commit(active, accept, y, loss, grad, h)
        active.clock = torch.where(accept, active.clock + h, active.clock)
        active.h = torch.where(accept, grown, h * o.shrink)
        active.shrinks = torch.where(accept, 0, active.shrinks + 1)
        if second_order:
            velocity = flow.velocity(active.y)
            uphill = accept & ((active.grad * velocity).sum(1) > 0)
            stuck = (active.shrinks > o.max_shrinks) & (velocity.abs().amax(1) > 0)
            restart = uphill | stuck
            active.y = torch.where(restart[:, None], flow.restart(active.y), active.y)
            if active.log is not None:
                active.log.restart(active.rows[restart])
            active.clock = torch.where(restart, 0.0, active.clock)
            active.shrinks = torch.where(stuck, 0, active.shrinks)
            active.h = torch.where(stuck, o.h_max, active.h)  # a restarted step moves ~h²: start wide
        elif o.step == "bfgs":
            stuck = (active.shrinks > o.max_shrinks) & ~active.fresh & ~at_precision(active)
            eye = torch.eye(flow.latent_dim, dtype=active.y.dtype, device=active.y.device)
            active.metric = torch.where(stuck[:, None, None], flow.alpha * eye, active.metric)
            active.fresh = active.fresh | stuck
            active.shrinks = torch.where(stuck, 0, active.shrinks)
            active.h = torch.where(stuck, o.h0, active.h)

    def at_precision(active: ActiveSet) -> torch.Tensor:
        """Even the longest step's predicted decrease is below the loss's rounding error."""
        if o.step == "bfgs":
            predicted = (active.grad * _times(active.metric, active.grad)).sum(1)
        else:
            predicted = o.h_max * flow.alpha * active.grad.square().sum(1)
        return predicted <= RESOLUTION * torch.finfo(active.loss.dtype).eps * active.loss.abs()

    def stalled(active: ActiveSet, status: torch.Tensor | None) -> torch.Tensor | None:
        """No step lowers the loss: converged if at precision, stalled otherwise."""
        failed = active.shrinks > o.max_shrinks
        if not bool(failed.any()):
            return status
        status = pending(active) if status is None else status
        failed &= status < 0
        precise = at_precision(active)
        status = torch.where(failed & precise, int(Status.CONVERGED), status)
        return torch.where(failed & ~precise, int(Status.STALLED), status)

    return integrate(active, flow, rule, step, stalled)


def _check_metric(metric: torch.Tensor, step: str) -> None:
    if step != "bfgs":
        raise ConfigError(f"metric0 is the BFGS rule's initial metric; step is {step!r}, not 'bfgs'")
    if not isinstance(metric, torch.Tensor) or metric.dim() != 2 or metric.shape[0] != metric.shape[1]:
        raise ConfigError("metric0 must be a square matrix (a torch tensor of shape (latent_dim, latent_dim))")
    m = metric.detach().double()
    if not torch.isfinite(m).all() or not torch.allclose(m, m.T, rtol=1e-5, atol=1e-7 * float(m.abs().max())):
        raise ConfigError("metric0 must be finite and symmetric")
    if int(torch.linalg.cholesky_ex(m)[1]) != 0:
        raise ConfigError("metric0 must be positive definite")


def _times(metric: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each sample's `metric @ v`, as products summed per row: a batched matrix-vector
    product rounds a batch of one differently from larger batches (`gfe.rows`)."""
    return (metric * v[:, None, :]).sum(2)


def _bfgs_update(metric, s, y, sy, update, fresh):
    """The BFGS inverse-Hessian update `(I - ρsyᵀ) H (I - ρysᵀ) + ρssᵀ` for the rows
    in `update`; a fresh metric is first rescaled to `(sᵀy / yᵀy) I`
    (Nocedal & Wright, eq. 6.20), which sets the step length's scale."""
    d = metric.shape[-1]
    eye = torch.eye(d, dtype=metric.dtype, device=metric.device)
    sy_safe = torch.where(update, sy, 1.0)
    scale = sy_safe / (y * y).sum(1).clamp_min(torch.finfo(y.dtype).tiny)
    base = torch.where((update & fresh)[:, None, None], scale[:, None, None] * eye, metric)
    rho = (1.0 / sy_safe)[:, None, None]
    left = eye - rho * s[:, :, None] * y[:, None, :]
    updated = torch.bmm(torch.bmm(left, base), left.transpose(1, 2)) + rho * s[:, :, None] * s[:, None, :]
    return torch.where(update[:, None, None], updated, metric)


def _replay_error(options: AMDOptions) -> str | None:
    if options.step == "bfgs":
        return ("step='bfgs' moves in a learned metric that is not recorded; use step='flow' or 'spectral', "
                "or gradient='approx'")
    return None


register_solver(SolverSpec("amd", solve_amd, AMDOptions, descent_steps=True, replay_error=_replay_error,
                           summary="adaptive steps accepted only if they lower the loss (h0, h_max, step, ...)"))
