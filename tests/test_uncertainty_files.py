"""Latent uncertainty through the commands and the estimator: `gfe encode --uncertainty`
files, `gfe decode --std` bands in the data's units, clear errors, and calibration."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from gfe.bench import calibration
from gfe.errors import ConfigError
from gfe.estimator import GFE
from gfe.persist import load_model
from gfe.workflows import reconstruct
from test_cli import run

TRAIN = ["--latent-dim", "2", "--epochs", "2", "--batch-size", "8", "--optimizer", "adam", "--lr", "0.01",
         "--loss", "mse", "--normalise", "mean", "--standardise", "--quiet"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Positive spectra and a model that normalises and standardises them (mse)."""
    root = tmp_path_factory.mktemp("uncertainty")
    rng = np.random.default_rng(0)
    axis = np.linspace(0, 1, 24)
    centre, height = rng.uniform(0.3, 0.7, (50, 1)), rng.uniform(1, 5, (50, 1))
    spectra = height * (0.1 + np.exp(-((axis - centre) / 0.1) ** 2)) + 0.02 * rng.normal(size=(50, 24))
    np.save(root / "spectra.npy", spectra.astype(np.float32))
    assert run("train", root / "spectra.npy", "--out", root / "model", *TRAIN) == 0
    return root


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_encode_writes_the_uncertainty_beside_unchanged_latents(workdir, suffix):
    with_std, plain = workdir / f"u{suffix}", workdir / f"plain{suffix}"
    assert run("encode", workdir / "model", workdir / "spectra.npy", "-o", with_std, "--uncertainty", "--quiet") == 0
    assert run("encode", workdir / "model", workdir / "spectra.npy", "-o", plain, "--quiet") == 0
    if suffix == ".h5":
        with h5py.File(with_std) as f:
            arrays = {name: f[name][()] for name in f}
            meta = json.loads(f.attrs["provenance"])
        with h5py.File(plain) as f:
            np.testing.assert_array_equal(arrays["z"], f["z"][()])
        assert meta["uncertainty"] == {"method": "laplace-gauss-newton", "noise_std": "per-sample residual"}
    else:
        with np.load(with_std) as archive:
            arrays = dict(archive)
    assert arrays["z_cov"].shape == (50, 2, 2) and arrays["z_std"].shape == (50, 2)
    valid = arrays["z_std_status"] == 0
    assert valid.sum() > 40  # the rest are flagged, with NaN, never a silent number
    assert np.isnan(arrays["z_std"][~valid]).all()
    np.testing.assert_allclose(arrays["z_std"][valid], np.sqrt(np.diagonal(arrays["z_cov"][valid], axis1=1, axis2=2)),
                               rtol=1e-5)
    assert (arrays["noise_std"] > 0).all()


def test_decode_std_is_the_delta_method_in_the_data_units(workdir):
    """The bands undo standardisation and normalisation: they match finite differences
    of `reconstruct` (which undoes both) propagated through each latent's covariance."""
    latents = workdir / "u.h5"
    if not latents.exists():
        run("encode", workdir / "model", workdir / "spectra.npy", "-o", latents, "--uncertainty", "--quiet")
    assert run("decode", workdir / "model", latents, "-o", workdir / "r.npy", "--std", workdir / "s.npy",
               "--quiet") == 0
    std = np.load(workdir / "s.npy")
    with h5py.File(latents) as f:
        z, cov, scale, status = f["z"][()], f["z_cov"][()], f["scale"][()], f["z_std_status"][()]
    loaded, i = load_model(workdir / "model"), int(np.flatnonzero(status == 0)[0])
    eps = 1e-2 * np.sqrt(np.diag(cov[i]))
    columns = [(reconstruct(loaded, z[i:i + 1] + e, scale[i:i + 1]) - reconstruct(loaded, z[i:i + 1] - e,
                                                                                   scale[i:i + 1]))[0] / (2 * e[k])
               for k, e in enumerate(np.diag(eps))]
    jac = np.stack(columns, axis=-1).astype(np.float64)
    np.testing.assert_allclose(std[i], np.sqrt(np.einsum("nd,de,ne->n", jac, cov[i], jac)), rtol=2e-2)
    assert np.isnan(std[status != 0]).all()


@pytest.mark.parametrize("argv, message", [
    (["encode", "MODEL", "DATA", "-o", "OUT/z.npy", "--uncertainty"], ".h5 or .npz"),
    (["encode", "MODEL", "DATA", "-o", "OUT/z.h5", "--noise-std", "0.1"], "add --uncertainty"),
    (["encode", "MODEL", "DATA", "-o", "OUT/z.h5", "--uncertainty", "--noise-std", "-1"], "positive"),
    (["encode", "MODEL", "DATA", "-o", "OUT/shards", "--uncertainty", "--shard", "0/2"], "sharded"),
    (["decode", "MODEL", "OUT/plain.h5", "-o", "OUT/r2.npy", "--std", "OUT/s.txt"], "written as .npy"),
    (["decode", "MODEL", "OUT/plain.h5", "-o", "OUT/r2.npy", "--std", "OUT/s2.npy"], "no latent covariances"),
])
def test_bad_requests_get_one_clear_line(workdir, capsys, argv, message):
    if not (workdir / "plain.h5").exists():
        run("encode", workdir / "model", workdir / "spectra.npy", "-o", workdir / "plain.h5", "--quiet")
    names = {"MODEL": workdir / "model", "DATA": workdir / "spectra.npy"}
    argv = [str(names.get(a, a)).replace("OUT", str(workdir)) for a in argv]
    assert run(*argv) == 2
    assert message in capsys.readouterr().err
    assert not Path(argv[argv.index("-o") + 1]).exists()  # refused before anything is written


def test_the_estimator_gives_standard_deviations_beside_the_latents():
    rng = np.random.default_rng(1)
    X = rng.random((60, 2)) @ rng.random((2, 8)) + 0.01 * rng.normal(size=(60, 8))
    model = GFE(latent_dim=2, decoder={"type": "mlp", "hidden": [16]}, epochs=2, batch_size=8, lr=1e-2,
                encode_options={"max_steps": 300, "gtol": 1e-6}).fit(X)
    z, std = model.transform(X[:6], return_std=True)
    np.testing.assert_array_equal(z, model.transform(X[:6]))
    encoding, latent = model.encode_uncertainty(X[:6], noise_std=0.01)
    assert std.shape == z.shape and std.dtype == np.float32
    assert np.isfinite(latent.std).all() and (latent.noise_std == 0.01).all()


def test_calibration_sanity():
    """Small and fast: Gaussian and Poisson (1,000 counts) intervals cover near their nominal rates."""
    result = calibration.run(cases=("gaussian", "poisson"), counts=(1000,), n_samples=80, progress=False)
    for record in result["results"]:
        assert record["valid"] == 80
        assert abs(record["coverage_0.6827"] - 0.6827) < 0.08 and abs(record["coverage_0.95"] - 0.95) < 0.05


def test_calibration_refuses_ins_files_that_do_not_match(tmp_path):
    np.save(tmp_path / "counts.npy", np.ones((6, 4), dtype=np.float32))
    np.save(tmp_path / "clean.npy", np.ones((5, 4), dtype=np.float32))
    with pytest.raises(ConfigError, match="same maps"):
        calibration.ins_bands(tmp_path / "counts.npy", tmp_path / "clean.npy", n_train=3, progress=False)
    assert run("bench", "calibration", "--ins", tmp_path / "counts.npy") == 2
