"""The command-line side of exact gradients and the two benchmarks, on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gfe.bench import gradients, solvers
from gfe.cli import main


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(path, rng.uniform(size=(16, 4, 4)).astype(np.float32))
    return path


def test_train_command_takes_the_gradient_mode(tiny_file, tmp_path):
    out = tmp_path / "model"
    main(["train", str(tiny_file), "--out", str(out), "--gradient", "adjoint", "--latent-dim", "2",
          "--encode-options", '{"max_steps": 5}', "--val-fraction", "0", "--quiet"])
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["train_config"]["gradient"] == "adjoint"


def test_train_command_rejects_exact_gradients_for_the_autoencoder(tiny_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tiny_file), "--out", str(tmp_path / "m"), "--method", "ae", "--gradient", "unrolled"])
    assert exit_info.value.code == 2
    assert "gfe: error: gradient='unrolled' needs a GFE method" in capsys.readouterr().err


def test_benchmarks_report_every_combination(tiny_file):
    result = gradients.run(str(tiny_file), n_train=5, n_test=3, flows=("first",), gradients=("approx", "adjoint"),
                           latent_dim=2, encode_options={"max_steps": 5}, progress=False)
    assert [(r["flow"], r["gradient"]) for r in result["results"]] == [("first", "approx"), ("first", "adjoint")]
    assert all(np.isfinite(r["test_loss"]) for r in result["results"])
    result = solvers.run(str(tiny_file), n_train=5, n_test=3, solvers=("amd", "lbfgs"), max_budget=10,
                         latent_dim=2, encode_options={"max_steps": 5}, progress=False)
    assert {r["solver"] for r in result["results"]} == {"amd", "lbfgs"}
    assert any(r["reached_target"] for r in result["results"])
    assert result["target_mean_loss"] == pytest.approx(1.01 * result["best_mean_loss"])
