"""Bookkeeping shared by all solvers: the active batch and the finished results.

Every per-sample quantity lives in one `ActiveSet`; when samples stop, their rows
are written to the `Results` buffers and removed from the active batch, so no
further decoder evaluations are spent on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .status import Status


class ActiveSet:
    """Named per-sample tensors that are compacted together.

    `log`, if set (by `begin`, from the solver's `trajectory` argument), is told every
    accepted step and momentum restart; exact decoder gradients replay them (`gfe.gradients`).
    """

    log = None

    def __init__(self, **tensors: torch.Tensor):
        n = next(iter(tensors.values())).shape[0]
        device = next(iter(tensors.values())).device
        self.__dict__["_t"] = {"rows": torch.arange(n, device=device), **tensors}

    def __getattr__(self, name):
        try:
            return self._t[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self._t[name] = value

    def __len__(self):
        return self._t["rows"].shape[0]

    def keep(self, mask: torch.Tensor) -> None:
        for name, tensor in self._t.items():
            if tensor is not None:
                self._t[name] = tensor[mask]


class Results:
    """Final latents and statistics for all samples, filled in as samples stop."""

    def __init__(self, n: int, state_dim: int, like: torch.Tensor):
        self.y = like.new_zeros((n, state_dim))
        self.loss = like.new_full((n,), float("nan"))
        self.t = torch.zeros(n, dtype=torch.float64, device=like.device)
        self.steps = torch.zeros(n, dtype=torch.long, device=like.device)
        self.nfe = torch.zeros(n, dtype=torch.long, device=like.device)
        self.status = torch.full((n,), -1, dtype=torch.long, device=like.device)

    def retire(self, active: ActiveSet, done: torch.Tensor, status: torch.Tensor) -> None:
        """Record the rows of `active` flagged in `done` and drop them from it."""
        rows = active.rows[done]
        self.y[rows] = active.y[done]
        self.loss[rows] = active.loss[done]
        self.t[rows] = active.t[done]
        self.steps[rows] = active.steps[done]
        self.nfe[rows] = active.nfe[done]
        self.status[rows] = status[done]
        active.keep(~done)


@dataclass(frozen=True)
class StopRule:
    """When a sample stops. `gtol` bounds the gradient norm (and, for the
    second-order flow, the speed); `ftol`, if positive, bounds the relative loss
    decrease of the last accepted step (a plateau; first-order flow only)."""

    tau: float = 1e4
    max_steps: int = 10_000
    gtol: float = 1e-5
    ftol: float = 0.0


def pending(active: ActiveSet) -> torch.Tensor:
    """A status vector in which no sample has stopped yet."""
    return torch.full_like(active.rows, -1)


def stop_status(active: ActiveSet, flow, rule: StopRule, nonfinite: torch.Tensor) -> torch.Tensor | None:
    """Status for each active sample that must stop now, -1 for those that go on;
    None (cheaply, the usual case) when no sample stops.

    Later rules take precedence: step budget, then tau, then convergence, then a
    non-finite evaluation (`nonfinite`; the sample keeps its last finite state).
    """
    budget = active.steps >= rule.max_steps
    reached = active.t >= rule.tau * (1 - 1e-12)
    converged = active.grad.norm(dim=1) <= rule.gtol
    velocity = flow.velocity(active.y)
    if velocity is not None:  # second-order flow: the motion must settle too
        converged &= velocity.norm(dim=1) <= rule.gtol
    elif rule.ftol > 0:  # a plateau says nothing while momentum builds up, so first order only
        decrease = active.prev_loss - active.loss
        converged |= (active.steps > 0) & (decrease.abs() <= rule.ftol * active.loss.abs())
    if not bool((budget | reached | converged | nonfinite).any()):
        return None
    status = torch.where(budget, int(Status.STEP_BUDGET), pending(active))
    status = torch.where(reached, int(Status.TAU_REACHED), status)
    status = torch.where(converged, int(Status.CONVERGED), status)
    return torch.where(nonfinite, int(Status.NON_FINITE), status)


def begin(objective, flow, x, weights, y0: torch.Tensor, trajectory=None, **extra) -> ActiveSet:
    """Evaluate the energy at the start and set up the per-sample state; `trajectory`
    (a `gfe.gradients.Trajectory`, or None) records the accepted steps."""
    loss, grad = objective.value_and_grad(flow.latent(y0), x, weights)
    n = y0.shape[0]
    time = torch.zeros(n, dtype=torch.float64, device=y0.device)
    count = torch.zeros(n, dtype=torch.long, device=y0.device)
    active = ActiveSet(
        y=y0, x=x, w=weights, t=time,
        loss=loss, prev_loss=loss, grad=grad, steps=count, nfe=count + 1,
        nonfinite=~(torch.isfinite(loss) & torch.isfinite(grad).all(1)), **extra,
    )
    active.__dict__["log"] = trajectory
    return active


def commit(active: ActiveSet, accept, y, loss, grad, h) -> None:
    """Move the accepted rows to their new state and advance their clocks."""
    if active.log is not None:
        active.log.step(active.rows[accept], h[accept], active.y[accept], y[accept])
    active.y = torch.where(accept[:, None], y, active.y)
    active.prev_loss = torch.where(accept, active.loss, active.prev_loss)
    active.loss = torch.where(accept, loss, active.loss)
    active.grad = torch.where(accept[:, None], grad, active.grad)
    active.t = torch.where(accept, active.t + h, active.t)
    active.steps = active.steps + accept.long()


def integrate(active: ActiveSet, flow, rule: StopRule, step, extra_stop=None) -> Results:
    """Drive `step(active)` until every sample has stopped, retiring samples as
    they finish. `extra_stop(active, status)` lets a solver add its own reasons
    (`status` may be None: no sample stops for the common reasons)."""
    results = Results(len(active), flow.state_dim, active.y)
    while len(active):
        status = stop_status(active, flow, rule, active.nonfinite)
        if extra_stop is not None:
            status = extra_stop(active, status)
        if status is not None:
            done = status >= 0
            if bool(done.any()):
                results.retire(active, done, status)
                if not len(active):
                    break
        step(active)
    return results


def step_sizes(active: ActiveSet, h: torch.Tensor, rule: StopRule) -> torch.Tensor:
    """Clip per-sample step sizes so no sample integrates past tau."""
    return torch.minimum(h, rule.tau - active.t)
