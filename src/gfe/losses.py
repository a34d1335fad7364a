"""Per-sample reconstruction losses and latent penalties.

A loss is reduced to one number per sample (a weighted mean over features), never
over the batch: a sample's encoding must not depend on its batch-mates, and a
mean over features keeps the flow's time scale independent of the data size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError

LOSSES = ("bce", "mse", "poisson")
PENALTIES = ("l2", "l1")


def _elementwise(name: str, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if name == "bce":  # decoder outputs logits
        return F.binary_cross_entropy_with_logits(output, x, reduction="none")
    if name == "mse":
        return (output - x).square()
    # poisson: decoder outputs the log-rate; the x-only term log(x!) is dropped
    return output.exp() - x * output


def link(name: str, output: torch.Tensor) -> torch.Tensor:
    """Map raw decoder output to data space (the reconstruction users see)."""
    if name == "bce":
        return torch.sigmoid(output)
    if name == "poisson":
        return output.exp()
    return output


@dataclass(frozen=True)
class Loss:
    """`l(x, D(z)) + penalty_weight * Ω(z)` for each sample.

    `weights` (optional) has the feature shape, or one row per sample; a zero
    weight masks a feature out (detector gaps, inaccessible regions).
    """

    name: str = "bce"
    penalty: str | None = None
    penalty_weight: float = 0.0

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ConfigError(f"unknown loss {self.name!r}; expected one of {', '.join(LOSSES)}")
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
        per_feature = _elementwise(self.name, output, x).flatten(1)
        if weights is None:
            value = per_feature.mean(1)
        else:
            w = weights.flatten(1) if weights.dim() == x.dim() else weights.reshape(1, -1)
            value = (per_feature * w).sum(1) / w.sum(1).clamp_min(torch.finfo(w.dtype).tiny)
        if self.penalty is None or self.penalty_weight == 0.0:
            return value
        omega = z.square().sum(1) if self.penalty == "l2" else z.abs().sum(1)
        return value + self.penalty_weight * omega
