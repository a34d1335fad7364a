"""Spectra as scientists have them: CSV/TSV layouts with their axis (a first
row of wavenumbers, pandas' index column, trailing commas...), the axis carried
into the model and the latents, channel selection (`--range`, `--weights`), and
`.npy` latents whose sidecar names their model."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from gfe.channels import Channels, parse_ranges
from gfe.cli import main
from gfe.data import load_dataset, read_array
from gfe.errors import ConfigError, DataError
from gfe.latents import read_latents, sidecar_path
from gfe.persist import load_model
from gfe.samples import Dataset, validate_data
from gfe.workflows import decode_file, encode_file

AXIS = np.linspace(428.0, 1833.0, 40)  # wavenumbers, like the fermentation spectra
ROWS = [[0.5, 0.7, 0.6], [0.4, 0.2, 0.9]]  # not monotonic: samples, not an axis


def read(tmp_path, text, name="a.csv") -> Dataset:
    (tmp_path / name).write_text(text)
    return load_dataset(str(tmp_path / name))


def lines(*rows) -> str:
    return "".join(",".join(str(v) for v in row) + "\n" for row in rows)


# ---------------------------------------------------------------- CSV layouts

@pytest.mark.parametrize(("layout", "text"), [
    ("first row is the axis", lines([428, 429, 431], *ROWS)),
    ("pandas to_csv: index column, empty header cell", lines(["", 428.0, 429.0, 431.0], [0, *ROWS[0]], [1, *ROWS[1]])),
    ("named index column of text", lines(["sample", 428, 429, 431], ["s1", *ROWS[0]], ["s2", *ROWS[1]])),
    ("a text cell naming the axis", lines(["wavenumber", 428, 429, 431], *ROWS)),
    ("trailing comma on every line", lines([428, 429, 431, ""], [*ROWS[0], ""], [*ROWS[1], ""])),
    ("comments and blank lines", "# instrument X\n\n" + lines([428, 429, 431]) + "\n# run 2\n" + lines(*ROWS)),
])
def test_layouts_with_an_axis(tmp_path, layout, text):
    data = read(tmp_path, text)
    np.testing.assert_allclose(data.x, ROWS)
    np.testing.assert_array_equal(data.axis, [428, 429, 431])


@pytest.mark.parametrize(("layout", "text"), [
    ("no header", lines(*ROWS)),
    ("text header of column names", lines(["a", "b", "c"], *ROWS)),
    ("pandas with text column names", lines(["", "a", "b", "c"], [0, *ROWS[0]], [1, *ROWS[1]])),
    ("rows one cell wider than the header: an index", lines(["a", "b", "c"], ["x", *ROWS[0]], [7, *ROWS[1]])),
    ("trailing comma, no header", lines([*ROWS[0], ""], [*ROWS[1], ""])),
])
def test_layouts_without_an_axis(tmp_path, layout, text):
    data = read(tmp_path, text)
    np.testing.assert_allclose(data.x, ROWS)
    assert data.axis is None


def test_tab_separated_files(tmp_path):
    text = "\t428\t429\t431\n" + "".join("\t".join(map(str, [i, *row])) + "\n" for i, row in enumerate(ROWS))
    for name in ("a.tsv", "a.tab"):
        data = read(tmp_path, text, name)
        np.testing.assert_allclose(data.x, ROWS)
        np.testing.assert_array_equal(data.axis, [428, 429, 431])


def test_pandas_to_csv_round_trip(tmp_path):
    pd = pytest.importorskip("pandas")
    x = np.random.default_rng(0).uniform(size=(5, len(AXIS)))
    pd.DataFrame(x, columns=AXIS).to_csv(tmp_path / "a.csv")
    pd.DataFrame(x, columns=AXIS).to_csv(tmp_path / "a.tsv", sep="\t")
    for name in ("a.csv", "a.tsv"):
        data = load_dataset(str(tmp_path / name))
        np.testing.assert_allclose(data.x, x.astype(np.float32))
        np.testing.assert_allclose(data.axis, AXIS)


def test_all_monotonic_lines_are_ambiguous_and_either_fix_works(tmp_path):
    with pytest.raises(DataError, match=r"line 1 and every line after it are strictly monotonic.*start it with an "
                                        r"empty cell or a text cell naming the axis.*header line of column names"):
        read(tmp_path, lines([1, 2, 3], [4, 5, 6], [7, 8, 9]))
    as_axis = read(tmp_path, lines(["wavenumber", 1, 2, 3], [4, 5, 6], [7, 8, 9]))
    np.testing.assert_array_equal(as_axis.axis, [1, 2, 3])
    assert as_axis.x.shape == (2, 3)
    as_sample = read(tmp_path, lines(["a", "b", "c"], [1, 2, 3], [4, 5, 6], [7, 8, 9]))
    assert as_sample.axis is None and as_sample.x.shape == (3, 3)
    assert read(tmp_path, lines([1, 2, 3])).x.shape == (1, 3)  # one line: a sample


@pytest.mark.parametrize(("layout", "text", "axis"), [
    ("quoted numbers", '"428","429","431"\n"0.5","0.7","0.6"\n"0.4","0.2","0.9"\n', [428, 429, 431]),
    ("quoted text header naming the axis", '"wavenumber",428,429,431\n' + lines(*ROWS), [428, 429, 431]),
    ("quoted pandas index column", '"",428,429,431\n"s1",0.5,0.7,0.6\n"s2",0.4,0.2,0.9\n', [428, 429, 431]),
    ("quoted column names holding the delimiter", '"a, mean","b","c"\n' + lines(*ROWS), None),
    ("spaces before quotes", '428, "429", "431"\n0.5, "0.7", 0.6\n0.4, 0.2, "0.9"\n', [428, 429, 431]),
])
def test_quoted_cells_are_unquoted(tmp_path, layout, text, axis):
    data = read(tmp_path, text)
    np.testing.assert_allclose(data.x, ROWS)
    if axis is None:
        assert data.axis is None
    else:
        np.testing.assert_array_equal(data.axis, axis)


def test_a_quoted_text_cell_in_the_data_is_named(tmp_path):
    with pytest.raises(DataError, match=r"line 2, column 2: 'n/a' is not a number"):
        read(tmp_path, '428,429,431\n0.5,"n/a",0.6\n' + lines(ROWS[1]))


def test_nan_cell_is_read_and_reported_by_validation(tmp_path):
    data = read(tmp_path, lines([428, 429, 431], [0.5, "nan", 0.6], ROWS[1]))
    assert np.isnan(data.x[0, 1])
    with pytest.raises(DataError, match=r"1 non-finite values.*the first is at index \(0, 1\)"):
        validate_data(data.x)


@pytest.mark.parametrize(("text", "message"), [
    (lines([428, 429, 431], [0.5, "", 0.6]), r"line 2, column 2: '' is not a number \(an empty cell"),
    (lines(["", 428, 429], [0, 0.5, ""], [1, 0.2, 0.1]), r"line 2, column 3: '' is not a number"),
    (lines([0.5, 0.7, 0.6], [0.4, 0.2]), r"line 2: 2 values, but line 1 has 3; every row must have the same"),
    (lines(["s1", 0.5, 0.7, 0.6], ["s2", 0.4, 0.2, 0.1]),
     r"line 1, column 1: 's1' is not a number \(if the first column names the samples, leave the header's"),
    (lines(["", 428, 429], [0.5, 0.7, 0.6, 0.1, 0.2]), r"the header \(line 1\) gives 2 axis values after its"),
    ("", "holds no data rows"),
    ("# only a comment\n\n", "holds no data rows"),
    (lines([428, 429, 431]).replace("428", "wavenumber,428"), "holds no data rows"),
])
def test_bad_files_name_line_and_column(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read(tmp_path, text)


def test_npz_and_hdf5_carry_an_axis_beside_the_data(tmp_path):
    x = np.random.default_rng(0).uniform(size=(4, len(AXIS)))
    np.savez(tmp_path / "a.npz", x=x, axis=AXIS)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["group/x"], f["group/axis"] = x, AXIS
    for name in ("a.npz", "a.h5"):
        data = load_dataset(str(tmp_path / name))  # the axis does not count as a second array
        np.testing.assert_array_equal(data.axis, AXIS)
        np.testing.assert_allclose(data.x, x.astype(np.float32))
    np.testing.assert_array_equal(read_array(tmp_path / "a.npz", key="axis"), AXIS)
    np.savez(tmp_path / "bad.npz", x=x, axis=AXIS[:-1])
    with pytest.raises(DataError, match=r"the axis must hold one finite number per feature; it has shape \(39,\)"):
        load_dataset(str(tmp_path / "bad.npz"))


# ------------------------------------------------------- the axis in models

TRAIN = ["--loss", "mse", "--latent-dim", "2", "--epochs", "1", "--batch-size", "10", "--optimizer", "adam",
         "--lr", "0.01", "--val-fraction", "0", "--encode-options", '{"max_steps": 20}', "--quiet"]


def spectra(n=30, seed=0) -> np.ndarray:
    """Absorbance-like spectra: two peaks of random height on a baseline."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.2, 1.0, (2, n, 1))
    return 0.1 + a * np.exp(-0.5 * ((AXIS - 900) / 80) ** 2) + b * np.exp(-0.5 * ((AXIS - 1500) / 60) ** 2)


def write_csv(path, x, axis=AXIS):
    path.write_text(lines(axis, *x))
    return path


def run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture(scope="module")
def ranged(tmp_path_factory):
    """A model trained with --range on a CSV whose first row is the axis."""
    root = tmp_path_factory.mktemp("axis")
    data = write_csv(root / "spectra.csv", spectra())
    assert run("train", data, "--out", root / "model", "--range", "800:1000,1400:1600", *TRAIN) == 0
    return root


def test_the_model_records_the_axis_and_the_range(ranged):
    settings = load_model(ranged / "model").settings
    kept = ((AXIS >= 800) & (AXIS <= 1000)) | ((AXIS >= 1400) & (AXIS <= 1600))
    channels = settings["channels"]
    assert channels["input_shape"] == [40] and channels["on"] == "axis"
    assert channels["ranges"] == [[800, 1000], [1400, 1600]]
    np.testing.assert_array_equal(channels["axis"], AXIS)
    np.testing.assert_array_equal(channels["model_axis"], AXIS[kept])
    assert settings["feature_shape"] == [int(kept.sum())]


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".npy"])
def test_full_width_data_encode_through_the_range(ranged, suffix):
    data = write_csv(ranged / "more.csv", spectra(7, seed=1))
    latents = ranged / f"z{suffix}"
    assert run("encode", ranged / "model", data, "-o", latents, "--quiet") == 0
    z, meta = read_latents(latents)
    assert z.shape == (7, 2)
    np.testing.assert_array_equal(meta["axis"], load_model(ranged / "model").settings["channels"]["model_axis"])
    assert run("decode", ranged / "model", latents, "-o", ranged / "recon.npy", "--quiet") == 0
    assert np.load(ranged / "recon.npy").shape == (7, len(meta["axis"]))


def test_data_on_another_axis_are_refused(ranged, capsys):
    data = write_csv(ranged / "shifted.csv", spectra(3), axis=AXIS + 2)
    assert run("encode", ranged / "model", data, "-o", ranged / "bad.h5", "--quiet") == 2
    err = capsys.readouterr().err
    assert "the axes differ: the model's training data have 40 values 428..1833" in err
    assert "shifted.csv has 40 values 430..1835" in err and not (ranged / "bad.h5").exists()


def test_data_without_an_axis_and_models_without_one_are_allowed(ranged, tmp_path):
    np.save(tmp_path / "plain.npy", spectra(4).astype(np.float32))  # no axis: its width must fit
    assert run("encode", ranged / "model", tmp_path / "plain.npy", "-o", tmp_path / "z.h5", "--quiet") == 0
    assert read_latents(tmp_path / "z.h5")[1]["axis"] == load_model(ranged / "model").settings["channels"]["model_axis"]
    np.save(tmp_path / "narrow.npy", spectra(4)[:, :10].astype(np.float32))
    with pytest.raises(DataError, match="narrow.npy has 10 features per sample, but the model selects or weighs "
                                        "channels of 40"):
        encode_file(ranged / "model", tmp_path / "narrow.npy", tmp_path / "n.h5", quiet=True)
    # a model trained without an axis (on indices) encodes a CSV with one; its latents carry the data's
    assert run("train", tmp_path / "plain.npy", "--out", tmp_path / "plain", "--range", "5:14", *TRAIN) == 0
    assert load_model(tmp_path / "plain").settings["channels"]["on"] == "index"
    data = write_csv(tmp_path / "with-axis.csv", spectra(3))
    assert run("encode", tmp_path / "plain", data, "-o", tmp_path / "z2.h5", "--quiet") == 0
    np.testing.assert_array_equal(read_latents(tmp_path / "z2.h5")[1]["axis"], AXIS[5:15])


def test_plot_applies_the_range(ranged):
    assert run("plot", ranged / "model", "--data", ranged / "spectra.csv", "--out", ranged / "figures",
               "--samples", "6", "--show", "3", "--quiet") == 0
    assert (ranged / "figures" / "reconstructions.png").is_file()


def test_weights_are_recorded_and_weigh_the_model_features(tmp_path):
    data = write_csv(tmp_path / "spectra.csv", spectra())
    weights = np.ones(len(AXIS))
    weights[:5] = 0
    np.save(tmp_path / "w.npy", weights)
    assert run("train", data, "--out", tmp_path / "model", "--weights", tmp_path / "w.npy", "--range", "500:1833",
               *TRAIN) == 0
    record = load_model(tmp_path / "model").settings["channels"]
    np.testing.assert_array_equal(record["weights"], weights)
    channels = Channels.from_record(record)
    kept = AXIS >= 500
    np.testing.assert_array_equal(channels.loss_weights(None), weights[kept])
    assert run("encode", tmp_path / "model", data, "-o", tmp_path / "z.h5", "--quiet") == 0
    assert read_latents(tmp_path / "z.h5")[0].shape == (30, 2)


@pytest.mark.parametrize(("ranges", "kept"), [
    ("1400:", AXIS >= 1400),
    (":600", AXIS <= 600),
    (":600,1700:", (AXIS <= 600) | (AXIS >= 1700)),
])
def test_open_ended_ranges_keep_everything_beyond_their_bound(tmp_path, ranges, kept):
    data = write_csv(tmp_path / "spectra.csv", spectra())
    assert run("train", data, "--out", tmp_path / "model", "--range", ranges, *TRAIN) == 0
    settings = load_model(tmp_path / "model").settings
    np.testing.assert_array_equal(settings["channels"]["model_axis"], AXIS[kept])
    assert None in sum(settings["channels"]["ranges"], [])  # an open end is recorded as null (JSON has no inf)
    assert Channels.from_record(settings["channels"]).describe().startswith(f"{kept.sum()} of 40 channels in {ranges}")
    assert run("encode", tmp_path / "model", data, "-o", tmp_path / "z.h5", "--quiet") == 0
    assert read_latents(tmp_path / "z.h5")[1]["axis"] == AXIS[kept].tolist()


def test_range_syntax():
    assert parse_ranges("950:") == ((950, math.inf),) and parse_ranges(":1550") == ((-math.inf, 1550),)
    assert parse_ranges([(None, 3), (5, 4)]) == ((-math.inf, 3), (4, 5))
    for bad in (":", "950", "1:2:3", "a:b", "nan:1", "", "950:1550,"):
        with pytest.raises(ConfigError, match="either bound may be left out, e.g. 950: or :1550"):
            parse_ranges(bad)


@pytest.mark.parametrize(("ranges", "weights", "message"), [
    ("2000:3000", None, r"the ranges 2000:3000 keep none of the 40 channels \(the axis has 40 values 428..1833\)"),
    ("950-1550", None, "a range is written LO:HI"),
    (None, np.zeros(40), "the weights are 0 on every channel used"),
    (None, np.ones(39), "the weights have 39 values, but the data have 40 features"),
    (None, -np.ones(40), "finite and non-negative"),
])
def test_bad_channel_choices_are_refused(ranges, weights, message):
    data = Dataset(spectra(3), "spectra.csv", {"kind": "none"}, axis=AXIS)
    with pytest.raises((ConfigError, DataError), match=message):
        Channels.choose(data, ranges, weights)


def test_ranges_need_one_dimensional_samples():
    images = Dataset(np.zeros((2, 4, 4)), "images.npy", {"kind": "none"})
    with pytest.raises(ConfigError, match=r"ranges select channels of 1-D samples, but these have features \(4, 4\)"):
        Channels.choose(images, "0:3")
    assert parse_ranges([(1550, 950)]) == ((950.0, 1550.0),)


# ------------------------------------------------- .npy latents' provenance

def test_npy_latents_have_a_sidecar_and_refuse_another_model(ranged, tmp_path):
    data = write_csv(ranged / "few.csv", spectra(4, seed=2))
    latents = tmp_path / "z.npy"
    assert run("encode", ranged / "model", data, "-o", latents, "--quiet") == 0
    sidecar = json.loads(sidecar_path(latents).read_text())
    assert sidecar["model_weights_sha256"] == load_model(ranged / "model").config["weights_sha256"]
    assert sidecar["latents_sha256"] and sidecar["input"] == str(data)
    other = tmp_path / "other"
    assert run("train", data, "--out", other, "--range", "800:1000,1400:1600", "--seed", "1", *TRAIN) == 0
    with pytest.raises(DataError, match=r"z.npy was encoded with another model .* decode it with that model"):
        decode_file(other, latents, tmp_path / "r.npy", quiet=True)
    assert not (tmp_path / "r.npy").exists()


def test_npy_latents_without_sidecar_are_accepted_and_a_stale_one_is_refused(ranged, tmp_path):
    np.save(tmp_path / "mine.npy", np.zeros((3, 2), np.float32))  # user-made latents: no provenance
    assert decode_file(ranged / "model", tmp_path / "mine.npy", tmp_path / "r.npy", quiet=True).shape[0] == 3
    assert run("encode", ranged / "model", ranged / "spectra.csv", "-o", tmp_path / "z.npy", "--quiet") == 0
    np.save(tmp_path / "z.npy", np.zeros((3, 2), np.float32))  # replaced after gfe wrote it
    with pytest.raises(DataError, match=r"z.npy.json does not describe .*z.npy.*delete z.npy.json"):
        decode_file(ranged / "model", tmp_path / "z.npy", tmp_path / "r.npy", quiet=True)


def test_ins_spectra_select_energies_and_cut_their_mask(tmp_path):
    e_grid = np.linspace(2.0, 50.0, 16)
    mask = e_grid < 45
    x = 1 + np.exp(-0.5 * ((e_grid - np.random.default_rng(0).uniform(10, 40, (20, 1))) / 5) ** 2)
    with h5py.File(tmp_path / "ins.h5", "w") as f:
        f["spectra"], f["e_grid"], f["mask"] = x.astype(np.float32), e_grid, mask
    assert run("train", tmp_path / "ins.h5", "--out", tmp_path / "model", "--range", "10:48", *TRAIN) == 0
    record = load_model(tmp_path / "model").settings["channels"]
    kept = (e_grid >= 10) & (e_grid <= 48)
    np.testing.assert_array_equal(record["model_axis"], e_grid[kept])
    np.testing.assert_array_equal(Channels.from_record(record).loss_weights(mask), mask[kept])
    assert run("encode", tmp_path / "model", tmp_path / "ins.h5", "-o", tmp_path / "z.h5", "--quiet") == 0
    assert read_latents(tmp_path / "z.h5")[0].shape == (20, 2)


@pytest.mark.parametrize("extra", [(), ("--weights", "w.npy", "--standardise", "--normalise", "mean")])
def test_the_estimator_loads_a_ranged_model_as_gfe_encode_uses_it(tmp_path, extra):
    """`GFE.load` of a `gfe train --range` model takes full-width samples and keeps,
    weighs, normalises and standardises its channels as `gfe encode` does; its
    reconstructions are of the kept channels, standardisation undone."""
    from gfe.estimator import GFE

    x = spectra()
    data = write_csv(tmp_path / "spectra.csv", x)
    weights = np.linspace(0.5, 2.0, len(AXIS))
    np.save(tmp_path / "w.npy", weights)
    extra = [str(tmp_path / a) if a == "w.npy" else a for a in extra]
    assert run("train", data, "--out", tmp_path / "model", "--range", "800:1600", *TRAIN, *extra) == 0
    assert run("encode", tmp_path / "model", data, "-o", tmp_path / "z.h5", "--quiet") == 0
    assert run("decode", tmp_path / "model", tmp_path / "z.h5", "-o", tmp_path / "r.npy", "--quiet") == 0
    z, _ = read_latents(tmp_path / "z.h5")
    with h5py.File(tmp_path / "z.h5") as f:
        scale = f["scale"][()] if "scale" in f else np.ones(len(x))
    model = GFE.load(tmp_path / "model")
    kept = (AXIS >= 800) & (AXIS <= 1600)
    assert model.n_features_in_ == len(AXIS)
    np.testing.assert_array_equal(model.channels_.model_axis, AXIS[kept])
    np.testing.assert_allclose(model.transform(x), z, rtol=1e-5, atol=1e-6)
    recon = model.inverse_transform(z)
    assert recon.shape == (len(x), int(kept.sum()))
    np.testing.assert_allclose(recon * scale[:, None], np.load(tmp_path / "r.npy"), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="X has 20 features, but GFE is expecting 40 features"):
        model.transform(x[:, :20])
