"""Which of the data's features (channels) a model uses, and on what axis.

`gfe train --range LO:HI` keeps the channels whose axis value (or, without an
axis, feature index) lies in a range; `--weights FILE` weighs each channel in
the loss (0 masks it). A model records both with the data's axis
(`Channels.record`), so that encoding and plots select and weigh the same
channels of full-width data, and refuse data on another axis.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import read_array
from .errors import ConfigError, DataError
from .samples import Dataset, check_same_axis, describe_axis


def parse_ranges(ranges) -> tuple[tuple[float, float], ...] | None:
    """`"LO:HI,LO:HI"` or (LO, HI) pairs as (low, high) pairs; None for None. A
    bound left out (`"950:"`, `":1550"`; None in a pair) is open: -inf or inf."""
    if ranges is None:
        return None

    def bound(value, open_end: float) -> float:
        return open_end if value is None or (isinstance(value, str) and not value.strip()) else float(value)

    try:
        parts = [part.split(":") if isinstance(ranges, str) else tuple(part)
                 for part in (ranges.split(",") if isinstance(ranges, str) else ranges)]
        pairs = [(bound(part[0], -math.inf), bound(part[1], math.inf)) for part in parts if len(part) == 2]
        good = bool(pairs) and len(pairs) == len(parts) and all(
            not np.isnan(pair).any() and np.isfinite(pair).any() for pair in pairs)
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ConfigError(f"a range is written LO:HI (inclusive, on the axis values, else on feature indices; "
                          f"either bound may be left out, e.g. 950: or :1550; several separated by commas, "
                          f"e.g. 950:1550,1600:1700); got {ranges!r}")
    return tuple((min(lo, hi), max(lo, hi)) for lo, hi in pairs)


def _read_weights(weights, shape: tuple[int, ...]) -> np.ndarray | None:
    """Per-feature weights (an array, or a file `read_array` reads) of the feature shape."""
    if weights is None:
        return None
    w = np.asarray(read_array(weights) if isinstance(weights, (str, Path)) else weights, dtype=np.float64)
    if w.size != math.prod(shape):
        raise DataError(f"the weights have {w.size} values, but the data have {math.prod(shape)} features per "
                        "sample; give one weight per feature (0 masks it)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise DataError("the weights must be finite and non-negative (0 masks a feature)")
    return w.reshape(shape)


@dataclass(frozen=True, eq=False)
class Channels:
    """The channels of data with features `input_shape` (None: as they come, for
    models that record none) a model uses: all, or those whose coordinate lies
    in `ranges` (axis values, or feature indices when `on` is "index"), weighed
    by `weights` (the input's shape, or None). `axis` is the input's."""

    input_shape: tuple[int, ...] | None = None
    axis: np.ndarray | None = None
    ranges: tuple[tuple[float, float], ...] | None = None
    on: str = "index"
    weights: np.ndarray | None = None

    @classmethod
    def choose(cls, dataset: Dataset, ranges=None, weights=None) -> Channels:
        """For training on `dataset`: `ranges` (see `parse_ranges`) on its axis,
        else on feature indices, and `weights` (an array or a .npy/.csv... file)."""
        shape = tuple(dataset.x.shape[1:])
        channels = cls(shape, dataset.axis, parse_ranges(ranges), "index" if dataset.axis is None else "axis",
                       _read_weights(weights, shape))
        if not channels.select(np.ones(shape) if channels.weights is None else channels.weights).any():
            raise ConfigError("the weights are 0 on every channel used; at least one must count")
        return channels

    @functools.cached_property
    def index(self) -> np.ndarray | None:
        """The input features kept, or None for all."""
        if self.ranges is None:
            return None
        if len(self.input_shape) != 1:
            raise ConfigError(f"ranges select channels of 1-D samples, but these have features {self.input_shape}; "
                              "use weights (0 masks a feature) instead")
        at = self.axis if self.on == "axis" else np.arange(self.input_shape[0])
        keep = np.zeros(len(at), dtype=bool)
        for lo, hi in self.ranges:
            keep |= (at >= lo) & (at <= hi)
        if not keep.any():
            where = f"the axis has {describe_axis(at)}" if self.on == "axis" else f"indices 0..{len(at) - 1}"
            raise ConfigError(f"the ranges {_text(self.ranges)} keep none of the {len(at)} channels ({where})")
        return np.flatnonzero(keep)

    def select(self, x: np.ndarray) -> np.ndarray:
        """The kept channels of samples (or of one sample's weights), along the last axis."""
        return x if self.index is None else np.asarray(x)[..., self.index]

    def feature_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The model's feature shape for input samples of `shape`."""
        return shape if self.index is None else (len(self.index),)

    @property
    def model_axis(self) -> np.ndarray | None:
        """The axis of the model's features (the kept channels')."""
        return None if self.axis is None else self.select(self.axis)

    def loss_weights(self, mask: np.ndarray | None) -> np.ndarray | None:
        """The weights of the model's features: these channels' weights times the data's `mask`, if any."""
        w = self.weights if mask is None else mask if self.weights is None else self.weights * mask
        return None if w is None else self.select(w)

    def accept(self, dataset: Dataset) -> Channels:
        """These channels for encoding `dataset`: refused if its axis differs, or if it
        has another number of features while channels are selected or weighed. The
        data's axis stands in when the model records none (older models, .npy data)."""
        if self.axis is not None and dataset.axis is not None:
            check_same_axis(self.axis, dataset.axis, ("the model's training data", dataset.name))
        features = math.prod(dataset.x.shape[1:])
        if (self.index is not None or self.weights is not None) and features != math.prod(self.input_shape):
            raise DataError(f"{dataset.name} has {features} features per sample, but the model selects or weighs "
                            f"channels of {math.prod(self.input_shape)}; encode data like its training data")
        return self if self.axis is not None else dataclasses.replace(self, axis=dataset.axis)

    def describe(self) -> str | None:
        """What a user is told at training, or None when every channel counts alike."""
        if self.index is None and self.weights is None:
            return None
        used = f"{len(self.index)} of {self.input_shape[0]} channels" if self.index is not None else "all channels"
        if self.ranges is not None:
            used += f" in {_text(self.ranges)} on the {self.on}" + (
                f": {describe_axis(self.model_axis)}" if self.model_axis is not None else "")
        return used + (", weighted" if self.weights is not None else "")

    def record(self) -> dict:
        """What a model stores (JSON), read back by `from_record`."""

        def listed(a):
            return None if a is None else np.asarray(a).tolist()

        return {"input_shape": list(self.input_shape), "axis": listed(self.axis), "on": self.on,
                "ranges": None if self.ranges is None else [[_finite(lo), _finite(hi)] for lo, hi in self.ranges],
                "weights": listed(self.weights), "model_axis": listed(self.model_axis)}

    @classmethod
    def from_record(cls, record: dict | None) -> Channels:
        """A model's channels (`record`), or the data as they come for models without one."""
        if record is None:
            return cls()
        shape = tuple(record["input_shape"])

        def array(name):
            return None if record.get(name) is None else np.asarray(record[name], dtype=np.float64)

        ranges = record.get("ranges")
        weights = array("weights")
        return cls(shape, array("axis"), parse_ranges(ranges), record["on"],
                   None if weights is None else weights.reshape(shape))


def _finite(bound: float) -> float | None:
    """A range's bound as JSON holds it: None for an open end."""
    return bound if math.isfinite(bound) else None


def _text(ranges) -> str:
    return ",".join(":".join(f"{b:g}" if math.isfinite(b) else "" for b in pair) for pair in ranges)
