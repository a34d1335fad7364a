"""Latent-optimizer baselines: what people use instead of an ODE, as `gfe.encode` solvers.

* ``adam``: Adam on the latent, the auto-decoder recipe (lr 5e-3, start 0; pass
  `max_steps=800` for its iteration budget). Every iterate is taken; the clock `t`
  advances by `lr` per iteration.
* ``lbfgs``: L-BFGS per sample (history of `memory` pairs, two-loop recursion) with a
  backtracking Armijo line search that tries one step length per iteration, like AMD.
  A sample whose line search fails `max_shrinks` times drops its history and restarts
  from steepest descent; it stalls when even that fails. The clock `t` advances by the
  accepted step length.

Both keep every quantity per sample (moments, histories, step lengths), so a sample's
latent does not depend on its batch-mates, and both report steps, evaluations and
status like the flow solvers. They optimize the latent only: the first-order "flow"
is required (it fixes the state to be the latent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..rows import rowwise
from .active import ActiveSet, StopRule, begin, commit, integrate, pending
from .registry import SolverSpec, register_solver
from .status import Status


@dataclass(frozen=True)
class AdamOptions:
    lr: float = 5e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass(frozen=True)
class LBFGSOptions:
    memory: int = 10
    h0: float = 1.0
    shrink: float = 0.5
    max_shrinks: int = 20
    sigma: float = 1e-4


def _latent_only(flow, solver: str) -> None:
    if flow.velocity(torch.zeros(1, flow.state_dim)) is not None:
        raise ConfigError(f"solver {solver!r} optimizes the latent directly and has no momentum state; "
                          f"use flow='first' (got flow={flow.name!r})")


def _evaluate(objective, active: ActiveSet, y: torch.Tensor):
    """Loss and gradient at `y`, one evaluation counted, and whether both are finite."""
    loss, grad = objective.value_and_grad(y, active.x, active.w)
    active.nfe = active.nfe + 1
    return loss, grad, torch.isfinite(loss) & torch.isfinite(grad).all(1)


def solve_adam(objective, flow, x, weights, y0, rule: StopRule, options: AdamOptions = AdamOptions(),
               trajectory=None):
    _latent_only(flow, "adam")
    o = options
    active = begin(objective, flow, x, weights, y0, trajectory, m=torch.zeros_like(y0), v=torch.zeros_like(y0))

    def step(active: ActiveSet) -> None:
        k = (active.steps + 1).to(active.y.dtype)[:, None]
        m = o.beta1 * active.m + (1 - o.beta1) * active.grad
        v = o.beta2 * active.v + (1 - o.beta2) * active.grad.square()
        # powers in whole blocks of rows: a vectorised power and its scalar tail round differently
        bias1, bias2 = rowwise(lambda k: (1 - o.beta1**k, 1 - o.beta2**k), k)
        update = (m / bias1) / ((v / bias2).sqrt() + o.eps)
        y = active.y - o.lr * update
        loss, grad, finite = _evaluate(objective, active, y)
        commit(active, finite, y, loss, grad, torch.full_like(active.t, o.lr))
        active.m = torch.where(finite[:, None], m, active.m)
        active.v = torch.where(finite[:, None], v, active.v)
        active.nonfinite = ~finite

    return integrate(active, flow, rule, step)


def _two_loop(grad, S, Y, rho) -> torch.Tensor:
    """The L-BFGS direction `-H_k ∇E` per sample; empty history slots have `rho = 0`."""
    q = grad.clone()
    alphas = []
    for i in reversed(range(S.shape[1])):
        alpha = rho[:, i] * (S[:, i] * q).sum(1)
        q = q - alpha[:, None] * Y[:, i]
        alphas.append(alpha)
    yy = Y[:, -1].square().sum(1)
    gamma = torch.where(rho[:, -1] > 0, 1.0 / (rho[:, -1] * yy).clamp_min(1e-300), 1.0)
    r = gamma[:, None] * q
    for i, alpha in enumerate(reversed(alphas)):
        beta = rho[:, i] * (Y[:, i] * r).sum(1)
        r = r + S[:, i] * (alpha - beta)[:, None]
    return -r


def solve_lbfgs(objective, flow, x, weights, y0, rule: StopRule, options: LBFGSOptions = LBFGSOptions(),
                trajectory=None):
    _latent_only(flow, "lbfgs")
    o = options
    n, d = y0.shape
    active = begin(objective, flow, x, weights, y0, trajectory, S=y0.new_zeros((n, o.memory, d)),
                   Y=y0.new_zeros((n, o.memory, d)), rho=y0.new_zeros((n, o.memory)))
    active.direction = -active.grad
    active.lam = torch.full_like(active.t, o.h0)
    active.shrinks = torch.zeros_like(active.steps)

    def push(history: torch.Tensor, new: torch.Tensor, store: torch.Tensor) -> torch.Tensor:
        shifted = torch.cat([history[:, 1:], new[:, None]], dim=1)
        return torch.where(store.view(-1, *[1] * (history.dim() - 1)), shifted, history)

    def step(active: ActiveSet) -> None:
        lam = active.lam.to(active.y.dtype)
        y = active.y + lam[:, None] * active.direction
        loss, grad, finite = _evaluate(objective, active, y)
        slope = (active.grad * active.direction).sum(1)
        accept = finite & (loss < active.loss) & (loss <= active.loss + o.sigma * lam * slope)
        s, g_change = y - active.y, grad - active.grad
        sy = (s * g_change).sum(1)
        store = accept & (sy > 1e-10 * s.norm(dim=1) * g_change.norm(dim=1))
        active.S, active.Y = push(active.S, s, store), push(active.Y, g_change, store)
        active.rho = push(active.rho, 1.0 / torch.where(store, sy, 1.0), store)
        commit(active, accept, y, loss, grad, active.lam)
        active.shrinks = torch.where(accept, 0, active.shrinks + 1)
        stuck = (active.shrinks > o.max_shrinks) & (active.rho > 0).any(1)
        active.rho = torch.where(stuck[:, None], 0.0, active.rho)  # forget the history, restart steepest
        active.shrinks = torch.where(stuck, 0, active.shrinks)
        renew = accept | stuck
        active.direction = torch.where(renew[:, None], _two_loop(active.grad, active.S, active.Y, active.rho),
                                       active.direction)
        fresh = torch.where((active.rho > 0).any(1), 1.0, o.h0)
        active.lam = torch.where(renew, fresh, active.lam * o.shrink)

    def stalled(active: ActiveSet, status: torch.Tensor | None) -> torch.Tensor | None:
        """Even steepest descent found no lower loss."""
        failed = active.shrinks > o.max_shrinks
        if not bool(failed.any()):
            return status
        status = pending(active) if status is None else status
        return torch.where((status < 0) & failed, int(Status.STALLED), status)

    return integrate(active, flow, rule, step, stalled)


register_solver(SolverSpec("adam", solve_adam, AdamOptions, summary="Adam on the latent (the auto-decoder recipe)"))
register_solver(SolverSpec("lbfgs", solve_lbfgs, LBFGSOptions,
                           summary="per-sample L-BFGS with a backtracking Armijo line search"))
