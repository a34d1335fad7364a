"""Benchmarks run end to end on tiny data and report what they promise."""

from __future__ import annotations

import math

import pytest

from gfe.bench import data_efficiency, encoding
from gfe.data import load_dataset
from gfe.train import TrainConfig, Trainer


def test_data_efficiency_reports_each_method_and_size():
    result = data_efficiency.run("digits", ["gfe-amd", "ae"], [10, 20], n_test=15, latent_dim=2, progress=False)
    rows = result["results"]
    assert [(r["method"], r["samples"]) for r in rows] == [("gfe-amd", 10), ("ae", 10), ("gfe-amd", 20), ("ae", 20)]
    for row in rows:
        assert math.isfinite(row["test_loss"]) and row["train_seconds"] > 0
    gfe_rows = [r for r in rows if r["method"] == "gfe-amd"]
    assert all(r["train_mean_nfe"] >= r["train_mean_steps"] > 0 for r in gfe_rows)
    assert all(math.isfinite(r["test_loss_reference_amd"]) for r in gfe_rows)
    windows = gfe_rows[1]["steps_over_training"]
    assert sum(w["samples"] for w in windows) == 20 and all(w["mean_nfe"] >= w["mean_steps"] > 0 for w in windows)


def test_data_efficiency_repeats_identical_runs_and_encodes_ahead():
    result = data_efficiency.run("digits", ["gfe-amd", "ae"], [20], n_test=10, latent_dim=2, encode_ahead=2,
                                 repeat=2, reference_amd=False, progress=False)
    assert result["encode_ahead"] == 2 and result["repeat"] == 2
    for row in result["results"]:
        assert len(row["train_seconds_each"]) == 2
        assert row["train_seconds"] == pytest.approx(sum(row["train_seconds_each"]) / 2)  # the median of two
        ratios = [t / ae for t, ae in zip(row["train_seconds_each"], result["results"][1]["train_seconds_each"])]
        assert row["train_seconds_over_ae"] == pytest.approx(sum(ratios) / 2)  # each repeat's pair, then the median
        assert "test_loss_reference_amd" not in row  # skipped on request
    with pytest.raises(ValueError, match="repeat must be at least 1"):
        data_efficiency.run("digits", ["gfe-amd"], [10], repeat=0, progress=False)


def test_encode_benchmark_compares_settings_with_the_best_loss(tmp_path):
    x = load_dataset("digits").x[:60]
    # trained with Barzilai-Borwein steps, this toy decoder's converged encodings from its start map reach the
    # best from either start (trained with the default BFGS steps, they end in other minima, 5% higher)
    trainer = Trainer(TrainConfig(latent_dim=3, batch_size=10, optimizer="adam", lr=1e-2,
                                  encode_options={"step": "spectral", "h_max": 100.0}), x.shape[1:], progress=False)
    trainer.fit(x)
    trainer.save_model(tmp_path / "model")
    settings = {"bfgs": {"step": "bfgs"}, "capped": {"max_steps": 2}}
    result = encoding.run("digits", model=[tmp_path / "model"] * 2, n=40, batch=16, settings=settings, repeat=2,
                          progress=False)
    first, second = result["models"]
    assert first["decoder"] == "mlp" and [r["mean_loss"] for r in first["results"]] == [
        r["mean_loss"] for r in second["results"]]
    rows = {r["setting"]: r for r in first["results"]}
    assert all(len(r["seconds_each"]) == 2 for r in rows.values())
    assert rows["capped"]["mean_steps"] <= 2 and rows["capped"]["loss_over_best"] > rows["bfgs"]["loss_over_best"]
    assert rows["bfgs"]["loss_over_best"] == pytest.approx(0, abs=1e-3)
    assert first["decoder_evals_per_second"] > 0 and result["matmul_gflops"] > 0
    assert all(0 < r["of_decoder_rate"] for r in rows.values())
    against = first["gfe_encode_against_transform"]
    assert against["samples"] == 40 and all(len(t) == 2 for t in against["seconds_each"].values())
    assert against["transform_over_encode"] > 0


def test_sharded_encoding_benchmark_runs_and_merges_to_the_single_process_result():
    from gfe.bench import sharded_encoding

    result = sharded_encoding.run("digits", samples=20, train_samples=10, max_steps=5, processes=2, progress=False)
    assert [v["processes"] for v in result["variants"]] == [1, 1, 2]
    assert result["merged_equals_single_process"]
    assert all(v["wall_s"] > 0 and v["encode_s"] > 0 for v in result["variants"]) and result["speedup_encode"] > 0
