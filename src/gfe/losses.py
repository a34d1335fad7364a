"""Per-sample reconstruction losses and latent penalties, and the loss registry.

A loss is reduced to one number per sample (a weighted mean over features), never
over the batch: a sample's encoding must not depend on its batch-mates, and a
mean over features keeps the flow's time scale independent of the data size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .registry import Registry

PENALTIES = ("l2", "l1")


@dataclass(frozen=True)
class LossSpec:
    """A reconstruction loss: `elementwise(output, x)` per feature (the decoder's raw
    output, e.g. logits); `link(output)` maps raw output to data space (the
    reconstruction users see); `data_error(low, high)` says why data with that range
    do not suit the loss (None when they do); `scalable` is False for losses of raw
    counts, which per-sample normalisation would turn into non-counts;
    `inverse_link(x)` maps data to raw output, finite at the data's bounds: what a
    decoder initialised from data (`PCAMLPDecoder.init_from_data`) fits.
    `fisher(output)` is the Fisher information per feature of the likelihood the
    loss stands for, in its raw output (the link's natural parameter), per unit
    noise variance; `noisy` says the likelihood has a noise level σ (Gaussian, for
    which `elementwise` is 2σ² times the negative log-likelihood; for the others it
    is the negative log-likelihood itself). Both serve `gfe.uncertainty`; a loss
    without `fisher` has no latent uncertainty."""

    name: str
    elementwise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    link: Callable[[torch.Tensor], torch.Tensor] = lambda output: output
    data_error: Callable[[float, float], str | None] = lambda low, high: None
    scalable: bool = True
    summary: str = ""
    inverse_link: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    fisher: Callable[[torch.Tensor], torch.Tensor] | None = None
    noisy: bool = False


LOSSES: Registry[LossSpec] = Registry("loss")
register_loss = LOSSES.register  # every layer above (encode, train, CLI, estimator) then accepts the name
loss_spec = LOSSES.spec


def _bce_data_error(low: float, high: float) -> str | None:
    if low < 0 or high > 1:
        return (f"the bce loss needs data in [0, 1]; got min {low:g}, max {high:g}. "
                "Rescale them (e.g. divide 8-bit images by 255) or use loss='mse'")
    return None


def _poisson_data_error(low: float, high: float) -> str | None:
    return f"the poisson loss needs non-negative counts; got min {low:g}" if low < 0 else None


register_loss(LossSpec(  # logits of data clipped to [0.01, 0.99]: 0 and 1 map to -4.6 and 4.6
    "bce", lambda output, x: F.binary_cross_entropy_with_logits(output, x, reduction="none"), torch.sigmoid,
    _bce_data_error, summary="binary cross-entropy for data in [0, 1]; the decoder gives logits",
    inverse_link=lambda x: torch.logit(x.clamp(0.01, 0.99)),
    fisher=lambda output: torch.sigmoid(output) * torch.sigmoid(-output)))
register_loss(LossSpec("mse", lambda output, x: (output - x).square(), summary="mean squared error for real values",
                       fisher=torch.ones_like, noisy=True))
register_loss(LossSpec(  # the x-only term log(x!) is dropped; log(x + 0.5) keeps zero counts finite
    "poisson", lambda output, x: output.exp() - x * output, torch.exp, _poisson_data_error, scalable=False,
    summary="Poisson negative log-likelihood for counts; the decoder gives log-rates",
    inverse_link=lambda x: torch.log(x + 0.5), fisher=torch.exp))


def link(name: str, output: torch.Tensor) -> torch.Tensor:
    """Map raw decoder output to data space (the reconstruction users see)."""
    return loss_spec(name).link(output)


@dataclass(frozen=True)
class Loss:
    """`l(x, D(z)) + penalty_weight * Ω(z)` for each sample.

    `weights` (optional) has the feature shape, or one row per sample; a zero
    weight masks a feature out (detector gaps, inaccessible regions).
    """

    name: str = "bce"
    penalty: str | None = None
    penalty_weight: float = 0.0

    @classmethod
    def of(cls, loss: "str | Loss", penalty: str | None = None, penalty_weight: float = 0.0) -> "Loss":
        """`loss` itself if it is a `Loss`, else the named loss with this latent penalty."""
        return loss if isinstance(loss, Loss) else cls(loss, penalty, penalty_weight)

    def __post_init__(self):
        loss_spec(self.name)
        if self.penalty is not None and self.penalty not in PENALTIES:
            raise ConfigError(
                f"unknown latent penalty {self.penalty!r}; expected one of {', '.join(PENALTIES)} or None"
            )
        if not self.penalty_weight >= 0.0:
            raise ConfigError(f"penalty_weight must be >= 0, got {self.penalty_weight}")

    def __call__(
        self,
        output: torch.Tensor,
        x: torch.Tensor,
        z: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        per_feature = LOSSES[self.name].elementwise(output, x).flatten(1)
        if weights is None:
            value = per_feature.mean(1)
        else:
            w = weights.flatten(1) if weights.dim() == x.dim() else weights.reshape(1, -1)
            value = (per_feature * w).sum(1) / w.sum(1).clamp_min(torch.finfo(w.dtype).tiny)
        if self.penalty is None or self.penalty_weight == 0.0:
            return value
        omega = z.square().sum(1) if self.penalty == "l2" else z.abs().sum(1)
        return value + self.penalty_weight * omega
