"""Training: GFE decoders on flow latents, and the autoencoder baseline, in one loop.

GFE uses the approximate gradient (DESIGN §2.3) by default: each batch is encoded by
the flow, the latents are held fixed, and the decoder takes one optimizer step on the
reconstruction loss. `gradient="adjoint"` or `"unrolled"` differentiate through the
flow instead (`gfe.gradients`), with the flow's energy as the loss. The autoencoder
takes its latents from its encoder; the loop asks a latent source
(`gfe.latent_sources`) and does not branch on which it has.

A killed run resumes from its last complete epoch (`gfe.checkpoint`) and reproduces an
uninterrupted run: the data order of epoch `e` is drawn from `(seed, e)` and encodings
are deterministic.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import read_checkpoint, write_checkpoint
from .devices import module_device
from .distributed import Replicas
from .encode import as_weights, threads_for_rows
from .errors import ConfigError, ModelFileError, TrainingError
from .gradients import flow_gradients
from .latent_sources import FlowLatents, latent_source
from .losses import Loss, loss_spec
from .models import default_decoder
from .persist import atomic_path, load_model, save_model
from .samples import SampleRows, validate_data
from .start import RidgeStart
from .train_config import OPTIMIZERS, EpochRecord, TrainConfig

REFINE_CHUNK = 1024  # samples per flow call in `Trainer.refine_start`
REFINE_SAMPLES = 2000  # training samples `Trainer.refine_start` encodes by default
INIT_SAMPLES = 4096  # training samples, evenly spaced, a decoder's `init_from_data` sees


class Trainer:
    """Trains `decoder` (a default MLP if None) on samples shaped like its output.

    `checkpoint_dir`, if given, receives a checkpoint after each epoch;
    `Trainer.resume(checkpoint_dir, x_train, ...)` continues such a run.
    `callbacks` are called as `callback(trainer, record)` after each epoch.
    `replicas` (from `gfe.distributed.process_group`) splits every batch across
    the processes of a `torchrun` launch; the result matches one process.
    `weights` (the feature shape; zeros mask features out, e.g. detector gaps)
    weigh the loss in the flow, in the decoder's updates and in `evaluate`.
    `fit` and `evaluate` take arrays, or `gfe.samples.SampleRows` for samples read
    from disk a batch at a time. A decoder with an `init_from_data(targets, weights)`
    method (`gfe.models.PCAMLPDecoder`) is initialised from the training samples
    when a run begins (not on resume: the checkpoint carries those weights); with
    validation data and `keep_best`, that start is itself a candidate for the model
    `fit` ends with (`fit`).
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
        _check_replicas(config, replicas)
        with torch.random.fork_rng(devices=[]):  # seeded initial weights; the caller's RNG is left alone
            torch.manual_seed(config.seed)
            self.decoder = decoder if decoder is not None else default_decoder(tuple(feature_shape), config.latent_dim)
            if tuple(self.decoder.out_shape) != tuple(feature_shape):
                raise ConfigError(
                    f"decoder output shape {self.decoder.out_shape} differs from the data's {tuple(feature_shape)}")
            self.weights = None
            if weights is not None:
                param = next(self.decoder.parameters())
                self.weights = as_weights(weights, param.new_empty((0, *self.decoder.out_shape)), param)
            self.source = latent_source(self.decoder, config, self.weights)
        self.device = module_device(self.decoder)  # samples stay on the CPU; each batch goes here
        self.replicas = replicas
        self.update_decoder = replicas.wrap(self.decoder)  # the flow must use the plain decoder
        self.optimizer = OPTIMIZERS[config.optimizer](
            list(self.decoder.parameters()) + self.source.parameters(), lr=config.lr)
        # The training update's loss (with the source's latent prior); `evaluate` reports the reconstruction alone.
        self.loss = Loss(config.loss, *self.source.update_penalty)
        self.reconstruction_loss = Loss(config.loss)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.callbacks = callbacks
        self.progress = progress
        self.history: list[EpochRecord] = []
        self.best: dict | None = None  # the model state of epoch `history[-1].best_epoch` (keep_best)
        self.start_val: torch.Tensor | None = None  # per-sample validation losses of a data-initialised start
        # the decoder's initial weights, which `retrained` starts again from
        self.initial = ({name: t.detach().clone() for name, t in self.decoder.state_dict().items()}
                        if config.retrain_all else None)
        # (epoch, samples encoded, flow steps, decoder evaluations) of each batch
        # this process trained on since it started (not checkpointed): how encoding
        # cost evolves as the decoder learns
        self.batch_log: list[tuple[int, int, int, int]] = []

    # ----------------------------------------------------------------- latents
    def latents(self, x: torch.Tensor, *, training: bool):
        """Latents of a batch and each sample's flow steps and decoder evaluations."""
        return self.source(x, training=training)

    def start_map(self) -> RidgeStart | None:
        """The start map a saved model carries (None without a learned start)."""
        return self.source.start_map()

    def check_refine_start(self) -> None:
        """Raise `ConfigError` unless `refine_start` can run, e.g. before training."""
        if not isinstance(self.source, FlowLatents):
            raise ConfigError("refine_start needs a GFE method: the autoencoder has no flow to start")
        self.source.check_refine()
        if self.replicas.world_size > 1:
            raise ConfigError("refine_start runs in one process; refine a saved model's start after torchrun")

    def refine_start(self, x, max_samples: int = REFINE_SAMPLES) -> RidgeStart:
        """Refit the saved start map on converged latents of the last `max_samples` of
        `x` (its training samples), with their mean curvature as the first BFGS metric
        (`FlowLatents.refine`). Training itself is unchanged."""
        self.check_refine_start()
        x = self._tensor(x)
        lo = max(0, len(x) - max_samples)
        batches = (self._batch(x, slice(start, min(start + REFINE_CHUNK, len(x))))
                   for start in range(lo, len(x), REFINE_CHUNK))
        return self.source.refine(batches, len(x) - lo, progress=self.progress)

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

    def evaluate(self, x, batch_size: int = 1000) -> float:
        """Mean per-sample loss of `x` reconstructed from its latents (encoder or
        flow from z0 = 0, with `eval_options`); each replica encodes its share."""
        return float(self.sample_losses(x, batch_size).mean())

    def sample_losses(self, x, batch_size: int = 1000) -> torch.Tensor:
        """Each sample's loss, as `evaluate` averages them (float64, every replica's)."""
        x = self._tensor(x)
        mine = self.replicas.rows(len(x))
        losses = [torch.zeros(0, dtype=torch.float64)]
        for lo in range(mine.start, mine.stop, batch_size):
            xb = self._batch(x, slice(lo, min(lo + batch_size, mine.stop)))
            with self.source.grad_mode():
                z, _, _ = self.latents(xb, training=False)
            with torch.no_grad():
                losses.append(self.reconstruction_loss(self.decoder(z), xb, z, self.weights).double())
        return self.replicas.gather_rows(torch.cat(losses), len(x))

    # ---------------------------------------------------------------- training
    def fit(self, x_train, x_val=None) -> list[EpochRecord]:
        """Train for the remaining epochs of `config.epochs` (fewer once `patience`
        stops the run) and return the history. With `keep_best` and validation
        data, the decoder and start map are then those of the best epoch; the
        checkpoint holds the last epoch's, which `Trainer.resume` continues from.

        A decoder initialised from data (`init_from_data`, e.g. PCA) starts at a
        model worth keeping: with `keep_best` and validation data, a trained epoch
        replaces that start (epoch 0) only if it beats it on the validation samples
        by more than one standard error of their paired loss differences (the
        one-standard-error rule: few validation samples are noisy judges).
        `retrained` then trains the chosen number of epochs on every sample."""
        x_train = self._tensor(x_train)
        x_val = None if x_val is None else self._tensor(x_val)
        for name in ("patience", "retrain_all"):
            if getattr(self.config, name) not in (None, False) and x_val is None:
                raise ConfigError(f"{name} acts on the validation loss: pass validation data "
                                  f"(gfe train: --val-fraction > 0), or leave {name} off")
        if not self.history:
            self.init_decoder(x_train)
            if self._start_counts(x_val):
                self.start_val, self.best = self.sample_losses(x_val), self._model_state()
        for epoch in range(len(self.history), self.config.epochs):
            if self._patience_spent():
                break
            with threads_for_rows(self.config.batch_size * self.config.encode_ahead):
                record = self._epoch(epoch, x_train)
            if x_val is not None:
                record = self._validated(record, x_val)
            self.history.append(record)
            if self.checkpoint_dir is not None and self.replicas.is_writer:
                self.save_checkpoint(self.checkpoint_dir)
            self.replicas.barrier()  # no replica runs ahead of the last complete checkpoint
            for callback in self.callbacks:
                callback(self, record)
        best = self.history[-1].best_epoch if self.history else None
        if self.best is not None and best is not None and best < len(self.history):
            self._load_model_state(self.best)
        return self.history

    def retrained(self, x_train, x_val) -> Trainer:
        """After `fit(x_train, x_val)`, a trainer that trains again from the same
        initial weights on the training and validation samples together, for the
        best epoch's number of epochs (`config.retrain_all`): validation chose how
        long to train, and then no sample is left out of the model. A kept start
        (best epoch 0) is initialised from all the samples, untrained. Its history
        and config are this run's (the epochs were chosen here)."""
        if self.initial is None:
            raise ConfigError("retrained needs a trainer made with retrain_all=True (it keeps the initial weights)")
        best = self.history[-1].best_epoch if self.history else 0
        x_train, x_val = self._tensor(x_train), self._tensor(x_val)
        if isinstance(x_train, SampleRows):
            every = SampleRows(x_train.samples, x_train.prepare, np.concatenate([x_train.index, x_val.index]))
        else:
            every = torch.cat([x_train, x_val])
        decoder = copy.deepcopy(self.decoder)
        decoder.load_state_dict(self.initial)
        config = replace(self.config, epochs=max(best, 1), patience=None, retrain_all=False)
        trainer = Trainer(config, tuple(decoder.out_shape), decoder=decoder, progress=self.progress,
                          weights=self.weights)
        if best:
            trainer.fit(every)
        else:
            trainer.init_decoder(every)
        trainer.config, trainer.history = self.config, self.history
        return trainer

    def _start_counts(self, x_val) -> bool:
        """Whether the decoder's start is a candidate for the best epoch (see `fit`)."""
        return x_val is not None and self.config.keep_best and hasattr(self.decoder, "init_from_data")

    def init_decoder(self, *parts) -> None:
        """Initialise a decoder that starts from data (`init_from_data`) from up to
        `INIT_SAMPLES` samples of `parts` (the training samples, and any others),
        evenly spaced, in its output space. `fit` calls it when a run begins; call
        it to see the decoder training starts from."""
        init = getattr(self.decoder, "init_from_data", None)
        if init is None:
            return
        parts = [self._tensor(x) for x in parts]
        total = sum(len(x) for x in parts)
        batches = []
        for x in parts:
            n = min(len(x), max(1, round(INIT_SAMPLES * len(x) / total)))
            batches.append(self._batch(x, torch.linspace(0, len(x) - 1, n, dtype=torch.float64).round().long()))
        init(loss_spec(self.config.loss).inverse_link(torch.cat(batches)), self.weights)

    def _validated(self, record: EpochRecord, x_val) -> EpochRecord:
        """`record` with its validation loss and the best epoch so far; with
        `keep_best`, a new best epoch's model state is kept (and checkpointed).
        A kept start (`start_val`) yields only to a clearly better epoch (`fit`)."""
        losses = self.sample_losses(x_val)
        val_loss = float(losses.mean())
        best = self.history[-1].best_epoch if self.history else 0
        if self.start_val is not None:
            better = best > 0 and val_loss < self.history[best - 1].val_loss
            better = better or (best == 0 and _clearly_lower(losses, self.start_val))
        else:
            better = best == 0 or val_loss < self.history[best - 1].val_loss
        if math.isfinite(val_loss) and better:
            best = record.epoch
            if self.config.keep_best:
                self.best = self._model_state()
        return replace(record, val_loss=val_loss, best_epoch=best)

    def _patience_spent(self) -> bool:
        """Whether `patience` epochs have passed without a better validation loss."""
        patience = self.config.patience
        if patience is None or not self.history:
            return False
        return len(self.history) - self.history[-1].best_epoch >= patience

    def _model_state(self) -> dict:
        """Copies of what a saved model holds: the decoder's and the source's modules' weights."""
        modules = {"decoder": self.decoder, **self.source.saved_modules()}
        return {part: {name: t.detach().clone() for name, t in module.state_dict().items()}
                for part, module in modules.items() if module is not None}

    def _load_model_state(self, state: dict) -> None:
        self.decoder.load_state_dict(state["decoder"])
        self.source.load_saved(state)

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
            encoded = [None] * len(group) if self.source.exact_gradients else self._latents_ahead(group, mines)
            for batch, xb, mine, latents in zip(range(first + 1, first + len(group) + 1), group, mines, encoded):
                bar.update()
                self.optimizer.zero_grad(set_to_none=True)
                if latents is None:
                    summed, z, s, n = self._exact_gradients(mine, len(xb))
                else:
                    z, s, n = latents
                    output = self.update_decoder(self.source.for_update(z) + self._latent_noise(epoch, batch, len(xb), z))
                    summed = self.loss(output, mine, z, self.weights).sum()
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
                self._schedule_lr((epoch * len(batches) + batch - 1) / (self.config.epochs * len(batches)))
                self.optimizer.step()
                total += float(summed.detach())
                used += len(xb)
        bar.close()
        self.source.end_epoch()
        total, steps, nfe = self.replicas.sum(total, steps, nfe)
        seconds = time.perf_counter() - start
        train_loss = total / used if used else math.nan
        return EpochRecord(epoch + 1, train_loss, math.nan, seconds, len(x), steps / len(x), nfe / len(x), skipped)

    def _schedule_lr(self, progress: float) -> None:
        """Set each parameter group's learning rate for the update at `progress` (0 to 1) through the run."""
        if self.config.lr_schedule == "cosine":
            for group in self.optimizer.param_groups:  # "initial_lr" as torch's schedulers keep it
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _latents_ahead(self, group: list[torch.Tensor], mines: list[torch.Tensor]) -> list[tuple[torch.Tensor, int, int]]:
        """Training latents of consecutive batches (`group`; this replica's rows `mines`),
        encoded in one call (`encode_ahead`), with each batch's flow steps and
        evaluations; a sample's latent does not depend on the others encoded with it.
        The latents go to the source at once, so a start map re-solved on them is
        solved while the decoder takes the group's updates."""
        z, steps, nfe = self.source(torch.cat(mines) if len(mines) > 1 else mines[0], training=True)
        sizes = [len(mine) for mine in mines]
        encoded = [(zb, int(sb.sum()), int(nb.sum()))
                   for zb, sb, nb in zip(z.split(sizes), steps.split(sizes), nfe.split(sizes))]
        for xb, mine, (zb, _, _) in zip(group, mines, encoded):
            self._learn(mine, zb, len(xb))
        return encoded

    def _learn(self, mine: torch.Tensor, z: torch.Tensor, batch_size: int) -> None:
        """Give the source a batch's latents (all replicas' rows) to learn its start from."""
        self.source.learn(mine, z.detach(), lambda rows: self.replicas.gather_rows(rows, batch_size))

    def _exact_gradients(self, x: torch.Tensor, batch_size: int):
        """Encode `x`, set the decoder's `.grad` to the exact gradient of the batch's
        mean energy, and return the summed energy, the latents, the flow steps and
        evaluations spent. (A learned start depends on `x` only, not on the decoder.)"""
        z0 = self.source.start(x, training=True)
        enc, grads = flow_gradients(self.source.train_flow, x, z0, self.weights, self.config.gradient)
        for param, grad in zip(self.decoder.parameters(), grads):
            param.grad = grad / len(x)
        self._learn(x, enc.z, batch_size)
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
        return (rows if isinstance(rows, torch.Tensor) else self._tensor(rows.read())).to(self.device)

    # ------------------------------------------------------------- persistence
    def settings(self) -> dict:
        """What a saved model records about how it was trained and how to encode."""
        return {"method": self.config.method, "train_config": asdict(self.config),
                "encode": self.source.encode_settings(self.config)}

    def save_model(self, directory, extra_settings: dict | None = None, arrays: dict | None = None) -> Path:
        return save_model(directory, self.decoder, settings={**self.settings(), **(extra_settings or {})},
                          arrays=arrays, **self.source.saved_modules())

    def save_checkpoint(self, directory) -> Path:
        """Write epoch `len(history)`'s checkpoint and point `latest.json` at it."""
        best = {} if self.best is None else {"best": self.best}
        start = {} if self.start_val is None else {"start_val": {"losses": self.start_val}}
        initial = {} if self.initial is None else {"initial": self.initial}
        return write_checkpoint(directory, len(self.history), self.save_model,
                                {"optimizer": self.optimizer.state_dict(), **self.source.state, **best, **start,
                                 **initial},
                                {"history": [asdict(r) for r in self.history]})

    @classmethod
    def resume(cls, directory, *, device="cpu", **kwargs) -> "Trainer":
        """Rebuild a trainer from the last complete checkpoint in `directory`, on
        `device` (checkpoints are saved from the CPU: any device resumes any run)."""
        target, states, records = read_checkpoint(directory, ("optimizer", "start", "best", "start_val",
                                                              "initial"))
        loaded = load_model(target, device)
        try:
            config = TrainConfig(**loaded.settings["train_config"])
            history = [EpochRecord(**r) for r in records["history"]]
        except (KeyError, TypeError) as err:
            raise ModelFileError(f"checkpoint {target} cannot be read: {err!r}") from err
        trainer = cls(config, tuple(loaded.decoder.out_shape), decoder=loaded.decoder.train(),
                      checkpoint_dir=directory, **kwargs)
        trainer.optimizer.load_state_dict(states["optimizer"])
        try:
            trainer.source.restore(loaded, states)
        except (ConfigError, KeyError, TypeError) as err:  # consistent digests, inconsistent content
            raise ModelFileError(f"checkpoint {target} holds unusable learned-start statistics: {err}") from err
        trainer.history, trainer.best = history, states.get("best")
        trainer.start_val = states["start_val"]["losses"] if "start_val" in states else None
        trainer.initial = states.get("initial", trainer.initial)
        return trainer

    def write_history_csv(self, path) -> None:
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([f.name for f in fields(EpochRecord)])
            writer.writerows([list(asdict(r).values()) for r in self.history])


def _clearly_lower(losses: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether per-sample `losses` are below the paired `reference` losses on average
    by more than one standard error of the differences (never, for fewer than two)."""
    diff = losses - reference
    return len(diff) > 1 and bool(diff.mean() + diff.std() / math.sqrt(len(diff)) < 0)


def _check_replicas(config: TrainConfig, replicas: Replicas) -> None:
    """Refuse what cannot train across the processes of a torchrun launch."""
    if replicas.world_size == 1:
        return
    if not config.is_gfe:
        raise ConfigError("the autoencoder baseline trains in one process; distributed training "
                          "supports the gfe-* methods")
    if config.on_nonfinite == "skip":
        raise ConfigError("on_nonfinite='skip' trains in one process: DDP expects every forward to be "
                          "followed by a backward; use 'stop' under torchrun")
    if config.gradient != "approx":
        raise ConfigError(f"gradient={config.gradient!r} trains in one process; distributed training "
                          "uses the approximate gradient")
    if config.retrain_all:
        raise ConfigError("retrain_all trains in one process; retrain after torchrun without it")
