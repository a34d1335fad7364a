"""Per-sample normalisation and per-feature standardisation of spectra,
recorded with a model.

Spectra of different samples can differ in overall intensity by orders of
magnitude (temperature, scattering lengths, counting time), while their shape is
what carries the physics. Dividing each spectrum by its mean over the used
(unmasked) pixels lets one decoder fit them all; the factor is kept per sample so
decoding can restore the intensity.

Features can differ in scale too (a detector's noisy edge beside quiet bands), and
a raw-scale loss then fits the loudest features only. Standardising each feature
by its training mean and standard deviation weighs them alike. It comes after the
per-sample normalisation (which needs the raw, positive intensities), and
decoding undoes it first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, ModelFileError
from .losses import loss_spec

NORMALISATIONS = ("none", "mean")


def check_normalisation(kind: str, loss: str | None = None) -> None:
    """Refuse unknown kinds, and normalising data for a `loss` that models them raw
    (scaled counts are no longer counts, so the Poisson likelihood would be wrong)."""
    if kind not in NORMALISATIONS:
        raise ConfigError(f"unknown normalisation {kind!r}; expected one of {', '.join(NORMALISATIONS)}")
    if kind != "none" and loss is not None and not loss_spec(loss).scalable:
        raise ConfigError(f"the {loss} loss models raw counts; per-sample normalisation would turn them into "
                          f"non-counts. Use normalise='none' with {loss}, or the mse loss with normalisation")


def normalise(x: np.ndarray, kind: str, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(x / scale, scale)` with one scale per sample (all ones for "none").

    "mean": the weighted mean over features (`weights` of the feature shape, e.g.
    a mask); an all-zero spectrum keeps scale 1 rather than dividing by zero.
    """
    check_normalisation(kind)
    n = len(x)
    if kind == "none":
        return x, np.ones(n, dtype=x.dtype)
    w = np.ones(x.shape[1:], dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
    flat = x.reshape(n, -1).astype(np.float64)
    # a row-wise sum, not a matrix product: BLAS may round a row differently
    # with other rows beside it, and chunked or batched reading must not change it
    scale = (flat * w.ravel()).sum(axis=1) / max(w.sum(), np.finfo(np.float64).tiny)
    scale = np.where(scale > 0, scale, 1.0)
    return (x / scale.reshape(-1, *([1] * (x.ndim - 1)))).astype(x.dtype), scale.astype(x.dtype)


STD_FLOOR = 1e-6  # relative to the largest standard deviation over features


def check_standardisation(loss: str) -> None:
    """Refuse standardising data for a `loss` of raw counts (as normalisation), or
    for one that cannot take the negative values standardised features have."""
    spec = loss_spec(loss)
    if not spec.scalable:
        raise ConfigError(f"the {loss} loss models raw counts; per-feature standardisation would turn them into "
                          f"non-counts. Do not standardise with {loss}, or use the mse loss")
    if spec.data_error(-1.0, 1.0) is not None:
        raise ConfigError(f"standardised features have mean 0, so negative values, which the {loss} loss does "
                          "not take; use the mse loss with standardisation")


@dataclass(frozen=True)
class Standardisation:
    """Per-feature `(x - mean) / std` with statistics of the training samples
    (float32 arrays of the feature shape), stored with the model's weights."""

    mean: np.ndarray
    std: np.ndarray

    ARRAYS = ("standardise.mean", "standardise.std")  # their names in the model's weights file

    @classmethod
    def fit(cls, chunks: Iterable[np.ndarray]) -> Standardisation:
        """The statistics of samples read a chunk at a time (merged in float64 as
        Chan et al.'s pairwise update, so data larger than memory can be used).
        A standard deviation below `STD_FLOOR` times the largest one (a constant
        feature: a masked channel, a saturated one) is raised to that floor, so such
        features are centred but not blown up; relative to the largest, as a loud
        feature (a detector's noisy edge) must not lift it onto quiet real ones."""
        n, mean, m2 = 0, 0.0, 0.0
        for chunk in chunks:
            x = np.asarray(chunk, dtype=np.float64)
            k, chunk_mean = len(x), x.mean(axis=0)
            delta = chunk_mean - mean
            mean = mean + delta * (k / (n + k))
            m2 = m2 + np.square(x - chunk_mean).sum(axis=0) + np.square(delta) * (n * k / (n + k))
            n += k
        std = np.sqrt(m2 / n)
        floor = STD_FLOOR * std.max()
        std = np.maximum(std, floor if floor >= np.finfo(np.float32).tiny else 1.0)  # all constant: centre only
        return cls(mean.astype(np.float32), std.astype(np.float32))

    @classmethod
    def from_arrays(cls, arrays: dict, feature_shape: tuple) -> Standardisation:
        """The statistics a model's weights file holds, checked against its feature shape."""
        missing = [name for name in cls.ARRAYS if name not in arrays]
        if missing:
            raise ModelFileError(f"the model records standardisation but its weights file lacks {missing}")
        mean, std = (np.asarray(arrays[name], dtype=np.float32) for name in cls.ARRAYS)
        if mean.shape != tuple(feature_shape) or std.shape != tuple(feature_shape):
            raise ModelFileError(f"the standardisation statistics have shapes {mean.shape} and {std.shape}; "
                                 f"the decoder gives {tuple(feature_shape)}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ModelFileError("the standardisation statistics must be finite, with positive deviations")
        return cls(mean, std)

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(self.ARRAYS, (self.mean, self.std)))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(x.dtype, copy=False)

    def undo(self, x: np.ndarray) -> np.ndarray:
        return (x * self.std + self.mean).astype(x.dtype, copy=False)
