"""Per-feature standardisation (`gfe train --standardise`): its statistics come
from the training split alone and are kept in the model's weights file; encode
applies them (after per-sample normalisation), decode undoes them, so that
reconstructions come back in the data's units; counts are refused; models
without it still work."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from gfe.cli import main
from gfe.errors import ModelFileError
from gfe.normalise import STD_FLOOR, Standardisation
from gfe.persist import load_model
from gfe.samples import split
from gfe.workflows import standardisation

TRAIN = ["--loss", "mse", "--latent-dim", "2", "--epochs", "5", "--batch-size", "4", "--optimizer", "adam",
         "--lr", "0.003", "--encode-options", '{"max_steps": 30}', "--quiet"]


def spectra(n: int = 40, seed: int = 0) -> np.ndarray:
    """Positive peaks on 32 channels whose scales span four decades, on an offset:
    raw, the loudest channels would be all an mse loss sees."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 32)
    peaks = rng.uniform(1, 3, (n, 1)) * np.exp(-((t - rng.uniform(0.3, 0.7, (n, 1))) ** 2) / 0.02)
    return (peaks * np.geomspace(0.1, 1000, 32) + 5).astype(np.float32)


def train(tmp_path, x, *extra, name="model"):
    np.save(tmp_path / "x.npy", x)
    assert main(["train", str(tmp_path / "x.npy"), "--out", str(tmp_path / name), *TRAIN, *extra]) == 0
    return tmp_path / name


def encode_decode(model, data, tmp_path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`gfe encode` then `gfe decode`: reconstructions, per-sample loss and scale."""
    assert main(["encode", str(model), str(data), "-o", str(tmp_path / "z.h5"), "--quiet"]) == 0
    assert main(["decode", str(model), str(tmp_path / "z.h5"), "-o", str(tmp_path / "recon.npy"), "--quiet"]) == 0
    with h5py.File(tmp_path / "z.h5") as f:
        loss, scale = f["loss"][()], f["scale"][()] if "scale" in f else None
    return np.load(tmp_path / "recon.npy"), loss, scale


@pytest.mark.parametrize("normalise", ["none", "mean"])
def test_encode_then_decode_gives_reconstructions_in_the_data_units(tmp_path, normalise):
    x = spectra()
    model = train(tmp_path, x, "--standardise", "--normalise", normalise)
    assert load_model(model).settings["standardise"] is True
    stats = standardisation(load_model(model))
    recon, loss, scale = encode_decode(model, tmp_path / "x.npy", tmp_path)
    assert recon.shape == x.shape and (scale is None) == (normalise == "none")
    scale = np.ones(len(x), np.float32) if scale is None else scale
    # encode measured the loss on (x / scale - mean) / std; decode undid exactly that
    standardised_error = ((recon - x) / (scale[:, None] * stats.std)) ** 2
    np.testing.assert_allclose(standardised_error.mean(axis=1), loss, rtol=1e-3, atol=1e-6)
    # in data units (5 plus up to 1000 times the peaks), not standardised (mean 0) or normalised (mean 1) ones
    np.testing.assert_allclose(recon.mean(axis=0), x.mean(axis=0), rtol=0.2)


def test_standardisation_weighs_quiet_channels_that_a_raw_loss_ignores(tmp_path):
    x = spectra()
    quiet = slice(0, 8)  # channels 0.1 to 0.4 times the peaks
    errors = {}
    for flags in ((), ("--standardise",)):
        model = train(tmp_path, x, *flags, name=f"model{len(flags)}")
        recon, _, _ = encode_decode(model, tmp_path / "x.npy", tmp_path)
        errors[flags] = np.sqrt(np.mean((recon - x)[:, quiet] ** 2))
    assert errors[("--standardise",)] < 0.5 * errors[()]


@pytest.mark.parametrize("lazy", [False, True])
def test_statistics_come_from_the_training_split_only(tmp_path, lazy):
    x = spectra(40)
    model = train(tmp_path, x, "--standardise", "--val-fraction", "0.25", "--seed", "3",
                  *(["--lazy"] if lazy else []))
    x_train, x_val = split(x, 30, 10, seed=3)  # the split `gfe train` makes
    stats = standardisation(load_model(model))
    np.testing.assert_allclose(stats.mean, x_train.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.std, x_train.std(axis=0), rtol=1e-5)
    assert not np.allclose(stats.mean, x.mean(axis=0), rtol=1e-4)  # the validation samples count not


def test_statistics_read_in_chunks_match_one_pass_and_constant_features_are_floored():
    x = spectra(25).astype(np.float64)
    x[:, 3] = 7.0  # a dead channel
    whole = Standardisation.fit([x])
    chunked = Standardisation.fit(np.array_split(x, 6))
    np.testing.assert_allclose(chunked.mean, whole.mean, rtol=1e-6)
    np.testing.assert_allclose(chunked.std, whole.std, rtol=1e-6)
    assert whole.mean[3] == 7 and whole.std[3] == pytest.approx(STD_FLOOR * whole.std.max())
    np.testing.assert_array_equal(whole.apply(x.astype(np.float32))[:, 3], 0)  # centred, not blown up
    flat = Standardisation.fit([np.full((4, 3), 2.0)])
    assert np.all(flat.std == 1) and np.all(flat.mean == 2)  # nothing varies: centred only


@pytest.mark.parametrize(("loss", "message"), [
    ("poisson", "poisson loss models raw counts; per-feature standardisation"),
    ("bce", "standardised features have mean 0, so negative values, which the bce loss does not take"),
])
def test_standardisation_is_refused_for_losses_it_does_not_suit(tmp_path, capsys, loss, message):
    np.save(tmp_path / "x.npy", np.round(spectra() / 1000))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "x.npy"), "--out", str(tmp_path / "m"), "--loss", loss, "--standardise"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_model_without_standardisation_still_loads_and_works(tmp_path):
    x = spectra()
    model = train(tmp_path, x)
    loaded = load_model(model)
    assert loaded.settings["standardise"] is False and loaded.arrays == {} and standardisation(loaded) is None
    recon, _, _ = encode_decode(model, tmp_path / "x.npy", tmp_path)
    config = json.loads((model / "config.json").read_text())
    del config["settings"]["standardise"]  # as models written before it
    (model / "config.json").write_text(json.dumps(config))
    np.testing.assert_array_equal(encode_decode(model, tmp_path / "x.npy", tmp_path)[0], recon)


def test_a_model_that_claims_standardisation_without_its_statistics_is_refused(tmp_path):
    model = train(tmp_path, spectra())
    config = json.loads((model / "config.json").read_text())
    config["settings"]["standardise"] = True
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="lacks"):
        standardisation(load_model(model))
