"""Samples in memory or on disk, how they are split, and the checks data pass
before use. It sits below the readers (`gfe.data`, `gfe.ins.io`) and the engine
(`gfe.encode`), so that each builds on it without importing the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, DataError
from .losses import loss_spec


def is_numeric(dtype: np.dtype) -> bool:
    """Booleans, integers or reals: what a decoder can be fitted to."""
    return dtype.kind in "biuf"


# what reading a file or an array-like read from one may raise; callers make it a DataError
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile)


@dataclass(frozen=True)
class Dataset:
    """Samples as float32 `(N, *feature_shape)`, with a record of how raw values
    were mapped (`{"kind": "divide", "by": 255.0}` or `{"kind": "none"}`) so it
    can be stored with a model and inverted. `axis`, for 1-D samples, is the
    coordinate of each feature (a wavenumber, an energy...) when the file gives
    one, so that a model can record it and refuse data on another axis."""

    x: np.ndarray
    name: str
    scaling: dict
    axis: np.ndarray | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        if self.axis is None:
            return
        axis = np.asarray(self.axis, dtype=np.float64)
        features = self.x.shape[1:]
        if axis.ndim != 1 or features != axis.shape or not np.isfinite(axis).all():
            raise DataError(f"{self.name}: the axis must hold one finite number per feature; it has shape "
                            f"{axis.shape}, the samples have features {tuple(features)}")
        object.__setattr__(self, "axis", axis)


@dataclass(frozen=True)
class Samples:
    """A dataset whose samples are still on disk: `on_disk` is the `Dataset` (or
    `SpectraDataset`) with the raw array-like in place of `x` (an .npy file's
    rows, an HDF5 dataset, or an array), read and scaled only when indexed, so
    data larger than memory can be used a chunk or a batch at a time."""

    on_disk: Dataset

    def __len__(self) -> int:
        return self.on_disk.x.shape[0] if self.on_disk.x.ndim else 1

    def read(self, rows=()) -> np.ndarray:
        """Rows (a slice, increasing row numbers, or `()` for all) as float32, scaled."""
        try:
            raw = np.asarray(self.on_disk.x[rows])
        except READ_ERRORS as err:
            raise DataError(f"cannot read {self.on_disk.name}: {err}") from err
        scaling = self.on_disk.scaling
        with np.errstate(over="ignore"):  # values beyond float32 become inf, which validation reports
            return (raw / scaling["by"] if scaling["kind"] == "divide" else raw).astype(np.float32)

    def take(self, index) -> np.ndarray:
        """Rows `index` in any order: read in increasing order (as HDF5 needs),
        as one slice when they are consecutive."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) == 0:
            return self.read(slice(0, 0))
        if np.array_equal(index, np.arange(index[0], index[0] + len(index))):
            return self.read(slice(index[0], index[0] + len(index)))
        unique, inverse = np.unique(index, return_inverse=True)
        return self.read(unique)[inverse]

    def chunks(self, rows: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """`(first row, samples)` of consecutive chunks of up to `rows` samples
        from `start` to `stop`; everything at once when the array has no rows to
        split (so that validation reports its shape)."""
        if self.on_disk.x.ndim < 2 or self.on_disk.x.shape[0] == 0:
            yield 0, self.read()
            return
        stop = len(self) if stop is None else stop
        for lo in range(start, stop, rows):
            yield lo, self.read(slice(lo, min(lo + rows, stop)))

    def load(self) -> Dataset:
        """The whole dataset in memory."""
        return dataclasses.replace(self.on_disk, x=self.read())


@contextlib.contextmanager
def rows_named(name: str, start: int, stop: int, total: int) -> Iterator[None]:
    """Make a `DataError` raised for samples `start:stop` of `total` name them:
    positions in its message count from the chunk's start."""
    try:
        yield
    except DataError as err:
        if (start, stop) == (0, total):
            raise
        raise DataError(f"{name}, samples {start} to {stop - 1}: {err}") from err


CHECK_ROWS = 4096  # samples per chunk when a file is checked without being loaded


class SampleRows:
    """Rows `index` of `samples` (all, in order, by default), read and passed
    through `prepare` only by `read`: training on data larger than memory holds
    one batch at a time. Indexing gives a view (so `split` works unchanged)."""

    def __init__(self, samples: Samples, prepare, index: np.ndarray | None = None):
        self.samples, self.prepare = samples, prepare
        self.index = np.arange(len(samples)) if index is None else index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> SampleRows:
        return SampleRows(self.samples, self.prepare, self.index[key if isinstance(key, slice) else np.asarray(key)])

    def read(self) -> np.ndarray:
        return self.prepare(self.samples.take(self.index))

    def check(self) -> None:
        """Read every row once, a chunk at a time, so bad data are reported
        before training starts rather than in the middle of it."""
        for _ in row_chunks(self):
            pass


def row_chunks(x: np.ndarray | SampleRows, rows: int = CHECK_ROWS) -> Iterator[np.ndarray]:
    """The rows of `x` in order, `rows` at a time: `SampleRows` read (and prepared)
    a chunk at a time, errors naming the rows, so one pass over data larger than
    memory holds one chunk."""
    for lo in range(0, len(x), rows):
        hi = min(lo + rows, len(x))
        if isinstance(x, SampleRows):
            with rows_named(x.samples.on_disk.name, lo, hi, len(x)):
                chunk = x[lo:hi].read()
        else:
            chunk = x[lo:hi]
        yield chunk


def split(x: np.ndarray, n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and test subsets, the same for the same seed (of an
    array, or views of `SampleRows`)."""
    if n_train < 1 or n_test < 0:
        raise ConfigError(f"need n_train >= 1 and n_test >= 0; got {n_train} and {n_test}")
    if n_train + n_test > len(x):
        raise DataError(f"cannot take {n_train} training and {n_test} test samples from {len(x)}")
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order[:n_train]], x[order[n_train:n_train + n_test]]


def same_axis(u: np.ndarray | None, v: np.ndarray | None) -> bool:
    """Whether two axes (or grids) are the same, up to float32 rounding."""
    if u is None or v is None:
        return u is v
    return u.shape == v.shape and bool(np.allclose(u, v, rtol=1e-6, atol=1e-9))


def describe_axis(axis: np.ndarray) -> str:
    return f"{len(axis)} values {axis[0]:g}..{axis[-1]:g}" if len(axis) else "no values"


def check_same_axis(expected: np.ndarray, got: np.ndarray, names: tuple[str, str]) -> None:
    """Raise `DataError` unless two feature axes agree: a model maps latents to
    the axis it was trained on, so data on another would be compared channel
    by channel with the wrong wavenumbers (or energies...)."""
    if not same_axis(expected, got):
        raise DataError(f"the axes differ: {names[0]} have {describe_axis(expected)}, {names[1]} has "
                        f"{describe_axis(got)}; interpolate the data onto the model's axis, or train a model "
                        "on this one")


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape without size-1 axes, for comparing (1, 28, 28) with (28, 28)."""
    return tuple(n for n in shape if n != 1)


def validate_data(x, *, feature_shape=None, loss: str | None = None, dtype=np.float32) -> np.ndarray:
    """Check samples `(N, *features)` before use and return them as `dtype`, C-contiguous.

    A flat `(N, prod(shape))` array is reshaped to `feature_shape` and vice versa
    (likewise for size-1 axes), but other shapes are not guessed: a single sample
    needs its batch axis.
    """
    spec = None if loss is None else loss_spec(loss)
    x = np.asarray(x)
    if not is_numeric(x.dtype):
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
    problem = None if spec is None else spec.data_error(float(x.min()), float(x.max()))
    if problem is not None:
        raise DataError(problem)
    return x
