"""File-to-file workflows behind the command line: train a model directory,
encode a data file to a latents file, decode latents to reconstructions.

They live in the library (not in `cli`) so scripts and notebooks can call them,
and the command line stays a thin parser.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .channels import Channels
from .checkpoint import LATEST
from .data import open_samples
from .devices import module_device, resolve_device
from .distributed import Replicas
from .encode import Encoding, as_weights
from .encode_settings import EncodeSettings
from .errors import ConfigError, DataError
from .ins.io import Grid, SpectraDataset, check_same_grid, grid_of
from .latents import latents_path, latents_writer, provenance, read_covariance, read_latents, read_scale
from .losses import Loss, link
from .models import DECODERS
from .normalise import Standardisation, check_normalisation, check_standardisation
from .normalise import normalise as normalise_samples
from .persist import atomic_path, file_sha256, load_model
from .samples import SampleRows, Samples, row_chunks, rows_named, split, validate_data
from .solvers import Status
from .tensorboard_log import TensorBoardLog
from .train import REFINE_SAMPLES, Trainer
from .train_config import TrainConfig
from .uncertainty import UncertaintySettings, as_float64, laplace, propagate

CHECKPOINTS = "checkpoints"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def train_model(data, out, config: TrainConfig, *, key=None, decoder: str = "mlp", val_fraction: float = 0.1,
                normalise: str = "none", standardise: bool = False, ranges=None, weights=None, resume: bool = False,
                quiet: bool = False,
                tensorboard=None, refine_start: bool = False, lazy: bool = False, device="cpu",
                replicas: Replicas = Replicas()) -> Trainer:
    """Train on the samples in `data` as `config` says and write the model directory `out`.

    `decoder` names a registered architecture (`gfe.models.DECODERS`). Checkpoints go
    to `out/checkpoints`; with `resume`, the run there continues (to `config.epochs`
    epochs; its other settings are the checkpoint's) instead of a new one being
    started. Refuses to start over an existing run, so no work is lost by a mistyped
    command. The history is written to `out/history.csv`, and with `tensorboard` (a
    folder) also as TensorBoard scalars. With `replicas` of a torchrun launch, batches
    are split across the processes and only rank 0 writes files and reports. An INS
    spectra file's mask weighs the loss, and its grid is recorded so that encoding
    data on another grid is refused; a file's axis (a CSV's header, 1-D spectra's
    energies) likewise. `ranges` ("950:1550,1600:1700", inclusive, on the axis or
    else on feature indices) keep only those channels, and `weights` (an array or
    file, one weight per feature; 0 masks) weigh them in the loss: both are recorded
    (`gfe.channels`) and applied again to full-width data when encoding. `normalise`
    ("none" or "mean", per sample) is recorded too and applied again when encoding.
    With `standardise`, each feature is then centred and scaled by its mean and
    standard deviation over the training samples (not the validation ones), which
    the model keeps to apply again when encoding and to undo when decoding.
    With `lazy`, .npy and HDF5 samples stay on disk and each batch is read as it is
    needed (after one pass that checks them all), for data larger than memory; the
    run is the same, bit for bit. With `refine_start`, the saved start map is
    refitted on converged latents of the training samples (`Trainer.refine_start`;
    one process only). The decoder trains on `device` (`gfe.devices.resolve_device`;
    under torchrun, each process's own, `gfe.distributed.process_device`), built
    on the CPU first so its initial weights are the same on every device.
    """
    device = resolve_device(device)
    if decoder not in DECODERS:
        raise ConfigError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1); got {val_fraction}")
    check_normalisation(normalise, config.loss)
    if standardise:
        check_standardisation(config.loss)
    out = Path(out)
    quiet = quiet or not replicas.is_writer
    with contextlib.ExitStack() as stack:  # holds the data file open while training reads it
        samples = stack.enter_context(open_samples(data, key))
        inputs = ModelInput(samples, normalise, config.loss, Channels.choose(samples.on_disk, ranges, weights))
        inputs, x_train, x_val = _training_rows(inputs, val_fraction, config.seed, lazy, standardise)
        trainer = _trainer(out / CHECKPOINTS, config, decoder, inputs, resume, quiet, replicas, device)
        if refine_start:  # refused before training, not after
            trainer.check_refine_start()
        trainer.callbacks = (*trainer.callbacks, _reporter(quiet))
        if tensorboard is not None and replicas.is_writer:
            trainer.callbacks = (*trainer.callbacks, stack.enter_context(TensorBoardLog(tensorboard)))
        used = inputs.channels.describe()
        _say(quiet, f"training on {len(x_train)} samples, validating on {len(x_val) or 'none'}"
                    + (f"; using {used}" if used else ""))
        trainer.fit(x_train, x_val if len(x_val) else None)
        if config.retrain_all:
            _say(quiet, f"retraining {trainer.history[-1].best_epoch} epochs (the best) on all "
                        f"{len(x_train) + len(x_val)} samples")
            trainer = trainer.retrained(x_train, x_val)
        if refine_start:
            _say(quiet, f"refitting the start map on converged latents of {min(len(x_train), REFINE_SAMPLES)} "
                        "training samples")
            trainer.refine_start(x_train)
    if replicas.is_writer:
        _save_trained(trainer, out, data, inputs)
        _say(quiet, f"model written to {out}")
    return trainer


def _training_rows(inputs: ModelInput, val_fraction: float, seed: int, lazy: bool, standardise: bool):
    """`(inputs, training samples, validation samples)`, the samples prepared as
    the model will see them by `inputs`; with `standardise`, those inputs carry
    the standardisation fitted on the training samples alone."""
    x_train, x_val = _split_rows(inputs, val_fraction, seed, lazy)
    if not standardise:
        return inputs, x_train, x_val
    inputs = dataclasses.replace(inputs, standardised=Standardisation.fit(row_chunks(x_train)))
    return inputs, *_split_rows(inputs, val_fraction, seed, lazy)


def _split_rows(inputs: ModelInput, val_fraction: float, seed: int, lazy: bool):
    """Training and validation samples, checked and prepared by `inputs`; with
    `lazy`, rows on disk read a batch at a time."""

    def prepare(raw: np.ndarray) -> np.ndarray:
        return validate_data(inputs.prepare(raw)[0], loss=inputs.loss)

    if lazy:
        x = SampleRows(inputs.samples, prepare)
        x.check()
    else:
        x = prepare(inputs.samples.read())
    n_val = int(round(val_fraction * len(x)))
    return split(x, len(x) - n_val, n_val, seed=seed)


def _trainer(checkpoints: Path, config: TrainConfig, decoder: str, inputs: ModelInput, resume: bool, quiet: bool,
             replicas: Replicas, device: torch.device) -> Trainer:
    """A trainer resumed from `checkpoints`, or a new one (refused over an existing run)."""
    progress = not quiet
    if resume:
        replicas.barrier()  # every replica resumes from the same checkpoint
        trainer = Trainer.resume(checkpoints, device=device, progress=progress, replicas=replicas,
                                 weights=inputs.mask)
        trainer.config = dataclasses.replace(trainer.config, epochs=config.epochs)
        _say(quiet, f"resuming {checkpoints} after epoch {len(trainer.history)} of {config.epochs}")
        return trainer
    if (checkpoints / LATEST).exists():
        raise ConfigError(f"{checkpoints.parent} already holds a training run; pass --resume to continue it, "
                          "or choose another --out")
    feature_shape = inputs.feature_shape
    with torch.random.fork_rng(devices=[]):  # seeded initial weights; the caller's RNG is left alone
        torch.manual_seed(config.seed)
        model = DECODERS[decoder].decoder(config.latent_dim, feature_shape)
    return Trainer(config, feature_shape, decoder=model.to(device), checkpoint_dir=checkpoints, progress=progress,
                   replicas=replicas, weights=inputs.mask)


def _reporter(quiet: bool):
    """A callback that prints each epoch's losses."""

    def report(_, record):
        _say(quiet, f"epoch {record.epoch}: train loss {record.train_loss:.4f}, validation loss "
                    f"{record.val_loss:.4f}, {record.seconds:.1f} s, {record.mean_steps:.1f} flow steps/sample"
                    + (f", {record.skipped_batches} batches skipped (non-finite loss)"
                       if record.skipped_batches else ""))

    return report


def _save_trained(trainer: Trainer, out: Path, data, inputs: ModelInput) -> None:
    """The model directory with how its data were read and prepared, and the history."""
    dataset, standardised = inputs.samples.on_disk, inputs.standardised
    grid = grid_of(dataset).to_record() if isinstance(dataset, SpectraDataset) else None
    trainer.save_model(out, extra_settings={"data": str(data), "scaling": dataset.scaling,
                                            "feature_shape": list(trainer.decoder.out_shape),
                                            "normalise": inputs.normalise, "standardise": standardised is not None,
                                            "grid": grid, "channels": inputs.channels.record()},
                       arrays=None if standardised is None else standardised.arrays())
    trainer.write_history_csv(out / "history.csv")


def encode_samples(loaded, x: np.ndarray, settings: EncodeSettings, *, progress: bool = False,
                   weights=None) -> Encoding:
    """Encode samples with a loaded model as `settings` say: by the flow, or with an
    autoencoder's encoder. `weights` (a mask) weigh the loss."""
    if settings.with_encoder:
        return _encode_with_encoder(loaded, x, settings.loss, weights)
    return settings.flow_encode(loaded.decoder, loaded.start, x, weights=weights, progress=progress)


@dataclass(frozen=True)
class ModelInput:
    """Samples on their way into a model, prepared as it was trained on them:
    the model's `channels` kept, checked for `loss`, normalised per sample
    (`normalise`, over the channels' weights), then standardised per feature
    (`standardised`), a chunk at a time. `reconstruct` undoes it."""

    samples: Samples
    normalise: str
    loss: str | None
    channels: Channels
    standardised: Standardisation | None = None

    @functools.cached_property
    def mask(self) -> np.ndarray | None:
        """The loss weights of the model's features: the channels' weights and the data's mask."""
        return self.channels.loss_weights(getattr(self.samples.on_disk, "mask", None))

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.channels.feature_shape(tuple(self.samples.on_disk.x.shape[1:]))

    def prepare(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`(x, scale)` of raw samples; `scale` is None without normalisation."""
        x, scale = normalise_samples(validate_data(self.channels.select(raw), loss=self.loss), self.normalise,
                                     self.mask)
        if self.standardised is not None:
            x = self.standardised.apply(x)
        return x, None if self.normalise == "none" else scale

    def chunks(self, rows: int, start: int = 0, stop: int | None = None) -> Iterator[tuple]:
        """`(first row, x, scale)` of consecutive chunks of up to `rows` samples."""
        for lo, raw in self.samples.chunks(rows, start, stop):
            with rows_named(self.samples.on_disk.name, lo, lo + len(raw), len(self.samples)):
                yield lo, *self.prepare(raw)


def model_input(loaded, samples: Samples, settings: EncodeSettings) -> ModelInput:
    """`samples` as `loaded` was trained on them: the same grid and axis (else a
    `DataError`), its channels, its normalisation and standardisation, and the spectra's mask."""
    dataset = samples.on_disk
    grid = loaded.settings.get("grid")
    if grid is not None and isinstance(dataset, SpectraDataset):
        check_same_grid(Grid.from_record(grid), dataset, names=("the model's training spectra", dataset.name))
    return ModelInput(samples, loaded.settings.get("normalise", "none"), settings.loss,
                      Channels.from_record(loaded.settings.get("channels")).accept(dataset), standardisation(loaded))


def standardisation(loaded) -> Standardisation | None:
    """The per-feature standardisation `loaded` was trained with; None for models without one."""
    if not loaded.settings.get("standardise", False):
        return None
    return Standardisation.from_arrays(loaded.arrays, loaded.decoder.out_shape)


def encoding_provenance(loaded, settings: EncodeSettings, inputs: ModelInput, data) -> dict:
    """Provenance of latents encoded from `data`, with its file's digest when it
    is a file, and the axis of the model's features (what the latents decode to)."""
    digest = file_sha256(data) if Path(str(data)).is_file() else None
    return provenance(model_config=loaded.config, settings=settings.record(), input_path=data, input_sha256=digest,
                      axis=inputs.channels.model_axis)


def write_encoded(path, loaded, inputs: ModelInput, settings: EncodeSettings, meta: dict, *, start: int = 0,
                  stop: int | None = None, progress: bool = False,
                  uncertainty: UncertaintySettings | None = None) -> dict:
    """Encode samples `start:stop` of `inputs` into the latents file `path`.

    Samples are read, encoded and appended a chunk (the encoder's `chunk_size`)
    at a time, so memory does not grow with the data; those are the solver calls
    an encoding of all the samples in memory makes, so the latents are the same
    bit for bit. The file appears only once complete (`latents_writer`). With
    `uncertainty`, each latent's Laplace covariance joins it (`gfe.uncertainty`).
    Returns `Encoding.summary()`'s keys for all the samples, and the seconds spent
    (and the counts of the uncertainty's validity codes).
    """
    stop = len(inputs.samples) if stop is None else stop
    totals = _Totals()
    began = time.perf_counter()
    with latents_writer(path, stop - start, meta) as writer, contextlib.ExitStack() as stack:
        bar = None  # shown from the first encoded chunk on, so that bad input gets a clean error line
        for lo, x, scale in inputs.chunks(settings.chunk_size, start, stop):
            with rows_named(inputs.samples.on_disk.name, lo, lo + len(x), len(inputs.samples)):
                encoding = encode_samples(loaded, x, settings, weights=inputs.mask)
            extra = {} if scale is None else {"scale": scale}
            if uncertainty is not None:
                latent = laplace(loaded.decoder, settings.loss_function, torch.from_numpy(x), encoding.z, inputs.mask,
                                 noise_std=uncertainty.noise_std)
                extra.update(latent.arrays())
                totals.validity.update(latent.status_counts())
            writer.append(encoding, extra or None)
            totals.add(encoding)
            if bar is None:
                bar = stack.enter_context(tqdm(total=stop - start, desc="encoding", unit="sample",
                                               disable=not progress, leave=False))
            bar.update(len(encoding))
        writer.meta["encode_seconds"] = seconds = time.perf_counter() - began
    return {**totals.summary(), "seconds": seconds}


class _Totals:
    """`Encoding.summary()` accumulated over chunks."""

    def __init__(self):
        self.samples, self.loss, self.steps, self.nfe = 0, 0.0, 0.0, 0.0
        self.status: Counter = Counter()
        self.validity: Counter = Counter()  # of the latents' uncertainty, when asked for

    def add(self, encoding: Encoding) -> None:
        self.samples += len(encoding)
        self.loss += float(encoding.loss.double().sum())
        self.steps += float(encoding.steps.double().sum())
        self.nfe += float(encoding.nfe.double().sum())
        self.status.update(encoding.status_counts())

    def summary(self) -> dict:
        n = max(self.samples, 1)
        return {"samples": self.samples, "mean_loss": self.loss / n, "mean_steps": self.steps / n,
                "mean_nfe": self.nfe / n, "status": dict(self.status),
                **({"uncertainty": dict(self.validity)} if self.validity else {})}


def encode_file(model, data, output, *, key=None, options=None, quiet=False, device="cpu",
                uncertainty: UncertaintySettings | None = None) -> dict:
    """Encode the samples of `data` with the model in `model` on `device` and write
    `output` a chunk at a time (`write_encoded`): .npy files and HDF5 datasets are
    read as needed, so data larger than memory can be encoded. With `uncertainty`
    (.h5 or .npz output, flow models), each latent's covariance is written too.
    Returns the summary."""
    output = latents_path(output)
    loaded = load_model(model, device)
    settings = EncodeSettings.of_model(loaded, options)
    if uncertainty is not None:
        _check_uncertainty(output, settings, uncertainty)
    with open_samples(data, key) as samples:
        inputs = model_input(loaded, samples, settings)
        meta = encoding_provenance(loaded, settings, inputs, data)
        if uncertainty is not None:
            meta["uncertainty"] = uncertainty.record()
        summary = write_encoded(output, loaded, inputs, settings, meta, progress=not quiet, uncertainty=uncertainty)
    _say(quiet, f"encoded {summary['samples']} samples: mean loss {summary['mean_loss']:.5g}, "
                f"{summary['mean_steps']:.1f} steps and {summary['mean_nfe']:.1f} decoder evaluations per "
                f"sample, status {summary['status']}"
                + (f", uncertainty {summary['uncertainty']}" if "uncertainty" in summary else "")
                + f"; written to {output}")
    return summary


def _check_uncertainty(output: Path, settings: EncodeSettings, uncertainty: UncertaintySettings) -> None:
    """Refuse, before any work, what latent uncertainty cannot be given for."""
    if output.suffix.lower() == ".npy":
        raise ConfigError(f"latent uncertainty is written to .h5 or .npz files (an .npy holds the latents alone); "
                          f"got {output}")
    if settings.with_encoder:
        raise ConfigError("latent uncertainty is the curvature at the flow's optimum, which an autoencoder's "
                          "encoder does not find; encode by the flow with --options (e.g. '{\"gtol\": 1e-5}')")
    uncertainty.check(settings.loss)


def _encode_with_encoder(loaded, x: np.ndarray, loss_name: str, weights=None) -> Encoding:
    """An autoencoder model's latents come from its encoder (one forward pass)."""
    with torch.no_grad():
        xt = torch.from_numpy(x).to(module_device(loaded.encoder))
        z = loaded.encoder(xt)
        w = None if weights is None else as_weights(weights, xt, xt)
        loss = Loss(loss_name)(loaded.decoder(z), xt, z, w)
    n = len(x)
    zeros = xt.new_zeros(n, dtype=torch.long)
    return Encoding(z, loss, zeros, zeros, xt.new_full((n,), int(Status.CONVERGED), dtype=torch.long),
                    xt.new_zeros(n, dtype=torch.float64))


def _model_loss(loaded) -> str:
    return loaded.settings.get("encode", {}).get("loss", "bce")


def reconstruct(loaded, z, scale: np.ndarray | None = None) -> np.ndarray:
    """Reconstructions of latents `z` in the data's units: the decoder's output
    through the loss's link (probabilities for bce, rates for poisson), with what
    `ModelInput.prepare` did undone in reverse: the model's standardisation, then
    the per-sample normalisation `scale` the latents were encoded with (None: none)."""
    with torch.no_grad():
        z = torch.from_numpy(np.asarray(z, dtype=np.float32)).to(module_device(loaded.decoder))
        out = link(_model_loss(loaded), loaded.decoder(z)).cpu().numpy()
    standardised = standardisation(loaded)
    if standardised is not None:
        out = standardised.undo(out)
    return _rescale(out, scale)


def _rescale(out: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    return out if scale is None else out * scale.reshape(-1, *([1] * (out.ndim - 1)))


def reconstruct_std(loaded, z, cov, scale: np.ndarray | None = None) -> np.ndarray:
    """The standard deviation of each feature of `reconstruct(loaded, z, scale)` for
    latents of covariance `cov` (n, d, d), propagated through decoder and link to first
    order (`gfe.uncertainty.propagate`) and into the data's units as `reconstruct`
    does (times the standardisation's deviations and `scale`); NaN where `cov` is."""
    decoder, loss = as_float64(loaded.decoder), _model_loss(loaded)
    device = module_device(decoder)
    std = propagate(lambda v: link(loss, decoder(v)).flatten(1),
                    torch.from_numpy(np.asarray(z, dtype=np.float64)).to(device),
                    torch.from_numpy(np.asarray(cov, dtype=np.float64)).to(device))
    std = std.cpu().numpy().astype(np.float32).reshape(len(std), *loaded.decoder.out_shape)
    standardised = standardisation(loaded)
    if standardised is not None:
        std = std * standardised.std
    return _rescale(std, scale)


def decode_file(model, latents, output, *, std=None, quiet=False, device="cpu") -> np.ndarray:
    """Decode the latents in `latents` with `model` on `device` and write reconstructions (.npy);
    with `std` (an .npy path), also their standard deviations from the latents'
    covariances (`reconstruct_std`; the file must hold them: `gfe encode --uncertainty`)."""
    output = Path(output)
    for path in (output, std):
        if path is not None and Path(path).suffix.lower() != ".npy":
            raise DataError(f"reconstructions and their deviations are written as .npy; got {path}")
    loaded = load_model(model, device)
    z, meta = read_latents(latents)
    scale = read_scale(latents, len(z))
    made_by = meta.get("model_weights_sha256")
    if made_by and made_by != loaded.config["weights_sha256"]:
        raise DataError(f"{latents} was encoded with another model (weights sha256 {made_by[:12]}...), "
                        f"not {model} ({loaded.config['weights_sha256'][:12]}...); decode it with that model")
    latent_dim = loaded.decoder.latent_dim
    if z.shape[1] != latent_dim:
        raise DataError(f"{latents} holds {z.shape[1]}-dimensional latents; {model} expects {latent_dim}")
    if not np.isfinite(z).all():
        raise DataError(f"{latents} holds non-finite latents")
    cov = None if std is None else read_covariance(latents, len(z), latent_dim)
    recon = reconstruct(loaded, z, scale)
    arrays = {output: recon} if std is None else {output: recon, Path(std): reconstruct_std(loaded, z, cov, scale)}
    for path, array in arrays.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            np.save(tmp, array)
    _say(quiet, f"decoded {len(recon)} samples of shape {recon.shape[1:]}; written to {output}"
                + ("" if std is None else f", their standard deviations to {std}"))
    return recon


def read_history(model) -> dict[str, np.ndarray] | None:
    """The per-epoch history of a model directory as columns: its `history.csv`
    (written by `gfe train`), else the history `GFE.save` stored; None if neither."""
    path = Path(model) / "history.csv"
    if path.is_file():
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = load_model(model).settings.get("estimator", {}).get("history", [])
    if not rows:
        return None
    return {name: np.array([float(row[name]) for row in rows]) for name in rows[0]}


def plot_model(model, data, out, *, key=None, samples=50, show=8, quiet=False, device="cpu") -> list[Path]:
    """Write the figures of a trained model to the folder `out`: the first `show`
    samples of `data` with their reconstructions in the data's units (spectra
    overlaid, with residuals and ±2σ bands from the latents' uncertainty), the training curves (when the model has a
    history), and the latents of `samples` samples spread evenly over `data` on
    their principal axes, coloured by loss. Only those samples are read and
    encoded (on `device`), so the figures take seconds however large `data` is.
    Returns the paths written."""
    from . import plots

    if samples < 1 or show < 1:
        raise ConfigError(f"samples and show must be positive; got {samples} and {show}")
    loaded = load_model(model, device)
    settings = EncodeSettings.of_model(loaded)
    with open_samples(data, key) as source:
        inputs, total = model_input(loaded, source, settings), len(source)
        spread = np.linspace(0, total - 1, min(samples, total)).round().astype(np.int64)
        rows = np.union1d(np.arange(min(show, total)), spread)  # sorted: the shown ones first
        raw = source.take(rows)
        x, scale = inputs.prepare(raw)
        axis, axis_label = inputs.channels.model_axis, _axis_label(source.on_disk)
    encoding = encode_samples(loaded, x, settings, progress=not quiet, weights=inputs.mask)
    z, loss = encoding.z.detach().cpu().numpy(), encoding.loss.detach().cpu().numpy()
    shown = slice(0, min(show, total))
    name, out = Path(model).name, Path(out)
    recon = reconstruct(loaded, z, scale)[shown]  # decoded in one batch, as `gfe decode` does
    stds = None
    if plots.is_spectrum(recon.shape[1:]) and not settings.with_encoder:  # bands: the latents' uncertainty
        latent = laplace(loaded.decoder, settings.loss_function, torch.from_numpy(x[shown]), encoding.z[shown],
                         inputs.mask)
        stds = {"reconstructed": reconstruct_std(loaded, z[shown], latent.cov.cpu().numpy(),
                                                 None if scale is None else scale[shown])}
    written = [plots.plot_reconstructions(inputs.channels.select(raw[shown]), {"reconstructed": recon},
                                          out / "reconstructions.png", n=show, x=axis, stds=stds,
                                          xlabel=None if axis is None else axis_label,
                                          title=f"{name}: the first {shown.stop} samples of {data} and their "
                                                "reconstructions")]
    history = read_history(model)
    if history is not None:
        written.append(plots.plot_history(history, out / "training.png", title=f"{name}: training"))
    latent = np.isin(rows, spread)
    written.append(plots.plot_latent_space(z[latent], loss[latent], out / "latents.png",
                                           title=f"{name}: latents of {len(spread)} of the {total} samples "
                                                 f"of {data}"))
    _say(quiet, "wrote " + ", ".join(str(p) for p in written))
    return written


def _axis_label(dataset) -> str:
    """What a data file's axis measures, where gfe knows it (the energies of INS spectra)."""
    return "energy transfer E (meV)" if isinstance(dataset, SpectraDataset) else "axis of the data file"
