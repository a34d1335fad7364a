"""Numerical faults: a decoder that overflows for some latents marks only those
samples `non-finite`, and the trainer stops or skips on a non-finite loss as
configured. (NaN-returning decoders are covered per solver in
test_flows_and_solvers.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gfe
from gfe import ConfigError, Status, TrainingError
from gfe.models import MLPDecoder
from gfe.train import TrainConfig, Trainer
from gfe.workflows import train_model

from conftest import LinearDecoder

SHAPE = (4,)
X = np.random.default_rng(0).uniform(0.1, 0.9, size=(20, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("solver", ["amd", "euler", "rk4", "dopri5"])
def test_overflowing_decoder_marks_only_that_sample(solver):
    """Poisson log-rates of ~200 overflow float32 (exp(88.7) is inf): the sample
    started there is non-finite, its batch-mates encode as they would alone."""
    rng = np.random.default_rng(2)
    decoder = LinearDecoder(torch.from_numpy(rng.normal(size=(4, 2)).astype(np.float32)), torch.zeros(4))
    x = rng.poisson(2.0, size=(3, 4)).astype(np.float32)
    z0 = torch.zeros(3, 2)
    z0[1] = torch.linalg.lstsq(decoder.A, torch.full((4,), 200.0)).solution  # D(z0) ~ 200
    options = dict(solver=solver, loss="poisson", max_steps=30, **({"dt": 0.01} if solver in ("euler", "rk4") else {}))
    enc = gfe.encode(decoder, x, z0=z0, **options)
    assert enc.status[1] == Status.NON_FINITE and not torch.isfinite(enc.loss[1])
    alone = gfe.encode(decoder, x[[0, 2]], z0=z0[[0, 2]], **options)
    assert torch.equal(enc.status[[0, 2]], alone.status) and torch.isfinite(alone.loss).all()
    torch.testing.assert_close(enc.z[[0, 2]], alone.z, atol=0, rtol=0)


class NaNOnBatches:
    """Wraps a loss so that the given (1-based) calls in training return NaN."""

    def __init__(self, loss, bad_calls):
        self.loss, self.bad_calls, self.calls = loss, set(bad_calls), 0

    def __call__(self, output, x, z, weights=None):
        self.calls += 1
        value = self.loss(output, x, z, weights)
        return value * math.nan if self.calls in self.bad_calls else value


def make_trainer(on_nonfinite, bad_batches, epochs=1):
    torch.manual_seed(0)
    config = TrainConfig(latent_dim=2, epochs=epochs, batch_size=5, optimizer="sgd", lr=0.1,
                         encode_options={"max_steps": 5}, on_nonfinite=on_nonfinite)
    trainer = Trainer(config, SHAPE, decoder=MLPDecoder(2, SHAPE, hidden=(4,)), progress=False)
    trainer.loss = NaNOnBatches(trainer.loss, bad_batches)
    return trainer


def test_stop_names_epoch_and_batch():
    trainer = make_trainer("stop", bad_batches=[6], epochs=2)  # 4 batches per epoch: epoch 2, batch 2
    with pytest.raises(TrainingError, match=r"loss became nan in epoch 2, batch 2.*on_nonfinite='skip'"):
        trainer.fit(X)


def test_skip_counts_skipped_batches_and_keeps_training():
    trainer = make_trainer("skip", bad_batches=[2, 4])
    history = trainer.fit(X)
    assert [r.skipped_batches for r in history] == [2]
    assert math.isfinite(history[0].train_loss)
    assert all(torch.isfinite(p).all() for p in trainer.decoder.parameters())


def test_skip_on_every_batch_leaves_the_decoder_unchanged():
    trainer = make_trainer("skip", bad_batches=range(1, 5))
    before = [p.detach().clone() for p in trainer.decoder.parameters()]
    (record,) = trainer.fit(X)
    assert record.skipped_batches == 4 and math.isnan(record.train_loss)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.decoder.parameters()))


def test_on_nonfinite_is_validated():
    with pytest.raises(ConfigError, match="on_nonfinite must be one of stop, skip"):
        TrainConfig(on_nonfinite="ignore")


def test_diverging_run_fails_with_a_clear_error_from_the_workflow(tmp_path):
    """A real divergence (a huge learning rate), not an injected one: stopped
    with a `TrainingError` (the CLI prints it as `gfe: error: ...`)."""
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(TrainingError, match="training loss became"):
        config = TrainConfig(latent_dim=2, epochs=3, optimizer="sgd", lr=1e30, loss="mse",
                             encode_options={"max_steps": 5})
        train_model(tmp_path / "x.npy", tmp_path / "out", config, val_fraction=0, quiet=True)
