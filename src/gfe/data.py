"""Array readers and built-in datasets. Nothing here downloads.

Every failure becomes a `DataError` that names the file (and line or key) and
says what was expected, chained to the library's own exception, so users see
one kind of error whatever the format.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from .errors import DataError
from .samples import READ_ERRORS, Dataset, Samples, is_numeric

MNIST_DEFAULT = Path("..", "shared", "data", "mnist-10k.npz")
MNIST_ENV = "GFE_MNIST"


class _NpyRows:
    """An .npy file whose rows are read only when indexed (seek and read). Unlike
    a memory map, it keeps no pages resident once a slice is dropped, and a file
    truncated meanwhile gives a `DataError` instead of killing the process (SIGBUS)."""

    def __init__(self, path: Path, file, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.file, self.shape, self.dtype = path, file, shape, dtype
        self.ndim = len(shape)
        self.offset = file.tell()
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize
        expected = self.offset + shape[0] * self.row_bytes
        if path.stat().st_size < expected:
            raise DataError(f"{path} is truncated: its header promises {expected} bytes, "
                            f"the file has {path.stat().st_size}")

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        rows = np.empty((max(hi - lo, 0), *self.shape[1:]), self.dtype)
        view, done = memoryview(rows).cast("B"), 0
        self.file.seek(self.offset + lo * self.row_bytes)
        while done < len(view):  # unbuffered reads may return less than asked
            got = self.file.readinto(view[done:])
            if not got:
                raise DataError(f"{self.path} was truncated while it was being read")
            done += got
        return rows

    def __getitem__(self, index) -> np.ndarray:
        """`()` (everything), a slice of rows, or increasing row numbers."""
        if isinstance(index, tuple) and index == ():
            index = slice(None)
        if isinstance(index, slice):
            lo, hi, step = index.indices(self.shape[0])
            if step != 1:
                raise TypeError("only contiguous row slices are supported")
            return self._rows(lo, hi)
        return np.concatenate([self._rows(i, i + 1) for i in np.asarray(index)] or [self._rows(0, 0)])


def _read_npy(path: Path, key, stack: contextlib.ExitStack):
    """Rows read as they are indexed; arrays without rows, in Fortran order or
    with a header version without a public reader are loaded whole (never unpickled)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    file = stack.enter_context(open(path, "rb", buffering=0))  # no stale buffer if the file changes
    version = np.lib.format.read_magic(file)
    if version in readers:
        shape, fortran_order, dtype = readers[version](file)
        if shape and not fortran_order and not dtype.hasobject:
            return _NpyRows(path, file, shape, dtype)
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


def _read_npz(path: Path, key, stack: contextlib.ExitStack):
    with np.load(path, allow_pickle=False) as archive:
        return archive[_choose(path, key, list(archive.files), "array")]


def _read_h5(path: Path, key, stack: contextlib.ExitStack):
    """The dataset itself, read as it is indexed; the file stays open until `stack` closes."""
    if key is not None:
        key = key.strip("/")  # HDF5 paths may be given absolute; visititems names are relative
    f = stack.enter_context(h5py.File(path, "r"))
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return f[_choose(path, key, names, "dataset")]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, key, stack: contextlib.ExitStack):
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


# Readers take (path, key, stack) and return an array, or an array-like read as
# it is indexed whose file stays open until the ExitStack `stack` closes.
_READERS = {".npy": _read_npy, ".npz": _read_npz, ".h5": _read_h5, ".hdf5": _read_h5, ".csv": _read_csv}
_KEYED = (".npz", ".h5", ".hdf5")


def read_array(path, key: str | None = None) -> np.ndarray:
    """Read one numeric array from .npy, .npz, .h5/.hdf5 or .csv.

    `key` names the array in an .npz or the dataset path in an HDF5 file; it
    may be left out when the file holds exactly one.
    """
    with open_array(path, key) as array:
        try:
            return np.asarray(array[()])
        except READ_ERRORS as err:
            raise DataError(f"cannot read {path}: {err}") from err


@contextlib.contextmanager
def open_array(path, key: str | None = None) -> Iterator:
    """Like `read_array`, but yields the array unread (an .npy file's rows, the
    HDF5 dataset itself), so that a file larger than memory can be read a slice
    at a time; .npz and .csv files are read whole."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise DataError(f"cannot read {path}: unsupported file type {suffix or '(none)'!r}; "
                        f"supported: {', '.join(sorted(_READERS))}")
    if key is not None and suffix not in _KEYED:
        raise DataError(f"key {key!r} given for {path}, but only .npz and HDF5 files hold named arrays")
    with contextlib.ExitStack() as stack:
        try:
            array = _READERS[suffix](path, key, stack)
        except DataError:
            raise
        except READ_ERRORS as err:
            raise DataError(f"cannot read {path}: {err}") from err
        if not is_numeric(array.dtype):
            raise DataError(f"{path} holds {array.dtype} values; gfe needs integer or floating-point numbers")
        yield array


def _scaling(raw, by: float | None = None) -> dict:
    """Divide by `by`, or by 255 for uint8 images, or leave as is."""
    if by is None and raw.dtype == np.uint8:
        by = 255.0
    return {"kind": "none"} if by is None else {"kind": "divide", "by": by}


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


@contextlib.contextmanager
def open_samples(name_or_path: str, key: str | None = None) -> Iterator[Samples]:
    """A built-in dataset or an array file as `Samples`, unread: .npy files and
    HDF5 datasets are read as they are indexed, and stay open until the block ends.

    An HDF5 file with a `spectra` dataset (and no `key`) is an INS spectra file
    (`gfe.ins.open_spectra`), so its grids and mask come along.
    """
    name = str(name_or_path)
    from .ins.io import is_spectra_file, open_spectra  # here: gfe.ins loads its generator, which `gfe --help` need not

    if key is None and is_spectra_file(name):
        with open_spectra(name) as samples:
            yield samples
    elif name == "digits":
        from sklearn.datasets import load_digits  # bundled with scikit-learn, offline

        images = load_digits().images
        yield Samples(Dataset(images, "digits", _scaling(images, by=16.0)))
    elif name == "mnist" or name.startswith("mnist="):
        with open_array(_mnist_path(name.partition("=")[2]), key or "images") as raw:
            yield Samples(Dataset(raw, "mnist", _scaling(raw)))
    else:
        with open_array(name, key) as raw:
            yield Samples(Dataset(raw, name, _scaling(raw)))


def load_dataset(name_or_path: str, key: str | None = None) -> Dataset:
    """A built-in dataset ("digits", "mnist", "mnist=PATH") or an array file
    (see `open_samples`), read into memory.

    Files are returned as float32 unchanged, except uint8 arrays, which are
    divided by 255; rescale other data yourself to suit the loss.
    """
    with open_samples(name_or_path, key) as samples:
        return samples.load()
