"""File-to-file workflows behind the command line: train a model directory,
encode a data file to a latents file, decode latents to reconstructions.

They live in the library (not in `cli`) so scripts and notebooks can call them,
and the command line stays a thin parser.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from .data import load_dataset, split
from .encode import Encoding, encode
from .errors import ConfigError, DataError
from .latents import provenance, read_latents, write_latents
from .losses import link
from .models import Conv1dDecoder, Conv2dDecoder, MLPDecoder
from .persist import atomic_path, file_sha256, load_model
from .solvers import Status
from .train import TrainConfig, Trainer

DECODER_KINDS = {"mlp": MLPDecoder, "conv1d": Conv1dDecoder, "conv2d": Conv2dDecoder}
CHECKPOINTS = "checkpoints"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def train_model(data, out, *, key=None, method="gfe-amd", decoder="mlp", latent_dim=20, epochs=1, batch_size=5,
                optimizer="rmsprop", lr=5e-4, loss="bce", val_fraction=0.1, seed=0, encode_options=None,
                resume=False, quiet=False, gradient="approx") -> Trainer:
    """Train on the samples in `data` and write the model directory `out`.

    Checkpoints go to `out/checkpoints`; with `resume`, the run there continues
    (to `epochs` epochs) instead of a new one being started. Refuses to start
    over an existing run, so no work is lost by a mistyped command.
    """
    if decoder not in DECODER_KINDS:
        raise ConfigError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODER_KINDS)}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1); got {val_fraction}")
    dataset = load_dataset(data, key)
    n_val = int(round(val_fraction * len(dataset.x)))
    x_train, x_val = split(dataset.x, len(dataset.x) - n_val, n_val, seed=seed)
    out = Path(out)
    checkpoints = out / CHECKPOINTS
    progress = not quiet
    if resume:
        trainer = Trainer.resume(checkpoints, progress=progress)
        trainer.config = dataclasses.replace(trainer.config, epochs=epochs)
        _say(quiet, f"resuming {checkpoints} after epoch {len(trainer.history)} of {epochs}")
    else:
        if (checkpoints / "latest.json").exists():
            raise ConfigError(f"{out} already holds a training run; pass --resume to continue it, "
                              "or choose another --out")
        config = TrainConfig(method=method, latent_dim=latent_dim, epochs=epochs, batch_size=batch_size,
                             optimizer=optimizer, lr=lr, loss=loss, seed=seed,
                             encode_options=dict(encode_options or {}), gradient=gradient)
        torch.manual_seed(seed)
        model = DECODER_KINDS[decoder](latent_dim, dataset.x.shape[1:])
        trainer = Trainer(config, dataset.x.shape[1:], decoder=model, checkpoint_dir=checkpoints,
                          progress=progress)

    def report(_, record):
        _say(quiet, f"epoch {record.epoch}: train loss {record.train_loss:.4f}, validation loss "
                    f"{record.val_loss:.4f}, {record.seconds:.1f} s, {record.mean_steps:.1f} flow steps/sample")

    trainer.callbacks = (*trainer.callbacks, report)
    trainer.fit(x_train, x_val if n_val else None)
    trainer.save_model(out, extra_settings={"data": str(data), "scaling": dataset.scaling,
                                            "feature_shape": list(dataset.x.shape[1:])})
    trainer.write_history_csv(out / "history.csv")
    _say(quiet, f"model written to {out}")
    return trainer


def encode_file(model, data, output, *, key=None, options=None, quiet=False) -> Encoding:
    """Encode the samples of `data` with the model in `model` and write `output`."""
    loaded = load_model(model)
    dataset = load_dataset(data, key)
    settings = {**loaded.settings.get("encode", {}), **(options or {})}
    if loaded.encoder is not None and not options:
        encoding = _encode_with_encoder(loaded, dataset.x, settings["loss"])
    else:
        encoding = encode(loaded.decoder, dataset.x, progress=not quiet, **settings)
    digest = file_sha256(data) if Path(str(data)).is_file() else None
    meta = provenance(model_config=loaded.config, settings=settings, input_path=data, input_sha256=digest)
    write_latents(output, encoding, meta)
    summary = encoding.summary()
    _say(quiet, f"encoded {summary['samples']} samples: mean loss {summary['mean_loss']:.5g}, "
                f"{summary['mean_steps']:.1f} steps and {summary['mean_nfe']:.1f} decoder evaluations per "
                f"sample, status {summary['status']}; written to {output}")
    return encoding


def _encode_with_encoder(loaded, x: np.ndarray, loss_name: str) -> Encoding:
    """An autoencoder model's latents come from its encoder (one forward pass)."""
    from .losses import Loss

    with torch.no_grad():
        xt = torch.from_numpy(x)
        z = loaded.encoder(xt)
        loss = Loss(loss_name)(loaded.decoder(z), xt, z)
    n = len(x)
    zeros = torch.zeros(n, dtype=torch.long)
    return Encoding(z, loss, zeros, zeros, torch.full((n,), int(Status.CONVERGED)), torch.zeros(n, dtype=torch.float64))


def decode_file(model, latents, output, *, quiet=False) -> np.ndarray:
    """Decode the latents in `latents` with `model` and write reconstructions (.npy)."""
    loaded = load_model(model)
    z, meta = read_latents(latents)
    made_by = meta.get("model_weights_sha256")
    if made_by and made_by != loaded.config["weights_sha256"]:
        raise DataError(f"{latents} was encoded with another model (weights sha256 {made_by[:12]}...), "
                        f"not {model} ({loaded.config['weights_sha256'][:12]}...); decode it with that model")
    latent_dim = loaded.decoder.latent_dim
    if z.shape[1] != latent_dim:
        raise DataError(f"{latents} holds {z.shape[1]}-dimensional latents; {model} expects {latent_dim}")
    if not np.isfinite(z).all():
        raise DataError(f"{latents} holds non-finite latents")
    with torch.no_grad():
        out = link(loaded.settings.get("encode", {}).get("loss", "bce"),
                   loaded.decoder(torch.from_numpy(np.asarray(z, dtype=np.float32))))
    recon = out.numpy()
    output = Path(output)
    if output.suffix.lower() != ".npy":
        raise DataError(f"reconstructions are written as .npy; got {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        np.save(tmp, recon)
    _say(quiet, f"decoded {len(recon)} samples of shape {recon.shape[1:]}; written to {output}")
    return recon
