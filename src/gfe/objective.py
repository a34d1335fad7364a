"""The per-sample energy `E(z) = l(x, D(z)) + λΩ(z)` that every flow descends.

One evaluation is one decoder forward plus one vector-Jacobian product to `z`.
Because the decoder acts on each row independently and the loss is reduced per
sample, the gradient of the summed energy is each sample's own gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import Loss


class Objective:
    """Evaluates E and ∇E for the rows of `x` (and `weights`) given latents `z`."""

    def __init__(self, decoder: nn.Module, loss: Loss):
        self.decoder = decoder
        self.loss = loss

    def value(self, z: torch.Tensor, x: torch.Tensor, weights=None) -> torch.Tensor:
        with torch.no_grad():
            return self.loss(self.decoder(z), x, z, weights)

    def value_and_grad(self, z: torch.Tensor, x: torch.Tensor, weights=None):
        """Return `(E, ∇E)` per sample, shapes (B,) and (B, d)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            energy = self.loss(self.decoder(z), x, z, weights)
            (grad,) = torch.autograd.grad(energy.sum(), z)
        return energy.detach(), grad
