"""Array readers, built-in datasets and input validation. Nothing here downloads.

Every failure becomes a `DataError` that names the file (and line or key) and
says what was expected, chained to the library's own exception, so users see
one kind of error whatever the format.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import ConfigError, DataError
from .losses import LOSSES

MNIST_DEFAULT = Path("..", "shared", "data", "mnist-10k.npz")
MNIST_ENV = "GFE_MNIST"


def _is_numeric(dtype: np.dtype) -> bool:
    """Booleans, integers or reals: what a decoder can be fitted to."""
    return dtype.kind in "biuf"


def _read_npy(path: Path, key):
    return np.load(path, allow_pickle=False)


def _choose(path: Path, key, names: list[str], what: str) -> str:
    """Pick `key` among `names`, or the only name when no key is given."""
    if key is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise DataError(f"{path} holds no {what}s")
        raise DataError(f"{path} holds {len(names)} {what}s; choose one with key (available: {', '.join(names)})")
    if key not in names:
        raise DataError(f"{path} has no {what} {key!r} (available: {', '.join(names) or 'none'})")
    return key


def _read_npz(path: Path, key):
    with np.load(path, allow_pickle=False) as archive:
        return archive[_choose(path, key, list(archive.files), "array")]


def _read_h5(path: Path, key):
    if key is not None:
        key = key.strip("/")  # HDF5 paths may be given absolute; visititems names are relative
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        return f[_choose(path, key, names, "dataset")][()]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, key):
    """Comma-separated numbers, one sample per line; blank lines and `#` comments
    are skipped, and so is one header line before the data if it holds text."""
    rows: list[np.ndarray] = []
    first = None  # (line number, width) of the first data row
    header_seen = False
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            cells = [cell.strip() for cell in text.split(",")]
            try:
                row = np.array([float(cell) for cell in cells])
            except ValueError:
                bad = [(column, cell) for column, cell in enumerate(cells, start=1) if not _is_number(cell)]
                if first is None and not header_seen and any(cell for _, cell in bad):
                    header_seen = True
                    continue
                column, cell = bad[0]
                raise DataError(f"{path}, line {number}, column {column}: {cell!r} is not a number") from None
            if first is None:
                first = (number, len(row))
            elif len(row) != first[1]:
                raise DataError(f"{path}, line {number}: {len(row)} values, but line {first[0]} has "
                                f"{first[1]}; every row must have the same number of values")
            rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no data rows")
    return np.stack(rows)


_READERS = {".npy": _read_npy, ".npz": _read_npz, ".h5": _read_h5, ".hdf5": _read_h5, ".csv": _read_csv}
_KEYED = (".npz", ".h5", ".hdf5")


def read_array(path, key: str | None = None) -> np.ndarray:
    """Read one numeric array from .npy, .npz, .h5/.hdf5 or .csv.

    `key` names the array in an .npz or the dataset path in an HDF5 file; it
    may be left out when the file holds exactly one.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise DataError(f"cannot read {path}: unsupported file type {suffix or '(none)'!r}; "
                        f"supported: {', '.join(sorted(_READERS))}")
    if key is not None and suffix not in _KEYED:
        raise DataError(f"key {key!r} given for {path}, but only .npz and HDF5 files hold named arrays")
    try:
        array = np.asarray(_READERS[suffix](path, key))
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if not _is_numeric(array.dtype):
        raise DataError(f"{path} holds {array.dtype} values; gfe needs integer or floating-point numbers")
    return array


@dataclass(frozen=True)
class Dataset:
    """Samples as float32 `(N, *feature_shape)`, with a record of how raw values
    were mapped (`{"kind": "divide", "by": 255.0}` or `{"kind": "none"}`) so it
    can be stored with a model and inverted."""

    x: np.ndarray
    name: str
    scaling: dict


def _from_raw(raw: np.ndarray, name: str, by: float | None = None) -> Dataset:
    """Divide by `by` (or by 255 for uint8 images) and record it."""
    if by is None and raw.dtype == np.uint8:
        by = 255.0
    if by is None:
        return Dataset(raw.astype(np.float32), name, {"kind": "none"})
    return Dataset((raw / by).astype(np.float32), name, {"kind": "divide", "by": by})


def _mnist_path(explicit: str) -> Path:
    """The MNIST file: an explicit path, else $GFE_MNIST, else the shared default."""
    if explicit:
        path, origin = Path(explicit), "given as mnist=PATH"
    elif os.environ.get(MNIST_ENV):
        path, origin = Path(os.environ[MNIST_ENV]), f"from ${MNIST_ENV}"
    else:
        path, origin = MNIST_DEFAULT, f"the default, relative to {Path.cwd()}"
    if not path.is_file():
        raise DataError(
            f"MNIST not found at {path} ({origin}); gfe never downloads it. Point to a local "
            f"mnist-10k.npz with {MNIST_ENV}=/path/to/mnist-10k.npz or 'mnist=/path/to/mnist-10k.npz'")
    return path


def load_dataset(name_or_path: str, key: str | None = None) -> Dataset:
    """A built-in dataset ("digits", "mnist", "mnist=PATH") or an array file.

    Files are returned as float32 unchanged, except uint8 arrays, which are
    divided by 255; rescale other data yourself to suit the loss. An HDF5 file
    with a `spectra` dataset (and no `key`) is an INS spectra file: it is read
    with `gfe.ins.load_spectra`, so its grids and mask come along.
    """
    name = str(name_or_path)
    from .ins.io import is_spectra_file, load_spectra  # here: gfe.ins.io builds on this module

    if key is None and is_spectra_file(name):
        return load_spectra(name)
    if name == "digits":
        from sklearn.datasets import load_digits  # bundled with scikit-learn, offline

        return _from_raw(load_digits().images, "digits", by=16.0)
    if name == "mnist" or name.startswith("mnist="):
        path = _mnist_path(name.partition("=")[2])
        return _from_raw(read_array(path, key or "images"), "mnist")
    return _from_raw(read_array(name, key), name)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape without size-1 axes, for comparing (1, 28, 28) with (28, 28)."""
    return tuple(n for n in shape if n != 1)


def validate_data(x, *, feature_shape=None, loss: str | None = None, dtype=np.float32) -> np.ndarray:
    """Check samples `(N, *features)` before use and return them as `dtype`, C-contiguous.

    A flat `(N, prod(shape))` array is reshaped to `feature_shape` and vice versa
    (likewise for size-1 axes), but other shapes are not guessed: a single sample
    needs its batch axis.
    """
    if loss is not None and loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {list(LOSSES)}")
    x = np.asarray(x)
    if not _is_numeric(x.dtype):
        raise DataError(f"data must be numeric; got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(f"data must have shape (n_samples, *features); got shape {x.shape}. "
                        "Add a batch axis for a single sample (x[None]) or a feature axis for "
                        "scalars (x[:, None])")
    if x.shape[0] == 0:
        raise DataError(f"data are empty: 0 samples (shape {x.shape})")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"data are empty: 0 features per sample (shape {x.shape})")
    if feature_shape is not None:
        expected = tuple(int(n) for n in feature_shape)
        got = x.shape[1:]
        core_got, core_expected = _squeezed(got), _squeezed(expected)
        if math.prod(got) != math.prod(expected) or (
                core_got != core_expected and min(len(core_got), len(core_expected)) > 1):
            hint = " (a single sample needs a batch axis: x[None])" if x.shape == expected else ""
            raise DataError(f"data have feature shape {got}, but {expected} was expected{hint}")
        x = x.reshape(x.shape[0], *expected)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported next
        x = np.ascontiguousarray(x, dtype=dtype)
    finite = np.isfinite(x)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise DataError(f"data contain {int((~finite).sum())} non-finite values (NaN, inf, or too large "
                        f"for float32); the first is at index {first}")
    low, high = float(x.min()), float(x.max())
    if loss == "bce" and (low < 0 or high > 1):
        raise DataError(f"the bce loss needs data in [0, 1]; got min {low:g}, max {high:g}. "
                        "Rescale them (e.g. divide 8-bit images by 255) or use loss='mse'")
    if loss == "poisson" and low < 0:
        raise DataError(f"the poisson loss needs non-negative counts; got min {low:g}")
    return x


def split(x: np.ndarray, n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and test subsets, the same for the same seed."""
    if n_train < 1 or n_test < 0:
        raise ConfigError(f"need n_train >= 1 and n_test >= 0; got {n_train} and {n_test}")
    if n_train + n_test > len(x):
        raise DataError(f"cannot take {n_train} training and {n_test} test samples from {len(x)}")
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order[:n_train]], x[order[n_train:n_train + n_test]]
