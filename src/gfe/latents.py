"""Latents on disk: the encodings plus per-sample statistics and provenance.

`.h5` holds everything (datasets `z`, `loss`, `steps`, `nfe`, `status`, `t`; the
provenance as JSON in the `provenance` attribute; with `gfe encode --uncertainty`
also `z_cov`, `z_std`, `z_std_status` and `noise_std`, `gfe.uncertainty`), `.npz` holds the same arrays
plus the provenance JSON as a 0-d string array `provenance`, and `.npy` holds
the latents alone, with the provenance in a JSON sidecar `NAME.npy.json` written
after it (with the .npy's digest, so a sidecar left beside other latents is
caught). Every write is atomic, and `latents_writer` writes a chunk of samples
at a time, so memory does not grow with their number.
Provenance names the model's weights digest, so decoding latents with another
model is refused, and the axis of the features the latents decode to.
"""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import torch

from .data import read_array
from .encode import Encoding
from .errors import DataError
from .persist import atomic_path, atomic_write_text, file_sha256, gfe_version
from .solvers import Status

FORMATS = (".h5", ".hdf5", ".npz", ".npy")
_ARRAYS = tuple(f.name for f in fields(Encoding))


def provenance(*, model_config: dict | None, settings: dict, input_path=None, input_sha256=None,
               axis=None) -> dict:
    """What produced a latents file: model digest, encode settings, versions, input,
    and the axis of the model's features (None if the data have none)."""
    return {
        "format": "gfe-latents",
        "gfe_version": gfe_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "model_weights_sha256": None if model_config is None else model_config["weights_sha256"],
        "encode_settings": settings,
        "input": None if input_path is None else str(input_path),
        "input_sha256": input_sha256,
        "axis": None if axis is None else np.asarray(axis).tolist(),
    }


def latents_path(path) -> Path:
    """`path` as a latents file name, refused early (before any encoding work)
    if its format is not one gfe writes."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"cannot write latents to {path}: use one of {', '.join(FORMATS)}")
    return path


class NpyAppender:
    """An .npy file written in order a chunk of rows at a time: the header (with
    the total row count) before the first chunk, each chunk straight after the
    last, so nothing but the chunk is held in memory."""

    def __init__(self, path: Path, rows: int):
        self.file, self.rows, self.written = open(path, "wb"), rows, 0

    def append(self, chunk: np.ndarray) -> None:
        if self.written == 0:
            header = {"descr": np.lib.format.dtype_to_descr(chunk.dtype), "fortran_order": False,
                      "shape": (self.rows, *chunk.shape[1:])}
            np.lib.format.write_array_header_1_0(self.file, header)
        self.file.write(np.ascontiguousarray(chunk).tobytes())
        self.written += len(chunk)

    def close(self) -> None:
        self.file.close()


class LatentsWriter:
    """Appends encodings to a latents file being written (see `latents_writer`).
    `meta`, the provenance, is written when the file is finished, so it can
    still be completed (e.g. with the time spent) while chunks are appended."""

    def __init__(self, suffix: str, tmp: Path, rows: int, meta: dict | None, stack: contextlib.ExitStack):
        self.suffix, self.tmp, self.rows, self.meta, self.stack = suffix, tmp, rows, dict(meta or {}), stack
        self.written = 0
        self.arrays: dict = {}  # name -> HDF5 dataset or NpyAppender, made at the first chunk
        if suffix in (".h5", ".hdf5"):
            self.h5 = stack.enter_context(h5py.File(tmp, "w"))
        elif suffix == ".npz":  # one .npy per array, zipped together at the end
            self.parts = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tmp.parent, prefix=".latents.")))

    def _store(self, name: str, chunk: np.ndarray):
        if self.suffix in (".h5", ".hdf5"):
            return self.h5.create_dataset(name, shape=(self.rows, *chunk.shape[1:]), dtype=chunk.dtype)
        store = NpyAppender(self.tmp if self.suffix == ".npy" else self.parts / f"{name}.npy", self.rows)
        self.stack.callback(store.close)
        return store

    def append(self, encoding: Encoding, extra: dict | None = None) -> None:
        """Write the next `len(encoding)` samples; `extra` per-sample arrays (e.g.
        `scale`, the normalisation) join .h5 and .npz, the same names each time."""
        arrays = {name: getattr(encoding, name).detach().cpu().numpy() for name in _ARRAYS}
        arrays = {"z": arrays["z"]} if self.suffix == ".npy" else {**arrays, **(extra or {})}
        if self.arrays and set(arrays) != set(self.arrays):
            raise ValueError(f"chunk arrays {sorted(arrays)} differ from the first chunk's {sorted(self.arrays)}")
        if self.written + len(encoding) > self.rows:
            raise ValueError(f"more than the {self.rows} samples announced")
        for name, chunk in arrays.items():
            if name not in self.arrays:
                self.arrays[name] = self._store(name, chunk)
            store = self.arrays[name]
            if isinstance(store, NpyAppender):
                store.append(chunk)
            else:
                store[self.written : self.written + len(chunk)] = chunk
        self.written += len(encoding)

    def finish(self) -> None:
        if self.written != self.rows:
            raise ValueError(f"{self.written} samples written of the {self.rows} announced")
        if self.suffix in (".h5", ".hdf5"):
            self.h5.attrs["status_labels"] = json.dumps({int(s): s.label for s in Status})
            self.h5.attrs["provenance"] = json.dumps(self.meta)
            return
        for store in self.arrays.values():
            store.close()
        if self.suffix == ".npz":  # what np.savez writes: stored (uncompressed) .npy members
            np.save(self.parts / "provenance.npy", np.array(json.dumps(self.meta)))  # a string: no pickle
            with zipfile.ZipFile(self.tmp, "w", allowZip64=True) as archive:
                for name in (*self.arrays, "provenance"):
                    archive.write(self.parts / f"{name}.npy", f"{name}.npy")


@contextlib.contextmanager
def latents_writer(path, rows: int, meta: dict | None = None) -> Iterator[LatentsWriter]:
    """Write a latents file of `rows` samples a chunk at a time: yields a
    `LatentsWriter` to `append` encodings to, in order. They go to a temporary
    file beside `path` that replaces it only when the block ends without error
    with every sample written, so a failed or killed run leaves no partial
    latents file under the real name."""
    path = latents_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, contextlib.ExitStack() as stack:
        writer = LatentsWriter(path.suffix.lower(), tmp, rows, meta, stack)
        yield writer
        writer.finish()
    if path.suffix.lower() == ".npy":
        atomic_write_text(sidecar_path(path), json.dumps({**writer.meta, "latents_sha256": file_sha256(path)},
                                                         indent=2) + "\n")


def sidecar_path(path) -> Path:
    """Where the provenance of `.npy` latents goes: `NAME.npy.json` beside them."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _sidecar(path: Path) -> dict:
    """The provenance in the sidecar of `.npy` latents, or {} without one. A
    sidecar whose digest is not the .npy's describes other latents: refused."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return {}
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.pop("latents_sha256", None) != file_sha256(path):
        raise DataError(f"{sidecar} does not describe {path} (its latents sha256 differs): the .npy was replaced "
                        f"after gfe wrote it; delete {sidecar.name} if these latents are not gfe's")
    return meta


def write_latents(path, encoding: Encoding, meta: dict | None = None, extra: dict | None = None) -> Path:
    """Write `encoding` to `.h5`/`.hdf5`, `.npz` or `.npy` (latents only).
    `extra` per-sample arrays (e.g. `scale`, the normalisation) join .h5 and .npz."""
    with latents_writer(path, len(encoding), meta) as writer:
        writer.append(encoding, extra)
    return latents_path(path)


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
    holding an (N, d) array), and its provenance (empty if it has none: an
    `.npy` without sidecar, say)."""
    path = Path(path)
    suffix = path.suffix.lower()
    meta: dict = {}
    try:
        if suffix in (".h5", ".hdf5") and path.is_file():
            with h5py.File(path, "r") as f:
                meta = json.loads(f.attrs.get("provenance", "{}"))
        elif suffix == ".npz" and path.is_file():
            with np.load(path, allow_pickle=False) as archive:
                if "provenance" in archive.files:
                    meta = json.loads(str(archive["provenance"]))
        elif suffix == ".npy" and path.is_file():
            meta = _sidecar(path)
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if not isinstance(meta, dict):
        raise DataError(f"{path} holds provenance that is not a JSON object")
    key = "z" if suffix in (".h5", ".hdf5", ".npz") else None
    z = read_array(path, key)
    if z.ndim != 2:
        raise DataError(f"latents in {path} have shape {z.shape}; expected (n_samples, latent_dim)")
    return z, meta


def read_per_sample(path, name: str, n: int) -> np.ndarray | None:
    """The per-sample array `name` stored with `n` latents (.h5 or .npz), or None
    when the file has none (or cannot hold one: .npy)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".npz") or not path.is_file():
        return None
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                array = archive[name] if name in archive.files else None
        else:
            with h5py.File(path, "r") as f:
                array = f[name][()] if name in f else None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if array is not None and array.shape[:1] != (n,):
        raise DataError(f"{path}: {name} has shape {array.shape}; expected one entry per latent ({n}, ...)")
    return array


def read_scale(path, n: int) -> np.ndarray | None:
    """The per-sample normalisation `scale` stored with latents (.h5 or .npz),
    or None when the latents were encoded without one."""
    scale = read_per_sample(path, "scale", n)
    if scale is not None and scale.ndim != 1:
        raise DataError(f"{path}: scale has shape {scale.shape}; expected one value per latent ({n},)")
    return scale


def read_covariance(path, n: int, d: int) -> np.ndarray:
    """The latents' covariances `z_cov` (n, d, d) written by `gfe encode --uncertainty`."""
    cov = read_per_sample(path, "z_cov", n)
    if cov is None:
        raise DataError(f"{path} holds no latent covariances (z_cov); encode with 'gfe encode --uncertainty' "
                        "to an .h5 or .npz file")
    if cov.shape != (n, d, d):
        raise DataError(f"{path}: z_cov has shape {cov.shape}; expected ({n}, {d}, {d})")
    return cov
