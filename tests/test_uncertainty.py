"""The Laplace approximation of a latent's posterior (`gfe.uncertainty`): exact
where it should be, the likelihood's scale (not the loss's), flagged where invalid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import LinearDecoder, make_mlp64
from gfe.encode import encode
from gfe.errors import ConfigError
from gfe.losses import Loss, link
from gfe.objective import Objective
from gfe.uncertainty import Validity, laplace, propagate


def linear_decoder(n=12, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return LinearDecoder(torch.from_numpy(rng.normal(size=(n, d))), torch.from_numpy(rng.normal(size=n)))


def likelihood_hessian(decoder, loss, x, z, weights, scale):
    """`scale` times the Hessian of the energy the flow descends, by central differences."""
    return scale * Objective(decoder, loss).mean_hessian(z[None], x[None], weights, rel_step=1e-3)


def test_linear_gaussian_is_exact():
    """For D(z) = Az + b and Gaussian noise σ, the posterior is Gaussian with covariance σ²(AᵀWA)⁻¹."""
    dec = linear_decoder()
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(4, 12)))
    w = torch.from_numpy(np.r_[np.ones(9), np.zeros(3)])
    z = torch.linalg.lstsq(dec.A[:9], (x[:, :9] - dec.b[:9]).T).solution.T
    u = laplace(dec, Loss("mse"), x, z, w, noise_std=0.3)
    expected = 0.09 * torch.linalg.inv(dec.A[:9].T @ dec.A[:9])
    torch.testing.assert_close(u.cov, expected.expand(4, 3, 3), rtol=1e-10, atol=0)
    torch.testing.assert_close(u.std, expected.diagonal().sqrt().expand(4, 3), rtol=1e-10, atol=0)
    assert (u.status == Validity.VALID).all() and torch.allclose(u.noise_std, torch.full((4,), 0.3, dtype=torch.float64))


@pytest.mark.parametrize("penalty", [None, "l2"])
def test_precision_matches_finite_difference_hessian_of_the_likelihood(penalty):
    """Linear decoder, Gaussian noise, with and without the L2 prior: the precision is
    Σw/(2σ²) times the energy's Hessian (the loss is a weighted mean), checked by differences."""
    dec = linear_decoder()
    loss = Loss("mse", penalty, 0.05 if penalty else 0.0)
    x = torch.from_numpy(np.random.default_rng(2).normal(size=12))
    w = torch.from_numpy(np.random.default_rng(3).uniform(0.5, 2.0, size=12))
    gram = dec.A.T @ (w[:, None] * dec.A) / w.sum() + loss.penalty_weight * torch.eye(3, dtype=torch.float64)
    z = torch.linalg.solve(gram, dec.A.T @ (w * (x - dec.b)) / w.sum())  # the optimum: a Laplace point
    sigma = 0.7
    u = laplace(dec, loss, x[None], z[None], w, noise_std=sigma)
    hessian = likelihood_hessian(dec, loss, x, z, w, float(w.sum()) / (2 * sigma**2))
    torch.testing.assert_close(torch.linalg.inv(u.cov[0]), hessian, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["bce", "poisson"])
def test_gauss_newton_is_the_hessian_where_the_decoder_fits_exactly(name):
    """For canonical links the Hessian of the negative log-likelihood is JᵀFJ plus a term
    in the residual: at data equal to the decoded mean they agree (likelihood = Σw·loss)."""
    dec = make_mlp64(seed=4)
    z = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    with torch.no_grad():
        x = link(name, dec(z[None]))[0]
    u = laplace(dec, Loss(name), x[None], z[None])
    hessian = likelihood_hessian(dec, Loss(name), x, z, None, float(x.numel()))
    torch.testing.assert_close(torch.linalg.inv(u.cov[0]), hessian, rtol=1e-5, atol=1e-8)


def test_noise_estimated_from_the_residual_with_d_dofs_removed():
    dec = linear_decoder(n=400, d=3)
    rng = np.random.default_rng(5)
    z_true = torch.from_numpy(rng.normal(size=(50, 3)))
    with torch.no_grad():
        x = dec(z_true) + 0.2 * torch.from_numpy(rng.normal(size=(50, 400)))
    u = laplace(dec, Loss("mse"), x, dec.least_squares(x))
    residual = (dec(dec.least_squares(x)) - x).square().sum(1)
    torch.testing.assert_close(u.noise_std, (residual / 397).sqrt())
    assert abs(float(u.noise_std.mean()) - 0.2) < 0.01


def test_a_sample_alone_gets_what_it_gets_in_a_batch():
    dec = make_mlp64(seed=6)
    rng = np.random.default_rng(7)
    x, loss = torch.from_numpy(rng.uniform(size=(9, 12))), Loss("bce", "l2", 0.01)
    z = encode(dec, x, loss=loss, gtol=1e-10).z
    batch = laplace(dec, loss, x, z)
    alone = laplace(dec, loss, x[4:5], z[4:5])
    assert (batch.status == Validity.VALID).all()
    torch.testing.assert_close(alone.cov[0], batch.cov[4], rtol=1e-12, atol=0)


def test_invalid_samples_are_flagged_never_tiny():
    A = torch.from_numpy(np.random.default_rng(8).normal(size=(6, 3)))
    A[:, 2] = 0  # the third latent moves nothing: a flat direction
    dec = LinearDecoder(A, torch.zeros(6, dtype=torch.float64))
    x, z = torch.ones(2, 6, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    u = laplace(dec, Loss("mse"), x, z, noise_std=1.0)
    assert u.status.tolist() == [Validity.FLAT] * 2 and torch.isinf(u.std).all() and torch.isnan(u.cov).all()
    few = laplace(linear_decoder(n=3), Loss("mse"), torch.ones(1, 3, dtype=torch.float64),
                  torch.zeros(1, 3, dtype=torch.float64))
    assert few.status.tolist() == [Validity.NO_NOISE_ESTIMATE] and torch.isnan(few.std).all()


def test_a_latent_far_from_its_optimum_is_unconverged_one_close_to_it_valid():
    """Convergence is judged by the Newton step to the optimum in posterior standard
    deviations, whatever the solver's status said."""
    dec = linear_decoder()
    x = torch.from_numpy(np.random.default_rng(9).normal(size=(1, 12)))
    best = dec.least_squares(x)
    u = laplace(dec, Loss("mse"), x.expand(3, 12), best + torch.tensor([[0.0], [1e-3], [1.0]]), noise_std=0.1)
    assert u.status.tolist() == [Validity.VALID, Validity.VALID, Validity.UNCONVERGED]
    assert u.newton[0] < 1e-6 and torch.isnan(u.std[2]).all()


@pytest.mark.parametrize("loss, noise_std, message", [("bce", 0.1, "has none"), ("mse", -1.0, "positive"),
                                                      ("mse", float("nan"), "positive")])
def test_bad_noise_levels_are_refused(loss, noise_std, message):
    dec = linear_decoder()
    with pytest.raises(ConfigError, match=message):
        laplace(dec, Loss(loss), torch.rand(1, 12, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64),
                noise_std=noise_std)


def test_propagation_is_the_delta_method():
    dec = linear_decoder()
    cov = torch.diag(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))[None].expand(2, 3, 3)
    std = propagate(dec, torch.zeros(2, 3, dtype=torch.float64), cov)
    torch.testing.assert_close(std, (dec.A @ cov[0] @ dec.A.T).diagonal().sqrt().expand(2, 12))
