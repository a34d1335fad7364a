"""Array readers and built-in datasets. Nothing here downloads.

Every failure becomes a `DataError` that names the file (and line or key) and
says what was expected, chained to the library's own exception, so users see
one kind of error whatever the format.
"""

from __future__ import annotations

import contextlib
import csv
import functools
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
            return _NpyRows(path, file, shape, dtype), None
    return np.load(path, allow_pickle=False), None


AXIS = "axis"  # an array of this name beside the data in an .npz or HDF5 group is its axis


def _choose(path: Path, key, names: list[str], what: str) -> str:
    """Pick `key` among `names`, or the only name when no key is given (an
    axis beside the data does not count)."""
    if key is None:
        data = [name for name in names if name.rpartition("/")[2] != AXIS] or names
        if len(data) == 1:
            return data[0]
        if not data:
            raise DataError(f"{path} holds no {what}s")
        raise DataError(f"{path} holds {len(data)} {what}s; choose one with key (available: {', '.join(data)})")
    if key not in names:
        raise DataError(f"{path} has no {what} {key!r} (available: {', '.join(names) or 'none'})")
    return key


def _read_npz(path: Path, key, stack: contextlib.ExitStack):
    with np.load(path, allow_pickle=False) as archive:
        name = _choose(path, key, list(archive.files), "array")
        axis = archive[AXIS] if AXIS in archive.files and name != AXIS else None
        return archive[name], axis


def _read_h5(path: Path, key, stack: contextlib.ExitStack):
    """The dataset itself, read as it is indexed (the file stays open until
    `stack` closes), and the `axis` dataset beside it if there is one."""
    if key is not None:
        key = key.strip("/")  # HDF5 paths may be given absolute; visititems names are relative
    f = stack.enter_context(h5py.File(path, "r"))
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    name = _choose(path, key, names, "dataset")
    beside = f[name].parent.get(AXIS)
    axis = beside[()] if isinstance(beside, h5py.Dataset) and beside.name != f[name].name else None
    return f[name], axis


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _lines(path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each line that is not blank or a `#` comment,
    cells unquoted as the `csv` module reads them (`"1.5"` is 1.5; a quoted cell
    may hold the delimiter), without the empty last cell a trailing delimiter
    leaves when every line after the first (or the only line) has one."""
    lines = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            text = line.split("#", 1)[0]
            if text.strip():
                cells = next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter, skipinitialspace=True))
                lines.append((number, [cell.strip() for cell in cells]))
    if lines and all(cells[-1] == "" for _, cells in lines[1:] or lines):
        lines = [(number, cells[:-1] if cells[-1] == "" else cells) for number, cells in lines]
    return lines


def _monotonic(values: np.ndarray | None) -> bool:
    """Strictly increasing or decreasing, over at least two values: what an axis is."""
    if values is None or len(values) < 2:
        return False
    steps = np.diff(values)
    return bool((steps > 0).all() or (steps < 0).all())


def _numbers(cells: list[str]) -> np.ndarray | None:
    try:
        return np.array([float(cell) for cell in cells])
    except ValueError:
        return None


def _header(path: Path, lines: list[tuple[int, list[str]]]) -> tuple[int, int, np.ndarray | None]:
    """(header lines, index columns, the axis or None) of a delimited file, by
    the rules in `_read_delimited`."""
    number, head = lines[0]
    rows = [cells for _, cells in lines[1:]]
    width = len(rows[0]) if rows else len(head)  # the data rows' (a ragged row is reported later)
    values = _numbers(head)
    if values is not None:  # a line of numbers: the axis, or a sample
        if width == len(head) + 1:
            return 1, 1, values
        if not rows or width != len(head) or not _monotonic(values):
            return 0, 0, None
        if all(len(cells) == width and _monotonic(_numbers(cells)) for cells in rows):
            raise DataError(
                f"{path}: line {number} and every line after it are strictly monotonic, so line {number} could be "
                f"the axis or a sample. To read it as the axis, start it with an empty cell or a text cell naming "
                f"the axis (e.g. 'wavenumber,{head[0]},{head[1]},...'); to read it as a sample, put a header line "
                "of column names before it")
        return 1, 0, values
    axis = _numbers(head[1:]) if len(head) > 1 else None
    named = head[0] != "" and axis is not None  # text, then numbers: an axis, or a named sample
    if (named and not _monotonic(axis)) or not any(head) or (
            head[0] != "" and all(cell == "" or _is_number(cell) for cell in head)):
        return 0, 0, None  # a data row: its error names the text or empty cell
    index = int(width == len(head) + 1 or (width == len(head) and (head[0] == "" or axis is not None)))
    if axis is not None and width - index != len(axis):
        raise DataError(f"{path}: the header (line {number}) gives {len(axis)} axis values after its first cell, "
                        f"but line {lines[1][0]} has {width} cells; give one axis value per data column")
    return 1, index, axis


def _read_delimited(path: Path, key, stack: contextlib.ExitStack, delimiter: str = ","):
    """Delimited numbers (CSV, or TSV with tabs), one sample per line, and the axis if the file gives one.

    - Blank lines and `#` comments are skipped; an empty last cell on every line
      (a trailing delimiter) is dropped. Cells may be quoted (`"1.5"`, `"wavenumber"`),
      as spreadsheets and `csv` writers quote them.
    - The first line is a header if any cell is text or its first cell is empty
      (pandas' `to_csv`). Its cells after the first are the axis if they are all
      numbers (strictly monotonic ones after a text cell, which names the index
      column or the axis) and as many as the data columns; else column names.
    - A first line of numbers is the axis if it is strictly monotonic and some line
      after it is not (or if every line after it has one more cell); if every line
      is strictly monotonic, the file is refused as ambiguous.
    - The first column is an index, and dropped whatever it holds, when every row has
      one more cell than the header, or as many with the header's first cell empty
      or followed by axis values.
    - Every other cell must be a number (`nan` is one; validation then reports it),
      and every row must have as many cells.
    """
    lines = _lines(path, delimiter)
    if not lines:
        raise DataError(f"{path} holds no data rows")
    header, index, axis = _header(path, lines)
    body = lines[header:]
    if not body:
        raise DataError(f"{path} holds no data rows")
    rows: list[np.ndarray] = []
    first, width = body[0][0], len(body[0][1])
    for number, cells in body:
        if len(cells) != width:
            raise DataError(f"{path}, line {number}: {len(cells)} values, but line {first} has "
                            f"{width}; every row must have the same number of values")
        row = _numbers(cells[index:])
        if row is None:
            column = next(c for c in range(index, len(cells)) if not _is_number(cells[c]))
            hint = (" (an empty cell: every data cell needs a number)" if cells[column] == "" else
                    " (if the first column names the samples, leave the header's first cell empty, adding a "
                    "header line if there is none)" if column == 0 else "")
            raise DataError(f"{path}, line {number}, column {column + 1}: {cells[column]!r} is not a number{hint}")
        rows.append(row)
    return np.stack(rows), axis


# Readers take (path, key, stack) and return (array, axis or None): the array,
# or an array-like read as it is indexed whose file stays open until the
# ExitStack `stack` closes.
_read_tsv = functools.partial(_read_delimited, delimiter="\t")
_READERS = {".npy": _read_npy, ".npz": _read_npz, ".h5": _read_h5, ".hdf5": _read_h5, ".csv": _read_delimited,
            ".tsv": _read_tsv, ".tab": _read_tsv}
_KEYED = (".npz", ".h5", ".hdf5")


def read_array(path, key: str | None = None) -> np.ndarray:
    """Read one numeric array from .npy, .npz, .h5/.hdf5, .csv or .tsv/.tab.

    `key` names the array in an .npz or the dataset path in an HDF5 file; it
    may be left out when the file holds exactly one (besides an `axis`).
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
    at a time; .npz and delimited text files are read whole."""
    with _open(path, key) as (array, _):
        yield array


@contextlib.contextmanager
def _open(path, key: str | None = None) -> Iterator[tuple]:
    """`open_array`'s array, and the axis the file gives (None if it gives none)."""
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
            array, axis = _READERS[suffix](path, key, stack)
        except DataError:
            raise
        except READ_ERRORS as err:
            raise DataError(f"cannot read {path}: {err}") from err
        if not is_numeric(array.dtype):
            raise DataError(f"{path} holds {array.dtype} values; gfe needs integer or floating-point numbers")
        yield array, axis


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
        with _open(name, key) as (raw, axis):
            yield Samples(Dataset(raw, name, _scaling(raw), axis=axis))


def load_dataset(name_or_path: str, key: str | None = None) -> Dataset:
    """A built-in dataset ("digits", "mnist", "mnist=PATH") or an array file
    (see `open_samples`), read into memory.

    Files are returned as float32 unchanged, except uint8 arrays, which are
    divided by 255; rescale other data yourself to suit the loss.
    """
    with open_samples(name_or_path, key) as samples:
        return samples.load()
