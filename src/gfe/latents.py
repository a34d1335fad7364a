"""Latents on disk: the encodings plus per-sample statistics and provenance.

`.h5` holds everything (datasets `z`, `loss`, `steps`, `nfe`, `status`, `t`; the
provenance as JSON in the `provenance` attribute), `.npz` holds the same arrays
without provenance, and `.npy` holds the latents alone. Every write is atomic.
Provenance names the model's weights digest, so decoding latents with another
model is refused.
"""

from __future__ import annotations

import json
import platform
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import torch

from .encode import Encoding
from .errors import DataError
from .persist import atomic_path, gfe_version
from .solvers import Status

FORMATS = (".h5", ".hdf5", ".npz", ".npy")
_ARRAYS = tuple(f.name for f in fields(Encoding))


def provenance(*, model_config: dict | None, settings: dict, input_path=None, input_sha256=None) -> dict:
    """What produced a latents file: model digest, encode settings, versions, input."""
    return {
        "format": "gfe-latents",
        "gfe_version": gfe_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "model_weights_sha256": None if model_config is None else model_config["weights_sha256"],
        "encode_settings": settings,
        "input": None if input_path is None else str(input_path),
        "input_sha256": input_sha256,
    }


def latents_path(path) -> Path:
    """`path` as a latents file name, refused early (before any encoding work)
    if its format is not one gfe writes."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"cannot write latents to {path}: use one of {', '.join(FORMATS)}")
    return path


def write_latents(path, encoding: Encoding, meta: dict | None = None, extra: dict | None = None) -> Path:
    """Write `encoding` to `.h5`/`.hdf5`, `.npz` or `.npy` (latents only).
    `extra` per-sample arrays (e.g. `scale`, the normalisation) join .h5 and .npz."""
    path = latents_path(path)
    suffix = path.suffix.lower()
    arrays = {name: getattr(encoding, name).detach().cpu().numpy() for name in _ARRAYS}
    arrays.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            np.save(tmp, arrays["z"])
        elif suffix == ".npz":
            np.savez(tmp, **arrays)
        else:
            with h5py.File(tmp, "w") as f:
                for name, array in arrays.items():
                    f.create_dataset(name, data=array)
                f.attrs["status_labels"] = json.dumps({int(s): s.label for s in Status})
                f.attrs["provenance"] = json.dumps(meta or {})
    return path


def read_encoding(path) -> tuple[Encoding, dict]:
    """The full `Encoding` (latents and per-sample statistics) of an `.h5` file
    written by `write_latents`, and its provenance."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in _ARRAYS if name not in f]
            if missing:
                raise DataError(f"{path} lacks the datasets {missing}; is it a latents file written by gfe?")
            encoding = Encoding(*(torch.from_numpy(f[name][()]) for name in _ARRAYS))
            meta = json.loads(f.attrs.get("provenance", "{}"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    return encoding, meta


def read_latents(path) -> tuple[np.ndarray, dict]:
    """The latents `z` of a file written by `write_latents` (or any array file
    holding an (N, d) array), and its provenance (empty if it has none)."""
    from .data import read_array

    path = Path(path)
    suffix = path.suffix.lower()
    meta: dict = {}
    if suffix in (".h5", ".hdf5") and path.is_file():
        try:
            with h5py.File(path, "r") as f:
                meta = json.loads(f.attrs.get("provenance", "{}"))
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read {path}: {err}") from err
    key = "z" if suffix in (".h5", ".hdf5", ".npz") else None
    z = read_array(path, key)
    if z.ndim != 2:
        raise DataError(f"latents in {path} have shape {z.shape}; expected (n_samples, latent_dim)")
    return z, meta


def read_scale(path, n: int) -> np.ndarray | None:
    """The per-sample normalisation `scale` stored with latents (.h5 or .npz),
    or None when the latents were encoded without one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".npz") or not path.is_file():
        return None
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                scale = archive["scale"] if "scale" in archive.files else None
        else:
            with h5py.File(path, "r") as f:
                scale = f["scale"][()] if "scale" in f else None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if scale is not None and scale.shape != (n,):
        raise DataError(f"{path}: scale has shape {scale.shape}; expected one value per latent ({n},)")
    return scale
