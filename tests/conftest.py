"""Shared fixtures for the encoding and training tests: tiny float64 decoders,
tiny data in [0, 1], and a linear decoder whose flows have closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gfe.models import MLPDecoder

# The tensors in these tests are tiny (a handful of samples, a dozen features).
# Intra-op threads buy nothing there, and on a busy shared 2-core machine some
# element-wise kernels (binary_cross_entropy_with_logits) were measured taking
# ~10 ms per call with 2 threads against ~5 us with one. One thread keeps the
# suite fast and its timings steady; results do not depend on it.
torch.set_num_threads(1)

LATENT = 3
N_FEATURES = 12


class LinearDecoder(nn.Module):
    """`D(z) = A z + b`, the decoder whose gradient flows have closed forms.

    `A` has shape (n, d) and `b` shape (n,). Both are (frozen) parameters, so the
    decoder fixes the dtype that `gfe.encode` works in.
    """

    def __init__(self, A, b):
        super().__init__()
        A = torch.as_tensor(A)
        b = torch.as_tensor(b, dtype=A.dtype)
        self.A = nn.Parameter(A.clone(), requires_grad=False)
        self.b = nn.Parameter(b.clone(), requires_grad=False)
        self.latent_dim = A.shape[1]
        self.out_shape = (A.shape[0],)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.A.T + self.b

    def least_squares(self, x: torch.Tensor) -> torch.Tensor:
        """The minimiser z* of the MSE loss for each row of `x`, shape (N, d)."""
        return torch.linalg.lstsq(self.A, (x - self.b).T).solution.T


def make_mlp64(seed: int = 0, latent: int = LATENT, out_shape=(N_FEATURES,), hidden=(16,), activation="tanh"):
    """A tiny float64 MLP decoder (latent -> 16 -> features) with fixed weights."""
    torch.manual_seed(seed)
    return MLPDecoder(latent, out_shape, hidden=hidden, activation=activation).double().eval()


def make_data01(decoder, n_own: int = 4, n_other: int = 2) -> torch.Tensor:
    """Float64 samples in [0, 1]: `n_own` produced by `decoder` itself (their
    loss has a reachable minimum, so flows can converge) and `n_other` produced by
    another network (they cannot be fitted exactly, so they converge later)."""
    teacher = make_mlp64(seed=123, latent=decoder.latent_dim, out_shape=decoder.out_shape)
    z = torch.from_numpy(np.random.default_rng(1).normal(size=(n_own + n_other, decoder.latent_dim)))
    with torch.no_grad():
        own = torch.sigmoid(decoder(z[:n_own]))
        other = torch.sigmoid(teacher(z[n_own:]))
    return torch.cat([own, other]).detach().clone()


@pytest.fixture
def mlp64():
    """3 -> 16 -> 12 tanh MLP in float64, fixed seed."""
    return make_mlp64()


@pytest.fixture
def data01(mlp64):
    """Six float64 samples of 12 features in [0, 1] (see `make_data01`)."""
    return make_data01(mlp64)


@pytest.fixture
def linear_problem():
    """A linear decoder (n = 6 features, d = 3) in float64, four real-valued
    targets and a start z0; returns (decoder, x, z0)."""
    rng = np.random.default_rng(7)
    A = torch.from_numpy(rng.normal(size=(6, 3)))
    b = torch.from_numpy(rng.normal(size=6) * 0.1)
    x = torch.from_numpy(rng.normal(size=(4, 6)))
    z0 = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 3)))
    return LinearDecoder(A, b), x, z0
