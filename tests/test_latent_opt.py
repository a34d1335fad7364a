"""The latent-optimizer baselines (Adam, L-BFGS) as `gfe.encode` solvers."""

from __future__ import annotations

import pytest
import torch

from gfe import ConfigError, encode


@pytest.mark.parametrize(("solver", "options"), [("adam", {"max_steps": 800, "lr": 5e-2}), ("lbfgs", {})])
def test_latent_optimizers_reach_the_flow_minimum(mlp64, data01, solver, options):
    reference = encode(mlp64, data01, solver="amd", gtol=1e-8)
    enc = encode(mlp64, data01, solver=solver, gtol=1e-8, **options)
    assert torch.allclose(enc.loss, reference.loss, rtol=1e-6)
    assert (enc.nfe == enc.steps + 1).all() if solver == "adam" else (enc.nfe >= enc.steps + 1).all()
    alone = encode(mlp64, data01[2:3], solver=solver, gtol=1e-8, **options)
    assert torch.allclose(alone.z, enc.z[2:3], rtol=0, atol=1e-12)  # independent of batch-mates
    assert int(alone.steps) == int(enc.steps[2])


def test_lbfgs_needs_far_fewer_evaluations_than_amd(mlp64, data01):
    amd = encode(mlp64, data01, solver="amd", gtol=1e-8)
    lbfgs = encode(mlp64, data01, solver="lbfgs", gtol=1e-8)
    assert lbfgs.status_labels == ["converged"] * len(data01)
    assert lbfgs.nfe.sum() * 5 < amd.nfe.sum()


def test_adam_takes_its_iteration_budget(mlp64, data01):
    enc = encode(mlp64, data01, solver="adam", max_steps=20)
    assert enc.status_labels == ["step-budget"] * len(data01)
    assert torch.allclose(enc.t, torch.full_like(enc.t, 20 * 5e-3))


def test_latent_optimizers_reject_the_second_order_flow_and_unknown_options(mlp64, data01):
    with pytest.raises(ConfigError, match="solver 'lbfgs' optimizes the latent directly.*flow='first'"):
        encode(mlp64, data01, flow="nesterov", solver="lbfgs")
    with pytest.raises(ConfigError, match="solver 'adam' has no option"):
        encode(mlp64, data01, solver="adam", dt=1.0)
