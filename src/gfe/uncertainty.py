"""Per-sample latent uncertainty: a Laplace approximation at the encoded latent.

Given the decoder, a sample's latent has the posterior `p(z | x) ∝ p(x | D(z)) p(z)`.
Near the encoding z* it is approximated by a Gaussian of precision

    H = Jᵀ diag(w f / σ²) J  (+ the prior's Hessian)

the Gauss–Newton (Fisher) matrix of the likelihood: J is the Jacobian of the
decoder's raw output (logits, log-rates, values) with respect to z, f the Fisher
information per feature in that output (p(1-p) for bce, the rate for poisson, 1
for mse), σ the Gaussian noise level (mse only; 1 otherwise) and w the feature
weights (a 0/1 mask is exact; other weights act as powers of each feature's
likelihood). The flow descends a weighted *mean* over features, so the negative
log-likelihood is `s·loss` with `s = Σw` (bce, poisson) or `Σw / (2σ²)` (mse);
the latent penalty λΩ joins the posterior with that same factor, so an L2
penalty adds `2 s λ I` to H. An L1 penalty adds nothing (Ω is linear away from 0).

σ is given, or estimated per sample from its residual with the d fitted
dimensions removed, `σ̂² = Σ w (D(z*) - x)² / (Σw - d)`, so it reads the sample alone.
The result is only valid where z* is an optimum to well within its own width and
H is positive definite; elsewhere it is NaN or inf with a `Validity` code saying
why. Convergence is judged by the curvature, not by the solver's tolerance: the
Newton step to the optimum, `δ = H⁻¹ ∇(s·E)`, must be shorter than `NEWTON_TOL`
standard deviations (`sqrt(δᵀHδ)`), so a flow that stopped at its step budget a
hair from the optimum is valid and one that stopped at `gtol` far from it is not.
Everything is computed in float64 from a copy of the decoder, so the inversion
does not lose the small eigenvalues to float32 rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import nn

from .errors import ConfigError
from .losses import Loss, loss_spec
from .objective import Objective

BLOCK_ELEMENTS = 2**22  # Jacobian entries per row block: 32 MiB of float64
RCOND = 1e-10  # an eigenvalue of H under this times the largest counts as a flat direction
NEWTON_TOL = 0.1  # the longest Newton step to the optimum, in posterior standard deviations, of a valid latent


class Validity(IntEnum):
    VALID = 0
    UNCONVERGED = 1  # z* is over NEWTON_TOL standard deviations from the optimum: no Laplace point
    FLAT = 2  # H is singular along some direction (the data do not fix it): std inf there
    NON_FINITE = 3  # the decoder's output or Jacobian is NaN or inf at z*
    NO_NOISE_ESTIMATE = 4  # σ estimated from the residual, but the sample has no more weighted features than d

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass
class LatentUncertainty:
    """`cov` (N, d, d) and `std` (N, d) of each latent (float64), `status`
    (`Validity` codes), `noise_std` (N,), the σ used (NaN for losses without one),
    and `newton` (N,), the distance from z* to the optimum in standard deviations."""

    cov: torch.Tensor
    std: torch.Tensor
    status: torch.Tensor
    noise_std: torch.Tensor
    newton: torch.Tensor

    def arrays(self) -> dict:
        """The per-sample arrays a latents file holds (`gfe.latents`), float32 like the latents."""
        return {"z_cov": self.cov.float().numpy(), "z_std": self.std.float().numpy(),
                "z_std_status": self.status.to(torch.int8).numpy(), "noise_std": self.noise_std.float().numpy(),
                "z_newton": self.newton.float().numpy()}

    def status_counts(self) -> dict[str, int]:
        codes, counts = torch.unique(self.status, return_counts=True)
        return {Validity(int(c)).label: int(n) for c, n in zip(codes, counts)}


@dataclass(frozen=True)
class UncertaintySettings:
    """What `gfe encode --uncertainty` asks for: the Laplace approximation, with the
    Gaussian noise level `noise_std` of the mse loss (None: estimated per sample)."""

    noise_std: float | None = None

    def check(self, loss_name: str) -> UncertaintySettings:
        check_noise_std(loss_name, self.noise_std)
        return self

    def record(self) -> dict:
        """As latents files' provenance records it."""
        return {"method": "laplace-gauss-newton",
                "noise_std": "per-sample residual" if self.noise_std is None else self.noise_std}


def row_jacobians(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(fn(z), J)` with `J[b] = ∂fn(z)[b] / ∂z[b]`, shapes (B, n) and (B, n, d), for an
    `fn` that maps each row of `z` alone (as decoders do): one forward-mode product
    per latent axis (`torch.func.jvp`, vmapped over the axes), in blocks of rows."""
    n_rows, d = z.shape
    with torch.no_grad():
        out = fn(z[:1])
    rows = max(1, BLOCK_ELEMENTS // (d * out[0].numel()))
    outs, jacobians = [], []
    for lo in range(0, n_rows, rows):
        block = z[lo:lo + rows]
        tangents = torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, len(block), d)
        with torch.no_grad():
            outs.append(fn(block))
            columns = torch.func.vmap(lambda t: torch.func.jvp(fn, (block,), (t,))[1])(tangents)
        jacobians.append(columns.permute(1, 2, 0))
    return torch.cat(outs), torch.cat(jacobians)


def as_float64(decoder: nn.Module) -> nn.Module:
    """A float64 copy of `decoder` (the decoder itself if it is float64 already)."""
    if next(decoder.parameters()).dtype == torch.float64:
        return decoder
    return copy.deepcopy(decoder).double()


def check_noise_std(loss_name: str, noise_std: float | None) -> None:
    """Refuse a loss without a Fisher matrix, and a noise level for a loss that has none."""
    spec = loss_spec(loss_name)
    if spec.fisher is None:
        raise ConfigError(f"the {loss_name} loss defines no Fisher information, so gfe gives its latents no "
                          "uncertainty")
    if noise_std is not None:
        if not spec.noisy:
            raise ConfigError(f"noise_std is the Gaussian noise level of the mse loss; the {loss_name} loss's "
                              "likelihood has none")
        if not (isinstance(noise_std, (int, float)) and 0 < noise_std < float("inf")):
            raise ConfigError(f"noise_std must be a positive finite number (or None: estimated per sample); "
                              f"got {noise_std!r}")


def laplace(decoder: nn.Module, loss: Loss, x: torch.Tensor, z: torch.Tensor, weights=None, *,
            noise_std: float | None = None) -> LatentUncertainty:
    """The Laplace approximation of each latent's posterior at `z` (the encodings of
    the rows of `x`, which have the decoder's feature shape).
    `weights` are the loss's (feature shape, or one row per sample); `noise_std`
    the Gaussian σ of the mse loss in the units the loss sees (None: per sample)."""
    check_noise_std(loss.name, noise_std)
    spec = loss_spec(loss.name)
    dec = as_float64(decoder)
    device = next(dec.parameters()).device
    z = z.detach().to(device, torch.float64)
    shaped = x.detach().to(device, torch.float64)
    x = shaped.flatten(1)
    weights = None if weights is None else torch.as_tensor(weights).to(device, torch.float64)
    w = torch.ones_like(x) if weights is None else weights.reshape(-1, x.shape[1]).expand_as(x)
    n, d = z.shape
    out, jac = row_jacobians(lambda v: dec(v).flatten(1), z)
    total = w.sum(1)
    if spec.noisy:
        variance = (torch.full((n,), float(noise_std) ** 2, dtype=torch.float64, device=device)
                    if noise_std is not None
                    else (w * (out - x).square()).sum(1) / (total - d))
        scale = total / (2 * variance)
    else:
        variance = torch.ones(n, dtype=torch.float64, device=device)
        scale = total
    precision = torch.einsum("bnd,bn,bne->bde", jac, w * spec.fisher(out), jac) / variance[:, None, None]
    if loss.penalty == "l2" and loss.penalty_weight > 0:
        precision = precision + (2 * loss.penalty_weight * scale)[:, None, None] * torch.eye(d, dtype=torch.float64,
                                                                                            device=device)
    codes = torch.full((n,), int(Validity.VALID), dtype=torch.long, device=device)
    finite = torch.isfinite(precision).flatten(1).all(1)
    codes[~finite] = int(Validity.NON_FINITE)
    if spec.noisy and noise_std is None:
        codes[total <= d] = int(Validity.NO_NOISE_ESTIMATE)
    eigenvalues, vectors = torch.linalg.eigh(torch.where(finite[:, None, None], precision, 0.0))
    flat = eigenvalues[:, 0] <= RCOND * eigenvalues[:, -1].clamp_min(0)
    codes[(codes == Validity.VALID) & flat] = int(Validity.FLAT)
    inverse = 1 / eigenvalues.clamp_min(torch.finfo(torch.float64).tiny)
    gradient = scale[:, None] * Objective(dec, loss).value_and_grad(z, shaped, weights)[1]
    newton = (torch.einsum("bd,bde->be", gradient, vectors).square() * inverse).sum(1).sqrt()
    codes[(codes == Validity.VALID) & ~(newton <= NEWTON_TOL)] = int(Validity.UNCONVERGED)
    cov = (vectors * inverse[:, None, :]) @ vectors.transpose(1, 2)
    std = cov.diagonal(dim1=1, dim2=2).sqrt()
    valid = codes == Validity.VALID
    cov = torch.where(valid[:, None, None], cov, torch.nan)
    std = torch.where(valid[:, None], std, torch.where((codes == Validity.FLAT)[:, None], torch.inf, torch.nan))
    noise = variance.sqrt() if spec.noisy else torch.full((n,), torch.nan, dtype=torch.float64, device=device)
    return LatentUncertainty(cov.cpu(), std.cpu(), codes.cpu(), noise.cpu(), newton.cpu())


def propagate(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """The standard deviation of each feature of `fn(z)` (B, n) for latents of
    covariance `cov`, to first order (the delta method): `sqrt(diag(J Σ Jᵀ))`, NaN
    where `cov` is. `fn` maps rows alone, in float64."""
    _, jac = row_jacobians(fn, z.to(torch.float64))
    cov = cov.to(jac.device, torch.float64)
    return torch.einsum("bnd,bde,bne->bn", jac, cov, jac).clamp_min(0).sqrt()
