"""Per-sample normalisation of spectra, recorded with a model.

Spectra of different samples can differ in overall intensity by orders of
magnitude (temperature, scattering lengths, counting time), while their shape is
what carries the physics. Dividing each spectrum by its mean over the used
(unmasked) pixels lets one decoder fit them all; the factor is kept per sample so
decoding can restore the intensity.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
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
