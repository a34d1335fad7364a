"""Learned starting latents: a ridge regression from a sample to its latent.

From `z0 = 0` the flow spends most of its decoder evaluations travelling from
the origin into the sample's basin. A linear map fitted to the latents the flow
found for earlier samples starts it close to its end, so the flow needs fewer
decoder evaluations for the same loss (measured: docs/benchmarks.md).
The map reads the sample alone, so encodings stay deterministic and do not
depend on batch-mates; the flow, not the map, decides where a sample ends.

`RidgeStart` is the fitted map, saved with a model. `RidgeFit` is the trainer's
running fit: exponentially forgetting least-squares statistics (latents found
by an early decoder matter less than recent ones), re-solved every few batches
on a second thread while training goes on.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .models import _Configurable, _int_tuple, _positive_int, build_registered

START_MODES = ("learned", "zero")  # where flows begin: the fitted map, or z0 = 0
MAX_FEATURES = 4096  # the (features + 1)² statistics must stay small; above this, start at 0
ROW_ELEMENTS = 1 << 22  # rows × features × latents per step of `RidgeStart.forward` (16 MiB in float32)


def masked_features(x: Tensor, weights: Tensor | None) -> Tensor:
    """Rows of `x` flattened, with masked-out features (weight 0) zeroed, so a
    masked entry cannot move a sample's start and hence its encoding."""
    flat = x.flatten(1)
    if weights is not None:  # the feature shape, or one row per sample
        flat = flat * (weights.reshape(-1, flat.shape[1]) != 0)
    return flat


class RidgeStart(_Configurable):
    """`z0 = [x, 1] @ weight`: the affine map from features to a starting latent.

    With `curvature=True` it also holds `metric`, the inverse of the energy's
    mean Hessian at converged latents (`Trainer.refine_start`); `gfe.encode`
    starts the BFGS rule's per-sample metric there instead of at a scaled
    identity, so the first steps are nearly Newton steps."""

    kind = "ridge"

    def __init__(self, feature_shape, latent_dim: int, curvature: bool = False):
        super().__init__()
        self.feature_shape = _int_tuple("feature_shape", feature_shape)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        if not isinstance(curvature, bool):
            raise ConfigError(f"curvature must be true or false; got {curvature!r}")
        self.register_buffer("weight", torch.zeros(math.prod(self.feature_shape) + 1, self.latent_dim))
        self.register_buffer("metric", torch.eye(self.latent_dim) if curvature else None)
        self._remember(feature_shape=list(self.feature_shape), latent_dim=self.latent_dim, curvature=curvature)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        # Products summed per row, not a matrix product: GEMM kernels round a row
        # differently depending on its position in the batch, and a sample's start
        # must not depend on its batch-mates.
        flat = masked_features(x, weights).to(self.weight.dtype)
        rows = max(1, ROW_ELEMENTS // self.weight.numel())
        starts = [(part[:, :, None] * self.weight[:-1]).sum(1) for part in flat.split(rows)]
        return (torch.cat(starts) + self.weight[-1]).to(x.dtype) if starts else x.new_zeros((0, self.latent_dim))


def metric_from_hessian(hessian: Tensor, floor: float = 1e-3) -> Tensor:
    """A positive definite inverse of a (mean) Hessian: eigenvalues below `floor`
    times the largest are raised to it, so flat or negatively curved directions
    get long but finite steps (float32)."""
    values, vectors = torch.linalg.eigh(hessian.double())
    top = float(values.max())
    if not math.isfinite(top) or top <= 0:
        raise ConfigError("the mean Hessian has no positive curvature; cannot form a metric from it")
    values = values.clamp(min=floor * top)
    return ((vectors / values) @ vectors.T).float()


STARTS: dict[str, type[nn.Module]] = {RidgeStart.kind: RidgeStart}


def build_start(config: dict) -> nn.Module:
    """Rebuild a start map (zero weights) from its `config()`."""
    return build_registered(STARTS, config, "start")


def can_learn_start(feature_shape) -> bool:
    return math.prod(feature_shape) <= MAX_FEATURES


def default_refit_every(feature_shape) -> int:
    """Samples between re-solves of a running fit: a solve costs ~features³ (MNIST's:
    docs/benchmarks.md), so few features are refitted often."""
    return max(25, round(25 * ((math.prod(feature_shape) + 1) / 1024) ** 2))


class RidgeFit:
    """Running ridge fit of latents on features, in float64.

    `update` adds a batch's `rows` to the statistics (older samples decay by `1 - 1/memory`
    per sample seen); every `refit_every` samples the map in use is re-solved,
    with a penalty of `penalty` times the mean diagonal of the statistics, so it
    does not depend on the data's scale. The refit (folding the new batches into
    the statistics, then the solve, timed in docs/benchmarks.md) runs on a worker
    thread, i.e. on a core the batch-5 flows leave idle; `start` waits for it, so
    the map in use is the same as if it were computed in place. `state_dict` holds everything a
    resumed run needs to continue exactly.
    """

    def __init__(self, feature_shape, latent_dim: int, *, memory: float = 2000.0, penalty: float = 0.01,
                 refit_every: int | None = None, device=None):
        if not can_learn_start(feature_shape):
            raise ConfigError(f"a learned start needs at most {MAX_FEATURES} features; got {math.prod(feature_shape)}")
        if not (memory >= 1 and penalty > 0 and (refit_every is None or refit_every >= 1)):
            raise ConfigError(f"RidgeFit needs memory >= 1, penalty > 0 and refit_every >= 1; got "
                              f"memory={memory}, penalty={penalty}, refit_every={refit_every}")
        self._start = RidgeStart(feature_shape, latent_dim).to(device)  # on the decoder's device
        size = math.prod(self._start.feature_shape) + 1
        if refit_every is None:
            refit_every = default_refit_every(feature_shape)
        self.gram = torch.zeros(size, size, dtype=torch.float64, device=device)
        self.cross = torch.zeros(size, latent_dim, dtype=torch.float64, device=device)
        self.since_refit = 0
        self.memory, self.penalty, self.refit_every = memory, penalty, refit_every
        self._pending: list[tuple[Tensor, int]] = []  # batches' rows and sample counts, not yet folded in
        self._worker: ThreadPoolExecutor | None = None  # started at the first refit
        self._solving: Future | None = None

    @property
    def start(self) -> RidgeStart:
        """The map in use, once any re-solve in progress has finished."""
        self._install_solution()
        return self._start

    def _install_solution(self) -> None:
        if self._solving is not None:
            self._start.weight.copy_(self._solving.result())
            self._solving = None

    def rows(self, x: Tensor, z: Tensor, weights: Tensor | None = None) -> Tensor:
        """A batch as float64 rows `[features, 1, latent]`; a sample whose latent is
        not finite becomes a row of zeros, which adds nothing to the fit."""
        flat = masked_features(x, weights).to(torch.float64)
        rows = torch.cat([flat, flat.new_ones(len(flat), 1), z.detach().to(torch.float64)], dim=1)
        return torch.where(torch.isfinite(rows).all(1, keepdim=True), rows, 0.0)

    def update(self, rows: Tensor) -> None:
        """Add a batch's `rows` (all replicas' rows under DDP, in batch order)."""
        n_samples = round(float(rows[:, len(self.gram) - 1].sum()))  # the intercept column counts finite rows
        if n_samples == 0:
            return
        self._pending.append((rows, n_samples))
        self.since_refit += n_samples
        if self.since_refit >= self.refit_every:
            self._install_solution()  # the previous refit, before queueing the next
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gfe-ridge-fit")
            pending, self._pending = self._pending, []
            self._solving = self._worker.submit(self._refit, pending)
            self.since_refit = 0

    def _refit(self, pending: list[tuple[Tensor, int]]) -> Tensor:
        """Fold `pending` into the statistics and solve them (on the worker thread,
        which alone touches the statistics until `_install_solution` has waited for it)."""
        self._fold(pending)
        return self._solve(self.gram.clone(), self.cross)

    def fold(self) -> None:
        """Bring the statistics up to date: wait for a refit in progress, then fold
        in the batches added since."""
        self._install_solution()
        pending, self._pending = self._pending, []
        self._fold(pending)

    def _fold(self, pending: list[tuple[Tensor, int]]) -> None:
        """Fold batches into the statistics at once: batch `b` weighs
        `(1 - 1/memory)^(samples after b)`, as if each batch had decayed the
        statistics in turn, but the (features + 1)² matrix is swept once per
        refit instead of once per batch."""
        if not pending:
            return
        keep = 1.0 - 1.0 / self.memory
        counts = torch.tensor([n for _, n in pending], dtype=torch.float64)
        later = counts.flip(0).cumsum(0).flip(0) - counts  # samples added after each batch
        rows = torch.cat([r for r, _ in pending])
        decay = torch.repeat_interleave(keep ** later, torch.tensor([len(r) for r, _ in pending]))
        size = len(self.gram)
        design, weighted = rows[:, :size], rows[:, :size] * decay[:, None].to(rows.device)
        total = keep ** float(counts.sum())
        self.gram.addmm_(weighted.T, design, beta=total)
        self.cross.addmm_(weighted.T, rows[:, size:], beta=total)

    def solution(self) -> Tensor:
        """The ridge map of the current statistics (float32, as used)."""
        self.fold()
        return self._solve(self.gram.clone(), self.cross)

    def _solve(self, system: Tensor, cross: Tensor) -> Tensor:
        """Solve `(gram + penalty) W = cross`, given a copy of the statistics `gram` to overwrite."""
        system.diagonal().add_(self.penalty * system.diagonal().mean().clamp(min=1e-12))
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) != 0:  # not positive definite: only possible with non-finite statistics
            return torch.zeros_like(self._start.weight)
        return torch.cholesky_solve(cross, factor).to(self._start.weight.dtype)

    def fitted(self) -> RidgeStart:
        """A start map solved from all statistics so far, e.g. for a saved model."""
        start = RidgeStart(self._start.feature_shape, self._start.latent_dim).to(self.gram.device)
        start.weight.copy_(self.solution())
        return start

    def state_dict(self) -> dict:
        self.fold()
        return {"gram": self.gram, "cross": self.cross, "weight": self.start.weight,
                "since_refit": self.since_refit}

    def load_state_dict(self, state: dict) -> None:
        for name in ("gram", "cross"):
            if getattr(self, name).shape != state[name].shape:
                raise ConfigError(f"learned-start statistics {name} have shape {tuple(state[name].shape)}, "
                                  f"expected {tuple(getattr(self, name).shape)}")
        self._install_solution()  # no refit may still write to the statistics being replaced
        self._pending = []
        self.gram = state["gram"].to(self.gram.device, torch.float64).clone()
        self.cross = state["cross"].to(self.cross.device, torch.float64).clone()
        self.start.weight.copy_(state["weight"])
        self.since_refit = int(state["since_refit"])
