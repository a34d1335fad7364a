"""`gfe bench spectra` end to end on a tiny spectra file (written here, no Euphonic)."""

from __future__ import annotations

import json

import h5py
import numpy as np

from gfe.bench.spectra import probe_r2
from gfe.cli import main


def test_bench_spectra_runs_end_to_end_and_writes_json_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    n, q, e = 16, 6, 8
    centre = rng.uniform(2, 6, n)
    maps = np.exp(-0.5 * (np.arange(e) - centre[:, None, None]) ** 2) * (1 + np.arange(q)[None, :, None])
    with h5py.File(tmp_path / "ins.h5", "w") as f:
        f["spectra"] = maps.astype(np.float32) + 0.01
        f["q_grid"], f["e_grid"] = np.linspace(1, 6, q), np.linspace(2, 50, e)
        f["labels"] = np.column_stack([np.zeros(n), centre])
        f["labels"].attrs["label_names"] = ["family", "centre"]
    out = tmp_path / "bench" / "spectra.json"
    assert main(["bench", "spectra", "--data", str(tmp_path / "ins.h5"), "--samples", "3,5", "--n-test", "8",
                 "--latent-dim", "2", "--epochs", "1", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    rows = {(r["method"], r["samples"]) for r in result["results"]}
    assert rows == {(m, s) for m in ("gfe-amd", "gfe-nesterov", "ae", "pca") for s in (3, 5)}
    for row in result["results"]:
        assert np.isfinite(row["test_mse"]) and set(row["probe_r2"]) == {"centre"}  # family is categorical
    assert {p.name for p in out.parent.glob("*.png")} == {
        "spectra_error.png", "spectra_probe_r2.png", "spectra_reconstructions.png"}


def test_probe_r2_is_one_for_latents_that_hold_the_labels_and_low_for_noise():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(200, 2))
    z = np.column_stack([y @ [[1.0, 0.5], [-0.3, 2.0]], rng.normal(size=200)])
    good = probe_r2(z, y, ["a", "b"])
    noise = probe_r2(rng.normal(size=(200, 3)), y, ["a", "b"])
    assert min(good.values()) > 0.99 and max(noise.values()) < 0.1
