"""Bad input to `gfe.encode` ends in a DataError or ConfigError that says what was wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gfe
from gfe import ConfigError, DataError, GFEError
from gfe.losses import Loss

from conftest import make_mlp64


@pytest.fixture
def decoder():
    return make_mlp64()


@pytest.fixture
def x():
    return torch.from_numpy(np.random.default_rng(0).uniform(size=(4, 12)))


def test_errors_are_value_errors():
    assert issubclass(DataError, GFEError) and issubclass(ConfigError, GFEError)
    assert issubclass(GFEError, ValueError)


def test_feature_shape_mismatch(decoder):
    with pytest.raises(DataError, match=r"feature shape \(11,\), but \(12,\) was expected"):
        gfe.encode(decoder, np.full((3, 11), 0.5))
    with pytest.raises(DataError, match="batch axis"):
        gfe.encode(decoder, np.full(12, 0.5))
    with pytest.raises(DataError, match=r"a single sample needs a batch axis: x\[None\]"):
        gfe.encode(make_mlp64(out_shape=(3, 4)), np.full((3, 4), 0.5))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data(decoder, x, bad):
    x = x.clone()
    x[2, 5] = bad
    with pytest.raises(DataError, match=r"1 non-finite values.*index \(2, 5\)"):
        gfe.encode(decoder, x, loss="mse")


def test_empty_data(decoder):
    with pytest.raises(DataError, match="empty: 0 samples"):
        gfe.encode(decoder, np.zeros((0, 12)))


def test_bce_needs_data_in_unit_interval(decoder, x):
    with pytest.raises(DataError, match=r"bce loss needs data in \[0, 1\]; got min 0.*max 1.5"):
        gfe.encode(decoder, torch.cat([x, x.new_full((1, 12), 1.5)]), loss="bce")
    with pytest.raises(DataError, match=r"bce loss needs data in \[0, 1\]"):
        gfe.encode(decoder, x - 0.5)  # bce is the default


def test_poisson_needs_non_negative_data(decoder, x):
    with pytest.raises(DataError, match="poisson loss needs non-negative counts; got min -1"):
        gfe.encode(decoder, torch.cat([x, x.new_full((1, 12), -1.0)]), loss="poisson")
    gfe.encode(decoder, x * 10, loss="poisson", max_steps=1)  # counts above 1 are fine


@pytest.mark.parametrize(("option", "value", "pattern"), [
    ("flow", "second", r"unknown flow 'second'; expected one of first, nesterov"),
    ("solver", "newton", r"unknown solver 'newton'; expected one of amd, euler, rk4, dopri5, adam, lbfgs"),
    ("loss", "huber", r"unknown loss 'huber'; expected one of bce, mse, poisson"),
    ("penalty", "l3", r"unknown latent penalty 'l3'"),
    ("penalty_weight", -1.0, r"penalty_weight must be >= 0"),
    ("alpha", 0.0, r"alpha .* must be > 0"),
    ("tau", -1.0, r"need tau > 0"),
    ("max_steps", -1, r"max_steps"),
    ("gtol", -1e-3, r"gtol"),
    ("chunk_size", 0, r"chunk_size >= 1"),
])
def test_unknown_or_invalid_options(decoder, x, option, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        gfe.encode(decoder, x, **{option: value})


@pytest.mark.parametrize(("solver", "option", "allowed"), [
    ("amd", "dt", "grow, h0, h_max, max_shrinks, metric0, shrink, sigma, step"),
    ("euler", "rtol", "dt"),
    ("rk4", "h0", "dt"),
    ("dopri5", "dt", "atol, dt0, max_rejects, rtol"),
])
def test_unknown_solver_option_names_it_and_the_allowed_ones(decoder, x, solver, option, allowed):
    with pytest.raises(ConfigError, match=rf"solver '{solver}' has no option\(s\) {option}; it accepts {allowed}$"):
        gfe.encode(decoder, x, solver=solver, **{option: 1.0})


def test_options_are_checked_before_the_data(decoder):
    with pytest.raises(ConfigError, match="unknown solver"):
        gfe.encode(decoder, np.full((2, 5), 7.0), solver="nope")


@pytest.mark.parametrize("shape", [(4, 2), (3, 3), (4,), (4, 3, 1)])
def test_bad_z0_shape(decoder, x, shape):
    with pytest.raises(DataError, match=r"z0 has shape .*; expected \(4, 3\) \(samples, latent_dim\)"):
        gfe.encode(decoder, x, z0=np.zeros(shape))


def test_non_finite_z0(decoder, x):
    z0 = np.zeros((4, 3))
    z0[1, 1] = np.nan
    with pytest.raises(DataError, match="z0 contains NaN"):
        gfe.encode(decoder, x, z0=z0)


@pytest.mark.parametrize("shape", [(11,), (4, 11), (3, 12), (1, 12), (4, 12, 1)])
def test_bad_weights_shape(decoder, x, shape):
    with pytest.raises(DataError, match=r"weights have shape .*; expected the feature shape \(12,\) or one row per sample \(4, 12\)"):
        gfe.encode(decoder, x, weights=np.ones(shape))


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_bad_weight_values(decoder, x, bad):
    w = np.ones((4, 12))
    w[0, 0] = bad
    with pytest.raises(DataError, match="weights must be finite and non-negative"):
        gfe.encode(decoder, x, weights=w)


def test_non_numeric_data(decoder):
    with pytest.raises(DataError, match="numeric"):
        gfe.encode(decoder, np.array([["a"] * 12]))


def test_loss_object_validates_itself():
    with pytest.raises(ConfigError, match="unknown loss"):
        Loss("l2")
    with pytest.raises(ConfigError, match="unknown latent penalty"):
        Loss("mse", penalty="ridge")
