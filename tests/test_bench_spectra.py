"""`gfe bench spectra` end to end on a tiny spectra file (written here, no Euphonic)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from gfe.bench.spectra import probe_r2
from gfe.cli import main


def write_tiny_spectra(path, n=16, q=6, e=8):
    rng = np.random.default_rng(0)
    centre = rng.uniform(2, 6, n)
    maps = np.exp(-0.5 * (np.arange(e) - centre[:, None, None]) ** 2) * (1 + np.arange(q)[None, :, None])
    with h5py.File(path, "w") as f:
        f["spectra"] = maps.astype(np.float32) + 0.01
        f["q_grid"], f["e_grid"] = np.linspace(1, 6, q), np.linspace(2, 50, e)
        f["labels"] = np.column_stack([np.zeros(n), centre])
        f["labels"].attrs["label_names"] = ["family", "centre"]


def test_bench_spectra_runs_end_to_end_and_writes_json_and_plots(tmp_path):
    write_tiny_spectra(tmp_path / "ins.h5")
    out = tmp_path / "bench" / "spectra.json"
    assert main(["bench", "spectra", "--data", str(tmp_path / "ins.h5"), "--samples", "3,5", "--n-test", "10",
                 "--latent-dim", "2", "--epochs", "1", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    rows = {(r["method"], r["samples"]) for r in result["results"]}
    assert rows == {(m, s) for m in ("gfe-amd", "gfe-nesterov", "ae", "pca") for s in (3, 5)}
    for row in result["results"]:
        assert np.isfinite(row["test_mse"]) and set(row["probe_r2"]) == {"centre"}  # family is categorical
        assert set(row["probe_knn_r2"]) == {"centre"}
    assert {p.name for p in out.parent.glob("*.png")} == {
        "spectra_error.png", "spectra_probe_r2.png", "spectra_probe_knn_r2.png", "spectra_reconstructions.png"}


def test_bench_spectra_repeats_seeds_and_regularises_every_neural_method(tmp_path):
    write_tiny_spectra(tmp_path / "ins.h5")
    out = tmp_path / "spectra.json"
    assert main(["bench", "spectra", "--data", str(tmp_path / "ins.h5"), "--samples", "5", "--n-test", "10",
                 "--latent-dim", "2", "--epochs", "1", "--methods", "gfe-amd,pca", "--seeds", "0,1",
                 "--latent-penalty", "0.01", "--latent-noise", "0.5", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1] and result["latent_penalty"] == 0.01 and result["latent_noise"] == 0.5
    rows = {(r["method"], r["seed"]): r for r in result["results"]}
    assert set(rows) == {(m, s) for m in ("gfe-amd", "pca") for s in (0, 1)}
    assert rows["gfe-amd", 0]["test_mse"] != rows["gfe-amd", 1]["test_mse"]  # the seed changes training
    assert rows["pca", 0]["test_mse"] == rows["pca", 1]["test_mse"]
    summary = {r["method"]: r for r in result["summary"]}
    assert summary["gfe-amd"]["seeds"] == 2
    assert summary["gfe-amd"]["test_mse"] == np.mean([rows["gfe-amd", s]["test_mse"] for s in (0, 1)])


def test_probe_r2_is_one_for_latents_that_hold_the_labels_and_low_for_noise():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(200, 2))
    z = np.column_stack([y @ [[1.0, 0.5], [-0.3, 2.0]], rng.normal(size=200)])
    good = probe_r2(z, y, ["a", "b"])
    noise = probe_r2(rng.normal(size=(200, 3)), y, ["a", "b"])
    assert min(good.values()) > 0.99 and max(noise.values()) < 0.1


def test_knn_probe_finds_labels_held_nonlinearly_that_ridge_misses():
    rng = np.random.default_rng(2)
    y = rng.uniform(0, 1, size=(400, 1))
    turn = 6 * np.pi * y[:, 0]
    z = np.column_stack([(1 + turn) * np.cos(turn), (1 + turn) * np.sin(turn)])  # a spiral: y has no linear readout
    assert probe_r2(z, y, ["a"], model="knn")["a"] > 0.95
    assert probe_r2(z, y, ["a"])["a"] < 0.2
    assert probe_r2(rng.normal(size=(400, 2)), y, ["a"], model="knn")["a"] < 0.1


def test_bench_spectra_validates_and_retrains_as_gfe_train_does(tmp_path, capsys):
    """With a validation share and retraining, a PCA-initialised decoder that training
    only spoils (a far too large learning rate) stays at the PCA of every training
    spectrum: its test error is PCA's."""
    from gfe.bench.spectra import run

    write_tiny_spectra(tmp_path / "ins.h5", n=30)
    result = run(tmp_path / "ins.h5", [10], n_test=10, latent_dim=2, epochs=2, decoder="pca-mlp", lr=10.0,
                 methods=("gfe-amd", "pca"), val_fraction=0.3, retrain_all=True, progress=False)
    assert result["val_fraction"] == 0.3 and result["retrain_all"] is True
    mse = {r["method"]: r["test_mse"] for r in result["results"]}
    assert mse["gfe-amd"] == pytest.approx(mse["pca"], rel=1e-4)
    with pytest.raises(SystemExit, match="2"):
        main(["bench", "spectra", "--data", str(tmp_path / "ins.h5"), "--samples", "5", "--n-test", "10",
              "--retrain-all", "--quiet"])
    assert "retrain_all retrains the epochs validation chose: give a validation share" in capsys.readouterr().err
