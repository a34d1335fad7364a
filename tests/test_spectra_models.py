"""Models of INS spectra files through `gfe train` / `encode` / `decode`: the
spectra dataset is found, the mask weighs the loss, per-sample normalisation is
recorded and undone, and bad input (negative counts, another grid) is refused.
These need no Euphonic: the files are written here."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from gfe.cli import main
from gfe.latents import read_latents
from gfe.persist import load_model

E_GRID = np.linspace(2.0, 50.0, 16)


def spectra_file(path, x, e_grid=E_GRID, mask=None):
    with h5py.File(path, "w") as f:
        f["spectra"] = np.asarray(x, np.float32)
        f["e_grid"] = e_grid
        f["labels"] = np.arange(len(x), dtype=float)[:, None]
        f["labels"].attrs["label_names"] = ["index"]
        if mask is not None:
            f["mask"] = mask
    return path


def peaks(n=12, seed=0):
    """Gaussian peaks at random energies and heights: positive, smooth spectra."""
    rng = np.random.default_rng(seed)
    centres, heights = rng.uniform(10, 40, n), rng.uniform(1, 20, n)
    return heights[:, None] * np.exp(-0.5 * ((E_GRID - centres[:, None]) / 5) ** 2) + 0.1


def train(data, out, *extra):
    assert main(["train", str(data), "--out", str(out), "--loss", "mse", "--latent-dim", "2", "--epochs", "1",
                 "--val-fraction", "0", "--quiet", *extra]) == 0
    return out


def test_mask_is_used_and_masked_pixels_do_not_change_the_encoding(tmp_path):
    mask = np.ones(16, bool)
    mask[:4] = False  # e.g. the kinematically inaccessible low energies
    x = peaks()
    model = train(spectra_file(tmp_path / "train.h5", x, mask=mask), tmp_path / "model")
    garbage = x.copy()
    garbage[:, :4] = 1e3  # only masked pixels differ
    for name, data in (("clean", x), ("garbage", garbage)):
        assert main(["encode", str(model), str(spectra_file(tmp_path / f"{name}.h5", data, mask=mask)),
                     "-o", str(tmp_path / f"{name}-z.h5"), "--quiet"]) == 0
    z_clean, _ = read_latents(tmp_path / "clean-z.h5")
    z_garbage, _ = read_latents(tmp_path / "garbage-z.h5")
    np.testing.assert_array_equal(z_clean, z_garbage)
    # without the mask, the same pixels do change the encoding
    assert main(["encode", str(model), str(spectra_file(tmp_path / "nomask.h5", garbage)),
                 "-o", str(tmp_path / "nomask-z.h5"), "--quiet"]) == 0
    assert not np.allclose(read_latents(tmp_path / "nomask-z.h5")[0], z_clean)


def test_per_sample_normalisation_is_recorded_applied_and_undone(tmp_path):
    x = peaks()
    model = train(spectra_file(tmp_path / "train.h5", x), tmp_path / "model", "--normalise", "mean")
    settings = load_model(model).settings
    assert settings["normalise"] == "mean" and settings["grid"]["kind"] == "spectrum-1d"
    for name, data in (("one", x), ("three", 3 * x)):
        assert main(["encode", str(model), str(spectra_file(tmp_path / f"{name}.h5", data)),
                     "-o", str(tmp_path / f"{name}-z.h5"), "--quiet"]) == 0
        assert main(["decode", str(model), str(tmp_path / f"{name}-z.h5"), "-o", str(tmp_path / f"{name}.npy"),
                     "--quiet"]) == 0
    np.testing.assert_allclose(read_latents(tmp_path / "three-z.h5")[0], read_latents(tmp_path / "one-z.h5")[0],
                               atol=1e-3)  # the same shape: the same latent (up to float32 rounding)
    with h5py.File(tmp_path / "one-z.h5") as f:
        np.testing.assert_allclose(f["scale"][()], x.mean(axis=1), rtol=1e-5)
    one, three = np.load(tmp_path / "one.npy"), np.load(tmp_path / "three.npy")
    # intensity restored per sample; the latents may differ by float32 rounding (above), the decoder's output a bit more
    np.testing.assert_allclose(three, 3 * one, rtol=1e-3, atol=1e-2)
    assert abs(one.mean() - x.mean()) < 0.5 * x.mean()  # in data units, not normalised ones


def test_poisson_loss_rejects_negative_counts_and_normalisation(tmp_path, capsys):
    counts = np.round(peaks())
    counts[3, 5] = -2
    data = spectra_file(tmp_path / "counts.h5", counts)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(data), "--out", str(tmp_path / "m"), "--loss", "poisson", "--quiet"])
    assert exit_info.value.code == 2
    assert "gfe: error: the poisson loss needs non-negative counts; got min -2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", str(data), "--out", str(tmp_path / "m"), "--loss", "poisson", "--normalise", "mean"])
    assert "poisson loss models raw counts" in capsys.readouterr().err


def test_encoding_spectra_on_another_grid_is_refused(tmp_path, capsys):
    model = train(spectra_file(tmp_path / "train.h5", peaks()), tmp_path / "model")
    other = spectra_file(tmp_path / "other.h5", peaks(3), e_grid=np.linspace(2.0, 80.0, 16))
    with pytest.raises(SystemExit) as exit_info:
        main(["encode", str(model), str(other), "-o", str(tmp_path / "z.h5"), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "gfe: error: the spectra are on different grids" in err and "E 16 bins 2..80 meV" in err
    assert not (tmp_path / "z.h5").exists()
