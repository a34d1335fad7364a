"""Dormand-Prince 5(4) with per-sample error control.

The tableau and its embedded error weights are torchode's. The step and the loop
are ours: torchode combines the stages with matrix products (`einsum`), which
round a sample by its position in the batch, and its loop keeps evaluating
samples that have finished and stops the whole batch when one sample fails.
Here stages are combined element-wise (`runge_kutta_stages`), each sample has
its own step size, accept/reject decisions and end, and finished samples leave
the batch, so a sample's result is bit-identical in any batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..rows import rowwise
from .active import ActiveSet, StopRule, begin, commit, integrate, pending, step_sizes
from .registry import SolverSpec, Tableau, register_solver
from .runge_kutta import combine, runge_kutta_stages
from .status import Status

SAFETY, FACTOR_MIN, FACTOR_MAX = 0.9, 0.2, 10.0


def _torchode():
    """torchode, imported on use: importing it starts OpenMP's thread pool (it
    compiles with TorchScript), which makes `import gfe` slower and unsafe to fork
    after; and gfe works without it, but for this solver."""
    try:
        import torchode
    except ImportError as err:
        raise ConfigError(f"solver 'dopri5' needs torchode, which cannot be imported here ({err}); "
                          "install it (pip install torchode) or choose another solver") from err
    return torchode


def _rms(v: torch.Tensor) -> torch.Tensor:
    return v.square().mean(1).sqrt()


@dataclass(frozen=True)
class Dopri5Options:
    """Local error per sample below `atol + rtol·|y|`; `dt0` is the first step (else
    Hairer's estimate); a sample stalls after `max_rejects` rejections in a row."""

    rtol: float = 1e-4
    atol: float = 1e-6
    dt0: float | None = None
    max_rejects: int = 30

    def __post_init__(self):
        if not (self.rtol > 0 and self.atol >= 0 and (self.dt0 is None or self.dt0 > 0) and self.max_rejects >= 0):
            raise ConfigError(f"dopri5 needs rtol > 0, atol >= 0, dt0 > 0 (or None) and max_rejects >= 0; got {self}")


def solve_dopri5(objective, flow, x, weights, y0, rule: StopRule, options: Dopri5Options = Dopri5Options(),
                 trajectory=None):
    """Integrate to tau with local error per sample below `atol + rtol·|y|`."""
    rtol, atol, dt0, max_rejects = options.rtol, options.atol, options.dt0, options.max_rejects
    tableau, error_weights = dopri5_tableau(), _error_weights()
    active = begin(objective, flow, x, weights, y0, trajectory)
    last_eval = {}

    def rhs(t, y):
        loss, grad = objective.value_and_grad(flow.latent(y), active.x, active.w)
        last_eval.update(loss=loss, grad=grad)
        return flow.field(t, y, grad)

    f0 = flow.field(active.t, active.y, active.grad)
    active.f = f0
    active.rejects = torch.zeros_like(active.steps)
    active.h = _initial_step(rhs, active, f0, rtol, atol) if dt0 is None else torch.full_like(active.t, dt0)
    active.nfe = active.nfe + (1 if dt0 is None else 0)

    def step(active: ActiveSet) -> None:
        h = step_sizes(active, active.h, rule)
        y_new, stages = runge_kutta_stages(rhs, active.t, active.y, h, tableau, active.f)
        stages.append(rhs(active.t + h, y_new))  # the last stage, at y_new: the next step's first (FSAL)
        active.nfe = active.nfe + len(stages) - 1
        loss, grad = last_eval["loss"], last_eval["grad"]
        scale = atol + rtol * torch.maximum(active.y.abs(), y_new.abs())
        error = _rms(h.to(y_new.dtype)[:, None] * combine(error_weights, stages) / scale)
        finite = torch.isfinite(error) & torch.isfinite(loss) & torch.isfinite(grad).all(1)
        accept = finite & (error <= 1.0)
        factor = (SAFETY * _power(error.clamp_min(1e-10), -0.2)).clamp(FACTOR_MIN, FACTOR_MAX)
        factor = torch.where(finite, factor, FACTOR_MIN).to(h.dtype)
        commit(active, accept, y_new, loss, grad, h)
        active.f = torch.where(accept[:, None], stages[-1], active.f)
        active.h = h * torch.where(accept, factor, factor.clamp(max=1.0))
        active.rejects = torch.where(accept, 0, active.rejects + 1)
        active.nonfinite = ~finite & (active.rejects > max_rejects)

    def give_up(active: ActiveSet, status: torch.Tensor | None) -> torch.Tensor | None:
        failed = active.rejects > max_rejects
        if not bool(failed.any()):
            return status
        status = pending(active) if status is None else status
        return torch.where((status < 0) & failed, int(Status.STALLED), status)

    return integrate(active, flow, rule, step, give_up)


def _initial_step(rhs, active: ActiveSet, f0, rtol, atol) -> torch.Tensor:
    """Hairer, Nørsett & Wanner's starting step, per sample (one extra evaluation)."""
    y0 = active.y
    scale = atol + rtol * y0.abs()
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1.clamp_min(1e-30))
    h0 = h0.to(torch.float64)
    f1 = rhs(active.t + h0, y0 + h0.to(y0.dtype)[:, None] * f0)
    d2 = _rms((f1 - f0) / scale) / h0.to(y0.dtype)
    dmax = torch.maximum(d1, d2).to(torch.float64)
    h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), _power(0.01 / dmax.clamp_min(1e-30), 0.2))
    return torch.minimum(100 * h0, h1)


def _power(v: torch.Tensor, exponent: float) -> torch.Tensor:
    """`v ** exponent` per sample, in whole blocks of rows: a vectorised power and
    its scalar tail round differently (`gfe.rows`)."""
    return rowwise(lambda w: w**exponent, v)


@functools.cache
def _error_weights() -> tuple[float, ...]:
    """torchode's weights of the embedded error estimate, one per stage (7)."""
    return tuple(map(float, _torchode().Dopri5().tableau.b_err.tolist()))


@functools.cache
def dopri5_tableau() -> Tableau:
    """torchode's Dormand-Prince tableau without its last stage (weight 0, used only
    for the error estimate), so a replayed step is the step the solver took."""
    t = _torchode().Dopri5().tableau
    a, b, c = t.a[:6, :6].tolist(), t.b[:6].tolist(), t.c[:6].tolist()
    return tuple(tuple(map(float, row)) for row in a), tuple(map(float, b)), tuple(map(float, c))


register_solver(SolverSpec("dopri5", solve_dopri5, Dopri5Options, tableau=dopri5_tableau,
                           summary="Dormand-Prince 5(4) with per-sample error control (rtol, atol)"))
