"""`encode`: the one entry point that turns `(decoder, x)` into latents plus statistics."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError, DataError
from .flows import make_flow
from .losses import Loss
from .objective import Objective
from .samples import validate_data
from .solvers import Status, StopRule, solver_spec


SMALL_BATCH = 256


@contextlib.contextmanager
def threads_for_rows(rows: int):
    """Run work on batches of fewer than `SMALL_BATCH` rows on one intra-op thread.

    A flow step on a small batch is a chain of tiny kernels: a second thread adds
    synchronisation and, on a busy machine, waits for a descheduled partner
    (measured: docs/benchmarks.md). Larger batches keep the configured threads.
    """
    before = torch.get_num_threads()
    if rows < SMALL_BATCH and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Encoding:
    """Latents and per-sample statistics of one `encode` call.

    `loss` is each sample's final energy (its loss plus the latent penalty, if
    any); `steps` counts accepted steps and `nfe` decoder evaluations (each a
    forward plus a vector-Jacobian product); `status` holds `Status` codes.
    """

    z: torch.Tensor
    loss: torch.Tensor
    steps: torch.Tensor
    nfe: torch.Tensor
    status: torch.Tensor
    t: torch.Tensor

    def __len__(self) -> int:
        return self.z.shape[0]

    @property
    def status_labels(self) -> list[str]:
        return [Status(int(s)).label for s in self.status]

    def status_counts(self) -> dict[str, int]:
        codes, counts = torch.unique(self.status, return_counts=True)
        return {Status(int(c)).label: int(n) for c, n in zip(codes, counts)}

    def summary(self) -> dict:
        return {
            "samples": len(self),
            "mean_loss": float(self.loss.mean()),
            "mean_steps": float(self.steps.float().mean()),
            "mean_nfe": float(self.nfe.float().mean()),
            "status": self.status_counts(),
        }

    @staticmethod
    def concat(parts: list["Encoding"]) -> "Encoding":
        return Encoding(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Encoding)))


class FlowEncoder:
    """Encoding settings bound to a decoder: checked once, then called per batch.

    `encode` is the one-shot form; the trainer keeps one of these so the hot loop
    does no validation. Options are as for `encode`.
    """

    def __init__(
        self,
        decoder: nn.Module,
        *,
        flow: str = "first",
        solver: str = "amd",
        loss: str | Loss = "bce",
        alpha: float = 1.0,
        tau: float = 1e4,
        max_steps: int = 10_000,
        gtol: float = 1e-5,
        ftol: float = 0.0,
        penalty: str | None = None,
        penalty_weight: float = 0.0,
        chunk_size: int = 4096,
        progress: bool = False,
        **solver_options,
    ):
        self.spec = solver_spec(solver)
        self.options = self.spec.make_options(solver_options)
        if not (tau > 0 and max_steps >= 0 and gtol >= 0 and ftol >= 0 and chunk_size >= 1):
            raise ConfigError(
                f"need tau > 0, chunk_size >= 1 and max_steps, gtol, ftol >= 0; "
                f"got tau={tau}, chunk_size={chunk_size}, max_steps={max_steps}, gtol={gtol}, ftol={ftol}"
            )
        self.decoder = decoder
        self.loss = Loss.of(loss, penalty, penalty_weight)
        self.flow = make_flow(flow, decoder.latent_dim, alpha)
        self.rule = StopRule(tau=tau, max_steps=max_steps, gtol=gtol, ftol=ftol)
        self.objective = Objective(decoder, self.loss)
        self.chunk_size = chunk_size
        self.progress = progress

    def solve(self, x: torch.Tensor, z0: torch.Tensor, weights: torch.Tensor | None, trajectory=None):
        """One solver call on the whole batch (the solver's `Results`)."""
        return self.spec.solve(self.objective, self.flow, x, weights, self.flow.initial_state(z0), self.rule,
                               self.options, trajectory)

    def encoding(self, res) -> Encoding:
        return Encoding(self.flow.latent(res.y), res.loss, res.steps, res.nfe, res.status, res.t)

    def __call__(self, x: torch.Tensor, z0: torch.Tensor, weights: torch.Tensor | None = None) -> Encoding:
        """Encode a validated batch `x` from latents `z0` (tensors on the decoder's device)."""
        parts = []
        starts = range(0, x.shape[0], self.chunk_size)
        bar = tqdm(total=x.shape[0], desc="encoding", unit="sample", disable=not self.progress, leave=False)
        if weights is not None and weights.dim() < x.dim():
            weights = weights.expand_as(x)  # per-sample rows, so they retire with their samples
        for lo in starts:
            sl = slice(lo, lo + self.chunk_size)
            w = None if weights is None else weights[sl]
            with threads_for_rows(len(x[sl])):
                parts.append(self.encoding(self.solve(x[sl], z0[sl], w)))
            bar.update(len(parts[-1]))
        bar.close()
        return Encoding.concat(parts)


def encode(
    decoder: nn.Module,
    x,
    *,
    flow: str = "first",
    solver: str = "amd",
    loss: str | Loss = "bce",
    z0=None,
    seed: int | None = None,
    init_scale: float = 1.0,
    weights=None,
    **options,
) -> Encoding:
    """Encode `x` (shape (N, *decoder.out_shape)) by integrating a gradient flow.

    `flow` is "first" or "nesterov"; `solver` is a name in `gfe.solvers.SOLVERS`: "amd",
    "euler", "rk4" or "dopri5", or a plain latent optimizer for comparison, "adam" or
    "lbfgs" (first-order flow only), or one registered with `gfe.register_solver`;
    `loss` is a name in `gfe.losses.LOSSES`: "bce" (data in [0, 1], decoder gives
    logits), "mse" or "poisson" (counts, decoder gives log-rates). The start is `z0 = 0` unless `z0` is given
    (an (N, d) array, or a function of the validated batch and weights such as a
    model's learned start map, `gfe.start.RidgeStart`, whose `metric`, if it has
    one, becomes AMD's `metric0` for `step="bfgs"` unless `metric0` is given) or
    `seed` is set (then `z0 ~ N(0, init_scale²)`, reproducible).
    `weights` (feature shape, or one row per sample) weight or mask features.

    Other options: alpha (flow speed), tau (final time), max_steps, gtol (gradient
    norm at which a sample has converged), ftol (relative loss decrease per step
    that counts as a plateau; 0 = off), penalty ("l2"/"l1") and penalty_weight,
    chunk_size (samples per solver call; results do not depend on it), progress
    (a progress bar over chunks), and the fields of the solver's options dataclass
    (`SOLVERS[solver].options`; e.g. AMD's h0, h_max, step, metric0; Euler's and RK4's dt;
    dopri5's rtol, atol).
    """
    metric = getattr(z0, "metric", None)  # a start map's curvature (`gfe.start.RidgeStart`)
    if metric is not None and solver == "amd" and options.get("step") == "bfgs" and "metric0" not in options:
        options["metric0"] = metric
    encoder = FlowEncoder(decoder, flow=flow, solver=solver, loss=loss, **options)
    param = next(decoder.parameters())
    x = _as_batch(decoder, x, encoder.loss.name, param)
    weights = as_weights(weights, x, param)
    start = _start(z0, seed, init_scale, x, weights, decoder.latent_dim, param)
    return encoder(x, start, weights)


def _as_batch(decoder: nn.Module, x, loss: str, like: torch.Tensor) -> torch.Tensor:
    """Validate data and bring it to the decoder's dtype and device."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    dtype = np.float64 if like.dtype == torch.float64 else np.float32
    array = validate_data(array, feature_shape=tuple(decoder.out_shape), loss=loss, dtype=dtype)
    return torch.from_numpy(array).to(device=like.device, dtype=like.dtype)


def _start(z0, seed, scale, x, weights, d, like) -> torch.Tensor:
    n = x.shape[0]
    if callable(z0):
        with torch.no_grad():
            z0 = z0(x, weights)
    if z0 is not None:
        start = torch.as_tensor(np.asarray(z0) if not isinstance(z0, torch.Tensor) else z0)
        if start.shape != (n, d):
            raise DataError(f"z0 has shape {tuple(start.shape)}; expected ({n}, {d}) (samples, latent_dim)")
        if not torch.isfinite(start).all():
            raise DataError("z0 contains NaN or infinite values")
        return start.to(device=like.device, dtype=like.dtype)
    if seed is None:
        return like.new_zeros((n, d))
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn((n, d), generator=gen, dtype=torch.float64)).to(like.device, like.dtype)


def as_weights(weights, x: torch.Tensor, like: torch.Tensor):
    """Validate feature weights (a mask) for the batch `x`; on `like`'s device and dtype."""
    if weights is None:
        return None
    w = torch.as_tensor(np.asarray(weights) if not isinstance(weights, torch.Tensor) else weights)
    w = w.to(device=like.device, dtype=like.dtype)
    if w.shape not in (x.shape[1:], x.shape):
        raise DataError(
            f"weights have shape {tuple(w.shape)}; expected the feature shape {tuple(x.shape[1:])} "
            f"or one row per sample {tuple(x.shape)}"
        )
    if not torch.isfinite(w).all() or (w < 0).any():
        raise DataError("weights must be finite and non-negative")
    return w
