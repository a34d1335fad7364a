"""Float32 encodings are bit-identical per sample, whatever batch, position, chunk,
thread count (1 or 2) or shard a sample is encoded in (`gfe.rows`), and fixed-step
flows that go unstable stop as `diverged`."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import gfe
from gfe.losses import Loss
from gfe.models import Conv1dDecoder, Conv2dDecoder, MLPDecoder, PCAMLPDecoder
from gfe.objective import Objective
from gfe.solvers import Status
from gfe.train import TrainConfig, Trainer

FIELDS = ("z", "loss", "steps", "nfe", "status", "t")


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_identical(a, b, rows=slice(None)):
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)[rows]), name


@pytest.mark.parametrize("decoder", [
    MLPDecoder(4, (37,), hidden=(24,)),  # fewer than 12 latents: the padded latent layer
    PCAMLPDecoder(10, (101,)),
    Conv1dDecoder(3, (45,), channels=(8, 4)),
    Conv2dDecoder(5, (9, 7), channels=(8, 4)),
], ids=["mlp", "pca-mlp", "conv1d", "conv2d"])
def test_energy_and_gradient_of_a_row_do_not_depend_on_its_batch(decoder):
    torch.manual_seed(0)
    objective = Objective(decoder, Loss("mse"))
    z, x = torch.randn(70, decoder.latent_dim), torch.rand(70, *decoder.out_shape)
    with threads(1):
        alone = [torch.cat(parts) for parts in zip(*(objective.value_and_grad(z[i:i + 1], x[i:i + 1])
                                                     for i in range(70)))]
    for n_threads in (1, 2):
        with threads(n_threads):
            for size in (2, 3, 33, 70):
                rows = torch.randperm(70)[:size]
                loss, grad = objective.value_and_grad(z[rows], x[rows])
                assert torch.equal(loss, alone[0][rows]) and torch.equal(grad, alone[1][rows]), (n_threads, size)


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    decoder = MLPDecoder(5, (30,), hidden=(32,))
    return decoder, np.random.default_rng(0).random((70, 30), dtype=np.float32)


@pytest.mark.parametrize("options", [
    {"step": "bfgs"},
    {"max_steps": 200},
    {"flow": "nesterov", "tau": 1e9, "gtol": 1e-4, "max_steps": 300},
    {"solver": "dopri5", "tau": 300},
    {"solver": "rk4", "tau": 50},
    {"solver": "adam", "max_steps": 100},
    {"solver": "lbfgs", "max_steps": 100},
], ids=["amd-bfgs", "amd-flow", "nesterov-amd", "dopri5", "rk4", "adam", "lbfgs"])
def test_float32_encoding_is_bit_identical_alone_chunked_reordered_and_threaded(problem, options):
    decoder, x = problem
    full = gfe.encode(decoder, x, loss="bce", **options)
    assert full.status_counts() != {"step-budget": 70} or options.get("solver") == "adam"
    for i in (0, 17, 69):
        assert_identical(gfe.encode(decoder, x[i:i + 1], loss="bce", **options), full, slice(i, i + 1))
    assert_identical(gfe.encode(decoder, x, loss="bce", chunk_size=9, **options), full)
    order = np.random.default_rng(1).permutation(70)[:41]  # a reordered subset
    assert_identical(gfe.encode(decoder, x[order], loss="bce", **options), full, order)
    with threads(1):
        assert_identical(gfe.encode(decoder, x, loss="bce", **options), full)


def test_the_trainers_encodings_equal_encoding_alone(problem):
    decoder, x = problem
    trainer = Trainer(TrainConfig(latent_dim=5, batch_size=5, epochs=1, seed=0,
                                  encode_options={"max_steps": 50}),
                      (30,), decoder=MLPDecoder(5, (30,), hidden=(32,)))
    batch = torch.from_numpy(x[10:15])
    for training in (True, False):
        in_batch = trainer.latents(batch, training=training)
        alone = [torch.cat(parts) for parts in zip(*(trainer.latents(batch[i:i + 1], training=training)
                                                     for i in range(5)))]
        assert all(torch.equal(a, b) for a, b in zip(in_batch, alone)), training


def test_a_diverging_fixed_step_flow_stops_as_diverged():
    """Explicit Euler on the Nesterov flow with too long a step for the curvature: the
    energy E + |v|²/2α grows instead of falling, and the sample stops long before
    its step budget; a gentler step on the same problem does not trip the check."""
    torch.manual_seed(0)
    decoder = MLPDecoder(3, (8,), hidden=(16,)).double()
    x = torch.rand(4, 8, dtype=torch.float64)
    options = dict(flow="nesterov", solver="euler", loss="mse", tau=1e9, max_steps=5000, gtol=0.0)
    unstable = gfe.encode(decoder, x, dt=2.0, **options)
    assert (unstable.status == Status.DIVERGED).all() and (unstable.steps < 1000).all()
    assert torch.isfinite(unstable.z).all()
    stable = gfe.encode(decoder, x, dt=0.05, **{**options, "max_steps": 300})
    assert (stable.status == Status.STEP_BUDGET).all()
