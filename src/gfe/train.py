"""Training: GFE decoders on flow latents, and the autoencoder baseline, in one loop.

GFE uses the approximate gradient (DESIGN §2.3) by default: each batch is encoded by
the flow, the latents are held fixed, and the decoder takes one optimizer step on the
reconstruction loss. `gradient="adjoint"` or `"unrolled"` differentiate through the
flow instead (`gfe.gradients`), with the flow's energy as the loss. The autoencoder takes its latents from its encoder instead;
everything else (data order, batches, optimizer, loss, checkpoints) is shared, so
comparisons are fair.

After every epoch a checkpoint directory is written completely and only then
named in `latest.json` (an atomic replace), so a killed run resumes from its last
complete epoch and reproduces an uninterrupted run: the data order of epoch `e`
is drawn from `(seed, e)` and encodings are deterministic. `latest.json` records
the SHA-256 of every file of the checkpoint, verified before resuming, so a
corrupted or edited checkpoint is refused rather than silently continued.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import safetensors.torch
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import SampleRows, validate_data
from .distributed import Replicas
from .encode import FlowEncoder, as_weights, threads_for_rows
from .errors import ConfigError, GFEError, ModelFileError, TrainingError
from .gradients import check_gradient, flow_gradients
from .losses import Loss
from .models import build_encoder, default_decoder
from .persist import atomic_path, atomic_write_text, file_sha256, load_model, save_model
from .start import MAX_FEATURES, START_MODES, RidgeFit, RidgeStart, can_learn_start, metric_from_hessian

METHODS = {
    # name: (flow, solver) for GFE, None for the autoencoder
    "gfe-amd": ("first", "amd"),
    "gfe-nesterov": ("nesterov", "amd"),
    "gfe-euler": ("first", "euler"),
    "gfe-rk4": ("first", "rk4"),
    "gfe-dopri5": ("first", "dopri5"),
    "ae": None,
}
# Encoding options used unless the user's say otherwise: (training, evaluation).
# Training needs only nearby latents (the approximate gradient), so it encodes
# loosely with a bounded step count; evaluation and stored models encode to
# convergence. For AMD on the first-order flow, Barzilai-Borwein step sizes speed
# up training and the per-sample BFGS metric reaches the flow's end point in far
# fewer evaluations than the reference's steps, at lower loss; with the learned
# start (`TrainConfig.start`) 15 steps per batch suffice (measured:
# docs/benchmarks.md).
LOOSE = {"gtol": 1e-3, "max_steps": 50}
METHOD_DEFAULTS = {
    "gfe-amd": ({**LOOSE, "max_steps": 15, "step": "spectral", "h_max": 100.0}, {"step": "bfgs"}),
    "gfe-nesterov": (LOOSE, {}),
    "gfe-euler": ({**LOOSE, "dt": 10.0}, {"dt": 10.0}),
    "gfe-rk4": ({**LOOSE, "dt": 10.0}, {"dt": 10.0}),
    "gfe-dopri5": (LOOSE, {}),
    "ae": ({}, {}),
}
OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
LATEST = "latest.json"
CHECKPOINT_FORMAT = "gfe-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILES = ("config.json", "weights.safetensors", "optimizer.safetensors", "trainer.json")
ON_NONFINITE = ("stop", "skip")
REFINE_CHUNK = 1024  # samples per flow call in `Trainer.refine_start`
REFINE_SAMPLES = 2000  # training samples `Trainer.refine_start` encodes by default


@dataclass
class TrainConfig:
    """Everything that determines a training run. `encode_options` go to the flow
    (e.g. {"gtol": 1e-3, "max_steps": 200}) during training; `eval_options` are
    used for validation and stored with the model for later encoding. Both
    override the method's defaults (`METHOD_DEFAULTS`). `on_nonfinite` says what a
    batch whose loss is NaN or infinite does: "stop" the run with a
    `TrainingError`, or "skip" its update (counted in `EpochRecord.skipped_batches`).
    `start` is where training flows begin: "learned" (a ridge map from samples to
    the latents found so far, `gfe.start`; saved with the model; GFE methods on at
    most `gfe.start.MAX_FEATURES` features, else 0) or "zero". Validation always
    starts at 0, as the reference protocol does. `encode_ahead` batches are
    encoded in one flow call against the decoder as it is before the first of
    them, then each updates the decoder in turn: a batch's latents are up to
    `encode_ahead - 1` updates stale, but each decoder evaluation serves several
    batches, which on a CPU costs little more than one (approximate gradient only;
    docs/benchmarks.md measures the trade). `latent_penalty` (β) adds an L2 prior
    β·|z|² to the latents' energy: GFE flows minimise it in training and in the
    saved encoding settings (unless options name another penalty), the
    autoencoder adds it to its training loss. `latent_noise` (σ) trains the
    decoder on `z + σ·ε` instead of `z` (ε standard normal, seeded by seed, epoch
    and batch, so resume and DDP replay it): a decoder smooth at that scale, whose
    latents a linear model reads better (docs/spectra.md). Together they are the
    deterministic analogue of a VAE's prior and posterior noise."""

    method: str = "gfe-amd"
    latent_dim: int = 20
    epochs: int = 1
    batch_size: int = 5
    optimizer: str = "rmsprop"
    lr: float = 5e-4
    loss: str = "bce"
    seed: int = 0
    encode_options: dict = field(default_factory=dict)
    eval_options: dict = field(default_factory=dict)
    gradient: str = "approx"
    on_nonfinite: str = "stop"
    start: str = "learned"
    encode_ahead: int = 1
    latent_penalty: float = 0.0
    latent_noise: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        for name in ("latent_dim", "epochs", "batch_size", "encode_ahead"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        for name in ("latent_penalty", "latent_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
                raise ConfigError(f"{name} must be a finite number >= 0; got {value!r}")
        if self.latent_noise > 0 and self.gradient != "approx":
            raise ConfigError(f"latent_noise needs the approximate gradient: gradient={self.gradient!r} "
                              "differentiates the decoder at the converged latents themselves")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ConfigError(f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}; got {self.on_nonfinite!r}")
        if self.start not in START_MODES:
            raise ConfigError(f"start must be one of {', '.join(START_MODES)}; got {self.start!r}")
        Loss(self.loss)  # validates the name
        if self.gradient != "approx" and not self.is_gfe:
            raise ConfigError(f"gradient={self.gradient!r} needs a GFE method; the autoencoder has no flow")
        if self.encode_ahead > 1 and not (self.is_gfe and self.gradient == "approx"):
            raise ConfigError("encode_ahead > 1 needs a GFE method with the approximate gradient: exact gradients "
                              "and the autoencoder's encoder need latents of the decoder being updated")
        options = self.flow_options(training=True)
        check_gradient(self.gradient, options["solver"], options.get("step", "flow"))

    @property
    def is_gfe(self) -> bool:
        return METHODS[self.method] is not None

    def flow_options(self, *, training: bool) -> dict:
        """Flow, solver, loss and the method's default options for `FlowEncoder`,
        overridden by `encode_options` (training) or `eval_options`."""
        flow, solver = METHODS[self.method] or ("first", "amd")
        defaults = METHOD_DEFAULTS[self.method][0 if training else 1]
        options = self.encode_options if training else self.eval_options
        prior = {"penalty": "l2", "penalty_weight": float(self.latent_penalty)} if self.latent_penalty else {}
        return {"flow": flow, "solver": solver, "loss": self.loss, **defaults, **prior, **options}


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    seconds: float
    samples: int
    mean_steps: float
    mean_nfe: float
    skipped_batches: int = 0


class Trainer:
    """Trains `decoder` (a default MLP if None) on samples shaped like its output.

    `checkpoint_dir`, if given, receives a checkpoint after each epoch;
    `Trainer.resume(checkpoint_dir, x_train, ...)` continues such a run.
    `callbacks` are called as `callback(trainer, record)` after each epoch.
    `replicas` (from `gfe.distributed.process_group`) splits every batch across
    the processes of a `torchrun` launch; the result matches one process.
    `weights` (the feature shape; zeros mask features out, e.g. detector gaps)
    weigh the loss in the flow, in the decoder's updates and in `evaluate`.
    `fit` and `evaluate` take arrays, or `gfe.data.SampleRows` for samples read
    from disk a batch at a time.
    """

    def __init__(
        self,
        config: TrainConfig,
        feature_shape: tuple[int, ...],
        *,
        decoder: nn.Module | None = None,
        checkpoint_dir=None,
        callbacks: tuple[Callable, ...] = (),
        progress: bool = True,
        replicas: Replicas = Replicas(),
        weights=None,
    ):
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded initial weights; the caller's RNG is left alone
            torch.manual_seed(config.seed)
            self.decoder = decoder if decoder is not None else default_decoder(tuple(feature_shape), config.latent_dim)
            if tuple(self.decoder.out_shape) != tuple(feature_shape):
                raise ConfigError(
                    f"decoder output shape {self.decoder.out_shape} differs from the data's {tuple(feature_shape)}")
            self.encoder = None if config.is_gfe else build_encoder(self.decoder)
        if self.encoder is not None and replicas.world_size > 1:
            raise ConfigError("the autoencoder baseline trains in one process; distributed training "
                              "supports the gfe-* methods")
        if config.on_nonfinite == "skip" and replicas.world_size > 1:
            raise ConfigError("on_nonfinite='skip' trains in one process: DDP expects every forward to be "
                              "followed by a backward; use 'stop' under torchrun")
        if config.gradient != "approx" and replicas.world_size > 1:
            raise ConfigError(f"gradient={config.gradient!r} trains in one process; distributed training "
                              "uses the approximate gradient")
        self.replicas = replicas
        self.update_decoder = replicas.wrap(self.decoder)  # the flow must use the plain decoder
        params = list(self.decoder.parameters()) + (list(self.encoder.parameters()) if self.encoder else [])
        self.optimizer = OPTIMIZERS[config.optimizer](params, lr=config.lr)
        # The training update's loss; the autoencoder's carries the latent prior, which a flow's latents
        # already minimise (flow_options). `evaluate` reports the reconstruction loss alone.
        prior = ("l2", config.latent_penalty) if self.encoder is not None and config.latent_penalty else (None, 0.0)
        self.loss = Loss(config.loss, *prior)
        self.reconstruction_loss = Loss(config.loss)
        self.flow_encoder = FlowEncoder(self.decoder, **config.flow_options(training=True))
        self.eval_encoder = FlowEncoder(self.decoder, **config.flow_options(training=False))
        learn_start = config.is_gfe and config.start == "learned" and can_learn_start(tuple(feature_shape))
        self.start_fit = RidgeFit(tuple(feature_shape), config.latent_dim) if learn_start else None
        self.refined_start: RidgeStart | None = None  # set by `refine_start`
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.callbacks = callbacks
        self.progress = progress
        self.history: list[EpochRecord] = []
        # (epoch, samples encoded, flow steps, decoder evaluations) of each batch
        # this process trained on since it started (not checkpointed): how encoding
        # cost evolves as the decoder learns
        self.batch_log: list[tuple[int, int, int, int]] = []
        self.weights = None
        if weights is not None:
            param = next(self.decoder.parameters())
            self.weights = as_weights(weights, param.new_empty((0, *self.decoder.out_shape)), param)

    # ----------------------------------------------------------------- latents
    def latents(self, x: torch.Tensor, *, training: bool):
        """Latents of a batch and each sample's flow steps and decoder evaluations."""
        if self.encoder is not None or len(x) == 0:  # (a replica's share of a batch may be empty)
            none = torch.zeros(len(x), dtype=torch.long)
            z = self.encoder(x) if self.encoder is not None else x.new_zeros((0, self.decoder.latent_dim))
            return z, none, none
        flow = self.flow_encoder if training else self.eval_encoder
        enc = flow(x, self._start(x, training=training), self.weights)
        return enc.z, enc.steps, enc.nfe

    def _start(self, x: torch.Tensor, *, training: bool) -> torch.Tensor:
        if training and self.start_fit is not None:
            return self.start_fit.start(x, self.weights)
        return x.new_zeros((x.shape[0], self.decoder.latent_dim))

    def start_map(self) -> RidgeStart | None:
        """The start map a saved model carries: the one `refine_start` fitted, else
        the training fit solved from all its statistics; None when training starts at 0."""
        if self.refined_start is not None:
            return self.refined_start
        return None if self.start_fit is None else self.start_fit.fitted()

    def check_refine_start(self) -> None:
        """Raise `ConfigError` unless `refine_start` can run, e.g. before training."""
        if self.start_fit is None:
            raise ConfigError("refine_start needs a learned start: TrainConfig(start='learned') with a GFE method "
                              f"on at most {MAX_FEATURES:,} features")
        if self.replicas.world_size > 1:
            raise ConfigError("refine_start runs in one process; refine a saved model's start after torchrun")

    def refine_start(self, x, max_samples: int = REFINE_SAMPLES) -> RidgeStart:
        """Refit the saved start map on the latents the finished decoder gives the
        last `max_samples` of `x` (its training samples), encoded to convergence
        with the evaluation settings from the training fit's map, and give it the
        inverse of the energy's mean Hessian there as the BFGS rule's first metric.

        Training flows stop early, so the training fit predicts loose latents of
        earlier decoders, and a fresh BFGS metric knows nothing of the curvature;
        started nearer their end and with that curvature, later encodings need far
        fewer evaluations (measured: docs/benchmarks.md), for the cost of encoding
        these samples once. Training itself is unchanged."""
        self.check_refine_start()
        x = self._tensor(x)
        rows = range(max(0, len(x) - max_samples), len(x))
        fit = RidgeFit(tuple(self.decoder.out_shape), self.decoder.latent_dim, memory=math.inf,
                       penalty=self.start_fit.penalty, refit_every=len(x) + 1)
        first = self.start_fit.fitted()
        hessian, counted = 0.0, 0
        bar = tqdm(total=len(rows), desc="refining the start map", unit="sample", disable=not self.progress,
                   leave=False)
        for lo in range(rows.start, rows.stop, REFINE_CHUNK):
            xb = self._batch(x, slice(lo, min(lo + REFINE_CHUNK, rows.stop)))
            z = self.eval_encoder(xb, first(xb, self.weights), self.weights).z
            fit.update(fit.rows(xb, z, self.weights))
            finite = torch.isfinite(z).all(1)  # (weights have the feature shape: they fit any rows)
            hessian = hessian + self.eval_encoder.objective.mean_hessian(z[finite], xb[finite], self.weights) * int(
                finite.sum())
            counted += int(finite.sum())
            bar.update(len(xb))
        bar.close()
        refined = RidgeStart(self.decoder.out_shape, self.decoder.latent_dim, curvature=True)
        refined.weight.copy_(fit.solution())
        refined.metric.copy_(metric_from_hessian(hessian / max(counted, 1)))
        self.refined_start = refined
        return refined

    def _latent_noise(self, epoch: int, batch: int, batch_size: int, z: torch.Tensor) -> torch.Tensor | float:
        """`latent_noise` times standard normal noise for this replica's rows of a
        batch, drawn for the whole batch from a generator seeded by (seed, epoch,
        batch): the same whatever the replica split, and replayed on resume."""
        if not self.config.latent_noise:
            return 0.0
        seed = int(np.random.SeedSequence([self.config.seed, epoch, batch]).generate_state(1)[0])
        noise = torch.randn((batch_size, z.shape[1]), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)
        return self.config.latent_noise * noise[self.replicas.rows(batch_size)].to(z)

    def _learn_start(self, x: torch.Tensor, z: torch.Tensor, batch_size: int) -> None:
        """Fold this batch's latents (all replicas' rows) into the start map's fit."""
        if self.start_fit is not None:
            rows = self.start_fit.rows(x, z, self.weights)
            self.start_fit.update(self.replicas.gather_rows(rows, batch_size))

    def evaluate(self, x, batch_size: int = 1000) -> float:
        """Mean per-sample loss of `x` reconstructed from its latents (encoder or
        flow from z0 = 0, with `eval_options`); each replica encodes its share."""
        x = self._tensor(x)
        mine = self.replicas.rows(len(x))
        total = 0.0
        for lo in range(mine.start, mine.stop, batch_size):
            xb = self._batch(x, slice(lo, min(lo + batch_size, mine.stop)))
            with torch.no_grad() if self.encoder is not None else torch.enable_grad():
                z, _, _ = self.latents(xb, training=False)
            with torch.no_grad():
                total += float(self.reconstruction_loss(self.decoder(z), xb, z, self.weights).sum())
        (total,) = self.replicas.sum(total)
        return total / len(x)

    # ---------------------------------------------------------------- training
    def fit(self, x_train, x_val=None) -> list[EpochRecord]:
        """Train for the remaining epochs of `config.epochs` and return the history."""
        x_train = self._tensor(x_train)
        x_val = None if x_val is None else self._tensor(x_val)
        for epoch in range(len(self.history), self.config.epochs):
            with threads_for_rows(self.config.batch_size * self.config.encode_ahead):
                record = self._epoch(epoch, x_train)
            if x_val is not None:
                record = replace(record, val_loss=self.evaluate(x_val))
            self.history.append(record)
            if self.checkpoint_dir is not None and self.replicas.is_writer:
                self.save_checkpoint(self.checkpoint_dir)
            self.replicas.barrier()  # no replica runs ahead of the last complete checkpoint
            for callback in self.callbacks:
                callback(self, record)
        return self.history

    def _epoch(self, epoch: int, x: torch.Tensor) -> EpochRecord:
        order = torch.from_numpy(np.random.default_rng([self.config.seed, epoch]).permutation(len(x)))
        bs, ahead = self.config.batch_size, self.config.encode_ahead
        batches = [order[lo : lo + bs] for lo in range(0, len(x), bs)]
        total = steps = nfe = 0.0
        used = skipped = 0  # samples whose batch updated the decoder; batches skipped
        self.decoder.train()
        start = time.perf_counter()
        bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{self.config.epochs} {self.config.method}",
                   disable=not self.progress, leave=False, unit="batch")
        for first in range(0, len(batches), ahead):
            group = [self._batch(x, index) for index in batches[first : first + ahead]]
            mines = [xb[self.replicas.rows(len(xb))] for xb in group]
            encoded = self._latents_ahead(mines) if self.config.gradient == "approx" else [None] * len(group)
            for batch, xb, mine, latents in zip(range(first + 1, first + len(group) + 1), group, mines, encoded):
                bar.update()
                self.optimizer.zero_grad(set_to_none=True)
                if latents is None:
                    summed, z, s, n = self._exact_gradients(mine)
                else:
                    z, s, n = latents
                    z_in = z.detach() if self.encoder is None else z
                    output = self.update_decoder(z_in + self._latent_noise(epoch, batch, len(xb), z))
                    summed = self.loss(output, mine, z, self.weights).sum()
                self._learn_start(mine, z.detach(), len(xb))
                steps, nfe = steps + s, nfe + n
                self.batch_log.append((epoch + 1, len(mine), s, n))
                (bad,) = self.replicas.sum(float(not torch.isfinite(summed)))  # every replica decides alike
                if bad:
                    if self.config.on_nonfinite == "stop":
                        raise TrainingError(
                            f"training loss became {float(summed.detach())} in epoch {epoch + 1}, batch {batch}; "
                            "lower lr, or set on_nonfinite='skip' to skip such batches")
                    skipped += 1
                    continue
                if summed.requires_grad:
                    (summed * self.replicas.loss_scale(len(xb))).backward()
                self.optimizer.step()
                total += float(summed.detach())
                used += len(xb)
        bar.close()
        if self.start_fit is not None:  # as a checkpoint would, so writing one changes no result
            self.start_fit.fold()
        total, steps, nfe = self.replicas.sum(total, steps, nfe)
        seconds = time.perf_counter() - start
        train_loss = total / used if used else math.nan
        return EpochRecord(epoch + 1, train_loss, math.nan, seconds, len(x), steps / len(x), nfe / len(x), skipped)

    def _latents_ahead(self, mines: list[torch.Tensor]) -> list[tuple[torch.Tensor, int, int]]:
        """Training latents of consecutive batches, encoded in one call (`encode_ahead`),
        with each batch's flow steps and evaluations; a sample's latent does not
        depend on the others encoded with it."""
        z, steps, nfe = self.latents(torch.cat(mines) if len(mines) > 1 else mines[0], training=True)
        sizes = [len(mine) for mine in mines]
        return [(zb, int(sb.sum()), int(nb.sum()))
                for zb, sb, nb in zip(z.split(sizes), steps.split(sizes), nfe.split(sizes))]

    def _exact_gradients(self, x: torch.Tensor):
        """Encode `x`, set the decoder's `.grad` to the exact gradient of the batch's
        mean energy, and return the summed energy, the latents, the flow steps and
        evaluations spent. (A learned start depends on `x` only, not on the decoder.)"""
        z0 = self._start(x, training=True)
        enc, grads = flow_gradients(self.flow_encoder, x, z0, self.weights, self.config.gradient)
        for param, grad in zip(self.decoder.parameters(), grads):
            param.grad = grad / len(x)
        return enc.loss.sum(), enc.z, int(enc.steps.sum()), int(enc.nfe.sum())

    def _tensor(self, x) -> torch.Tensor | SampleRows:
        """Samples checked and as a tensor; `SampleRows` stay on disk, and each
        batch is checked as it is read (`_batch`)."""
        if isinstance(x, SampleRows):
            return x
        array = validate_data(x, feature_shape=tuple(self.decoder.out_shape), loss=self.config.loss)
        return torch.from_numpy(array)

    def _batch(self, x: torch.Tensor | SampleRows, index) -> torch.Tensor:
        """Rows `index` of samples from `_tensor`."""
        rows = x[index]
        return rows if isinstance(rows, torch.Tensor) else self._tensor(rows.read())

    # ------------------------------------------------------------- persistence
    def settings(self) -> dict:
        """What a saved model records about how it was trained and how to encode."""
        flow = self.config.flow_options(training=False) if self.config.is_gfe else {"loss": self.config.loss}
        return {"method": self.config.method, "train_config": asdict(self.config), "encode": flow}

    def save_model(self, directory, extra_settings: dict | None = None) -> Path:
        return save_model(directory, self.decoder, settings={**self.settings(), **(extra_settings or {})},
                          encoder=self.encoder, start=self.start_map())

    def save_checkpoint(self, directory) -> Path:
        """Write epoch `len(history)`'s checkpoint and point `latest.json` at it,
        with the digests of its files."""
        directory = Path(directory)
        name = f"epoch-{len(self.history):05d}"
        target = directory / name
        if target.exists():
            shutil.rmtree(target)
        self.save_model(target)
        tensors, layout = _flatten_state(self.optimizer.state_dict())
        state = {"optimizer": layout, "history": [asdict(r) for r in self.history]}
        if self.start_fit is not None:  # the running fit rides along in the same tensor file
            start_tensors, state["start"] = _flatten_state(self.start_fit.state_dict(), prefix="start")
            tensors.update(start_tensors)
        with atomic_path(target / "optimizer.safetensors") as tmp:
            safetensors.torch.save_file(tensors, str(tmp))
        atomic_write_text(target / "trainer.json", json.dumps(state, indent=1))
        digests = {file: file_sha256(target / file) for file in CHECKPOINT_FILES}
        atomic_write_text(directory / LATEST, json.dumps({
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "checkpoint": name,
            "sha256": digests}))
        for old in directory.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return target

    @classmethod
    def resume(cls, directory, **kwargs) -> "Trainer":
        """Rebuild a trainer from the last complete checkpoint in `directory`."""
        directory = Path(directory)
        target = _verified_checkpoint(directory)
        loaded = load_model(target)
        try:
            state = json.loads((target / "trainer.json").read_text())
            tensors = safetensors.torch.load_file(str(target / "optimizer.safetensors"))
            config = TrainConfig(**loaded.settings["train_config"])
            history = [EpochRecord(**r) for r in state["history"]]
            optimizer_state = _unflatten_state(tensors, state["optimizer"])
            start_state = _unflatten_state(tensors, state["start"]) if "start" in state else None
        except GFEError:
            raise
        except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as err:
            raise ModelFileError(f"checkpoint {target} cannot be read: {err!r}") from err
        trainer = cls(config, tuple(loaded.decoder.out_shape), decoder=loaded.decoder.train(),
                      checkpoint_dir=directory, **kwargs)
        if loaded.encoder is not None:
            trainer.encoder.load_state_dict(loaded.encoder.state_dict())
        trainer.optimizer.load_state_dict(optimizer_state)
        if trainer.start_fit is not None and start_state is not None:
            try:
                trainer.start_fit.load_state_dict(start_state)
            except (ConfigError, KeyError, TypeError) as err:  # consistent digests, inconsistent content
                raise ModelFileError(f"checkpoint {target} holds unusable learned-start statistics: {err}") from err
        trainer.history = history
        return trainer

    def write_history_csv(self, path) -> None:
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([f.name for f in fields(EpochRecord)])
            writer.writerows([list(asdict(r).values()) for r in self.history])


def _verified_checkpoint(directory: Path) -> Path:
    """The checkpoint directory `latest.json` names, after checking its format
    and the digest of every file in it."""
    latest = directory / LATEST
    if not latest.is_file():
        raise ModelFileError(f"no usable checkpoint in {directory}: {LATEST} is missing")
    try:
        record = json.loads(latest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{latest} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{latest} is not a gfe checkpoint record (format {CHECKPOINT_FORMAT!r})")
    if record.get("format_version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"{latest} has format_version {record.get('format_version')!r}; "
                             f"this gfe reads {CHECKPOINT_VERSION}")
    name, digests = record.get("checkpoint"), record.get("sha256")
    if not isinstance(name, str) or not re.fullmatch(r"epoch-\d+", name) or not isinstance(digests, dict):
        raise ModelFileError(f"{latest} must name a checkpoint epoch-N and the sha256 of its files")
    target = directory / name
    for file in CHECKPOINT_FILES:
        path = target / file
        if not path.is_file():
            raise ModelFileError(f"checkpoint {target} lacks {file}")
        if file_sha256(path) != digests.get(file):
            raise ModelFileError(f"{path} does not match the sha256 digest recorded in {latest}: "
                                 "the file was modified or corrupted")
    return target


def _flatten_state(state: dict, prefix: str | None = None) -> tuple[dict, dict]:
    """Split a (nested) state dict into tensors (for safetensors, keys under
    `prefix`) and JSON."""
    tensors = {}

    def walk(obj, path):
        if isinstance(obj, torch.Tensor):
            key = "/".join(path)
            tensors[key] = obj.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(obj, dict):
            return {"__dict__": [[k, walk(v, path + [str(k)])] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, path + [str(i)]) for i, v in enumerate(obj)]
        return obj

    return tensors, walk(state, [] if prefix is None else [prefix])


def _unflatten_state(tensors: dict, layout) -> dict:
    def walk(obj):
        if isinstance(obj, dict) and "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj["__dict__"]}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(layout)
