"""`gfe plot` end to end: each figure is a real, non-empty PNG, for image data
(drawn as images) and for 1-D spectra (drawn as lines)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

import gfe.plots
from gfe.cli import main
from gfe.errors import ConfigError
from gfe.workflows import decode_file, encode_file, plot_model, read_history

TRAIN = ["--latent-dim", "2", "--epochs", "2", "--batch-size", "8", "--optimizer", "adam", "--lr", "0.01",
         "--encode-options", '{"max_steps": 20}', "--quiet"]


def spectra(n: int) -> np.ndarray:
    """n Gaussian peaks on 32 channels, at varying positions."""
    t = np.linspace(0, 1, 32)
    centres = np.random.default_rng(0).uniform(0.3, 0.7, (n, 1))
    return np.exp(-((t - centres) ** 2) / 0.01).astype(np.float32)


@pytest.fixture(scope="module", params=["images", "spectra"])
def trained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(24, 5, 5)).astype(np.float32) if request.param == "images" else spectra(24)
    np.save(root / "data.npy", x)
    assert main(["train", str(root / "data.npy"), "--out", str(root / "model"), *TRAIN]) == 0
    return root


def test_plot_writes_three_non_empty_pngs(trained, capfd):
    out = trained / "figures"
    assert main(["plot", str(trained / "model"), "--data", str(trained / "data.npy"), "--out", str(out),
                 "--samples", "20", "--show", "4", "--quiet"]) == 0
    assert capfd.readouterr() == ("", "")
    assert sorted(p.name for p in out.iterdir()) == ["latents.png", "reconstructions.png", "training.png"]
    for png in out.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(png)
        assert min(pixels.shape[:2]) > 100 and pixels.std() > 0.01, png.name  # drawn, not blank


def test_history_columns_come_from_history_csv(trained):
    history = read_history(trained / "model")
    assert list(history["epoch"]) == [1.0, 2.0] and np.isfinite(history["train_loss"]).all()


def test_plot_works_without_a_history_and_for_one_latent(tmp_path):
    from gfe.train import TrainConfig, Trainer

    x = spectra(12)
    trainer = Trainer(TrainConfig(latent_dim=1, epochs=1, batch_size=6, loss="mse",
                                  encode_options={"max_steps": 10}), (32,), progress=False)
    trainer.fit(x)
    trainer.save_model(tmp_path / "model")  # no history.csv beside it
    np.save(tmp_path / "x.npy", x)
    written = plot_model(tmp_path / "model", tmp_path / "x.npy", tmp_path / "figs", quiet=True)
    assert [p.name for p in written] == ["reconstructions.png", "latents.png"]


def test_plot_refuses_bad_counts(trained):
    with pytest.raises(ConfigError, match="must be positive"):
        plot_model(trained / "model", trained / "data.npy", trained / "x", samples=0)


def test_plot_encodes_as_gfe_encode_does_and_shows_data_space(tmp_path, monkeypatch):
    """A model trained with --normalise mean sees each sample divided by its mean:
    plot encodes them so too (its losses are `gfe encode`'s), and shows the
    reconstructions on the data's own scale (`gfe decode`'s)."""
    scales = 10.0 ** np.random.default_rng(1).uniform(-2, 2, (24, 1))
    x = (spectra(24) * scales).astype(np.float32)
    np.save(tmp_path / "data.npy", x)
    model = tmp_path / "model"
    assert main(["train", str(tmp_path / "data.npy"), "--out", str(model), *TRAIN,
                 "--loss", "mse", "--normalise", "mean"]) == 0
    summary = encode_file(model, tmp_path / "data.npy", tmp_path / "z.h5", quiet=True)
    decoded = decode_file(model, tmp_path / "z.h5", tmp_path / "recon.npy", quiet=True)
    drawn = {}
    monkeypatch.setattr(gfe.plots, "plot_reconstructions",
                        lambda originals, recons, path, **_: drawn.update(originals=originals, **recons) or path)
    monkeypatch.setattr(gfe.plots, "plot_latent_space",
                        lambda z, loss, path, **_: drawn.update(loss=loss) or path)
    plot_model(model, tmp_path / "data.npy", tmp_path / "figs", samples=24, show=4, quiet=True)
    np.testing.assert_allclose(drawn["loss"].mean(), summary["mean_loss"], rtol=1e-5)
    np.testing.assert_array_equal(drawn["originals"], x[:4])
    np.testing.assert_allclose(drawn["reconstructed"], decoded[:4], rtol=1e-5)
