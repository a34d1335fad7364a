"""The per-sample energy `E(z) = l(x, D(z)) + λΩ(z)` that every flow descends.

One evaluation is one decoder forward plus one vector-Jacobian product to `z`.
Because the decoder acts on each row independently and the loss is reduced per
sample, the gradient of the summed energy is each sample's own gradient. Batches
are evaluated in whole blocks of rows (`gfe.rows`), so each row's energy and
gradient are bit-identical whatever batch it is in.
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import Loss
from .rows import rowwise


class Objective:
    """Evaluates E and ∇E for the rows of `x` (and `weights`) given latents `z`."""

    def __init__(self, decoder: nn.Module, loss: Loss):
        self.decoder = decoder
        self.loss = loss

    def value(self, z: torch.Tensor, x: torch.Tensor, weights=None) -> torch.Tensor:
        with torch.no_grad():
            return self._rowwise(lambda z, x, w: self.loss(self.decoder(z), x, z, w), z, x, weights)

    def value_and_grad(self, z: torch.Tensor, x: torch.Tensor, weights=None):
        """Return `(E, ∇E)` per sample, shapes (B,) and (B, d)."""
        return self._rowwise(self._value_and_grad, z, x, weights)

    def _value_and_grad(self, z, x, weights):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            energy = self.loss(self.decoder(z), x, z, weights)
            (grad,) = torch.autograd.grad(energy.sum(), z)
        return energy.detach(), grad

    @staticmethod
    def _rowwise(fn, z, x, weights):
        """`fn(z, x, weights)` in whole blocks of rows; feature-shaped weights are shared, not padded."""
        if weights is None or weights.dim() == x.dim():
            return rowwise(fn, z, x, weights)
        return rowwise(lambda z, x: fn(z, x, weights), z, x)

    def mean_hessian(self, z: torch.Tensor, x: torch.Tensor, weights=None, *, rel_step: float = 1e-2) -> torch.Tensor:
        """The Hessian of E averaged over the rows of `z` (float64, symmetrised), by
        central differences of the gradient along each latent axis, with steps of
        `rel_step` times that axis' spread over the rows: 2d evaluations per row,
        for any decoder and loss."""
        z = z.detach()
        spread = z.std(0) if len(z) > 1 else z.new_zeros(z.shape[1])
        hessian = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64, device=z.device)
        for i in range(z.shape[1]):
            step = torch.zeros_like(z[0])
            step[i] = rel_step * max(float(spread[i]), 1e-3)
            forward = self.value_and_grad(z + step, x, weights)[1]
            backward = self.value_and_grad(z - step, x, weights)[1]
            hessian[i] = ((forward - backward).double() / (2 * float(step[i]))).mean(0)
        return (hessian + hessian.T) / 2
