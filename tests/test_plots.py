"""`gfe plot` end to end: each figure is a real, non-empty PNG, for image data
(drawn as images) and for 1-D spectra (drawn as lines, each original with its
reconstruction over it and the residual below, in the data's units). The figures'
contents are checked on the figure objects, not on pixels."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from matplotlib.image import imread

import gfe.plots
from gfe import plots
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

def test_spectra_are_overlaid_on_their_reconstructions_with_residuals_below():
    x = spectra(10)
    recon = 0.9 * x
    wavenumber = np.linspace(400, 1800, 32)
    fig = plots.reconstructions_figure(x, {"reconstructed": recon}, n=8, x=wavenumber,
                                       xlabel="wavenumber (1/cm)", title="spectra")
    assert len(fig.axes) == 16  # eight panels, each a spectrum and its residual
    assert fig.get_figwidth() > 12 and fig.get_figheight() > 6  # four columns, two rows, readable panels
    assert fig.get_suptitle() == "spectra"
    spectrum_axes, residual_axes = fig.axes[0::2], fig.axes[1::2]
    for i, (top, bottom) in enumerate(zip(spectrum_axes, residual_axes)):
        original, reconstructed = top.get_lines()
        assert (original.get_label(), reconstructed.get_label()) == ("original", "reconstructed")
        np.testing.assert_array_equal(original.get_xdata(), wavenumber)
        np.testing.assert_array_equal(original.get_ydata(), x[i])
        np.testing.assert_array_equal(reconstructed.get_ydata(), recon[i])
        np.testing.assert_allclose(bottom.get_lines()[0].get_ydata(), recon[i] - x[i])
        assert all(line.get_marker() in ("None", None, "") for line in top.get_lines())
        assert top.get_title().startswith(f"sample {i} (RMS residual")
    assert [ax.get_xlabel() for ax in residual_axes[4:]] == ["wavenumber (1/cm)"] * 4


def test_spectra_default_to_the_feature_index_and_take_a_channel_axis():
    x = spectra(3)[:, None, :]  # (samples, 1 channel, 32), as a conv1d decoder gives
    fig = plots.reconstructions_figure(x, {"a": x, "b": 2 * x})
    assert len(fig.axes) == 6 and fig.axes[-1].get_xlabel() == "feature index"
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_xdata(), np.arange(32))
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["original", "a", "b"]
    with pytest.raises(ValueError, match="x has 5 values for spectra of 32"):
        plots.spectra_figure(x, {"a": x}, x=np.arange(5))


def test_images_and_maps_keep_their_rows_of_images():
    x = np.random.default_rng(0).uniform(size=(4, 6, 9)).astype(np.float32)
    fig = plots.reconstructions_figure(x, {"reconstructed": x})
    assert len(fig.axes) == 8 and all(len(ax.images) == 1 and not ax.get_lines() for ax in fig.axes)


@pytest.mark.parametrize(("epochs", "val_loss", "scale"), [
    (3, [20.0, 3.0, 1.5], "log"),  # spans more than a decade
    (3, [2.0, 1.8, 1.7], "linear"),
    (40, None, "linear"),
])
def test_training_curves_use_a_log_scale_when_the_loss_spans_decades(epochs, val_loss, scale):
    epoch = np.arange(1.0, epochs + 1)
    history = {"epoch": epoch, "train_loss": np.linspace(2.2, 1.9, epochs), "mean_steps": np.full(epochs, 15.0),
               "val_loss": np.full(epochs, np.nan) if val_loss is None else np.array(val_loss)}
    losses, steps = plots.history_figure(history).axes
    assert losses.get_yscale() == scale
    assert len(losses.get_lines()) == (1 if val_loss is None else 2)
    assert (losses.get_lines()[0].get_marker() == "o") == (epochs <= plots.MARKERS_UP_TO)
    assert steps.get_ylim()[0] == 0


def test_plot_shows_spectra_in_data_units_and_latents_of_a_subset(tmp_path, monkeypatch):
    x = (5 + 100 * spectra(30) * np.linspace(0.2, 3, 30)[:, None]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["train", str(tmp_path / "x.npy"), "--out", str(tmp_path / "model"), *TRAIN, "--loss", "mse",
                 "--normalise", "mean", "--standardise"]) == 0
    assert main(["encode", str(tmp_path / "model"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "z.h5"),
                 "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "model"), str(tmp_path / "z.h5"), "-o", str(tmp_path / "recon.npy"),
                 "--quiet"]) == 0
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    written = plot_model(tmp_path / "model", tmp_path / "x.npy", tmp_path / "figs", samples=10, show=4, quiet=True)
    assert [p.name for p in written] == ["reconstructions.png", "training.png", "latents.png"]
    assert imread(written[0]).shape[1] > 1000  # four panels side by side
    spectra_fig, _, latents_fig = figures
    decoded = np.load(tmp_path / "recon.npy")
    for i, top in enumerate(spectra_fig.axes[0::2]):
        original, reconstructed = top.get_lines()
        np.testing.assert_array_equal(original.get_ydata(), x[i])
        # what `gfe decode` gives: the normalisation and standardisation undone
        np.testing.assert_allclose(reconstructed.get_ydata(), decoded[i], rtol=1e-3, atol=1e-3 * x.max())
    assert len(latents_fig.axes[0].collections[0].get_offsets()) == 10
    assert "latents of 10 of the 30 samples" in latents_fig.axes[0].get_title()


def test_plot_draws_ins_spectra_on_their_energy_axis(tmp_path, monkeypatch):
    e_grid = np.linspace(2.0, 50.0, 32)
    with h5py.File(tmp_path / "ins.h5", "w") as f:
        f["spectra"], f["e_grid"] = spectra(12), e_grid
    assert main(["train", str(tmp_path / "ins.h5"), "--out", str(tmp_path / "model"), *TRAIN]) == 0
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plot_model(tmp_path / "model", tmp_path / "ins.h5", tmp_path / "figs", show=2, quiet=True)
    bottom = figures[0].axes[-1]
    np.testing.assert_array_equal(bottom.get_lines()[0].get_xdata(), e_grid)
    assert bottom.get_xlabel() == "energy transfer E (meV)"
