"""INS dataset generator: the spring models' physics, Euphonic against an
independent NumPy reference, detailed balance, reproducibility, and the reader.

Tests that compute spectra need the optional extra `gfe[ins]` (Euphonic) and
are skipped without it; the model and reader tests need only gfe's core."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import h5py
import numpy as np
import pytest

from gfe.errors import ConfigError, DataError
from gfe.ins import (FAMILIES, LABEL_NAMES, BvKModel, ParameterRanges, check_same_grid, draw_model, frequencies,
                     generate, is_stable, load_spectra)
from gfe.ins.lattice import MEV_PER_ROOT_EIGENVALUE, max_frequency

needs_euphonic = pytest.mark.skipif(
    importlib.util.find_spec("euphonic") is None,
    reason='needs the optional extra gfe[ins] (Euphonic): pip install "gfe[ins]"')

# gfe loads torch, whose OpenMP runtime makes Euphonic warn and run serially.
pytestmark = pytest.mark.filterwarnings("ignore:More than one OpenMP library:UserWarning")

TINY = dict(q_range=(0.5, 6.0), q_bins=8, e_bins=10, directions=12, dw_grid=3)


def model(family="fcc", springs=((2.0, 0.3), (0.5, 0.05)), masses=(30.0, 50.0)):
    return BvKModel(family, 4.0, masses, (5.0, 7.0), springs)


# ---------------------------------------------------------------- spring models

def test_fcc_nearest_neighbour_frequencies_at_x_match_the_analytic_values():
    # fcc with nearest-neighbour springs: at X = (2π/a)(1, 0, 0), i.e. (0, ½, ½) in
    # primitive reciprocal units, ω_T² = (4 k_L + 12 k_T)/m (twice) and ω_L² = 8 (k_L + k_T)/m.
    kl, kt, m = 2.0, 0.3, 30.0
    got = frequencies(model(springs=((kl, kt), (0.0, 0.0)), masses=(m, m)), np.array([[0.0, 0.5, 0.5]]))[0]
    transverse, longitudinal = MEV_PER_ROOT_EIGENVALUE * np.sqrt([(4 * kl + 12 * kt) / m, 8 * (kl + kt) / m])
    np.testing.assert_allclose(got, [transverse, transverse, longitudinal], rtol=1e-12)


def test_acoustic_sum_rule_gives_zero_frequencies_at_gamma():
    for family in FAMILIES:
        gamma = frequencies(model(family), np.zeros((1, 3)))[0]
        np.testing.assert_allclose(gamma[:3], 0.0, atol=1e-5)


def test_imaginary_modes_are_detected_and_random_models_are_stable():
    # A strongly negative transverse spring makes fcc's transverse X modes imaginary
    # (4 k_L + 12 k_T < 0); the second shell adds nothing at X.
    unstable = model(springs=((1.0, -0.5), (0.3, 0.0)))
    assert frequencies(unstable, np.array([[0.0, 0.5, 0.5]])).min() < 0
    assert not is_stable(unstable)
    assert is_stable(model())
    ranges = ParameterRanges()
    rng = np.random.default_rng(0)
    for _ in range(10):
        drawn = draw_model(rng, ranges)
        assert is_stable(drawn)
        assert ranges.max_energy[0] - 1e-6 <= max_frequency(drawn) <= ranges.max_energy[1] + 1e-6


def test_ranges_that_only_give_unstable_models_fail_clearly():
    ranges = ParameterRanges(families=("fcc",), transverse_ratio=(-0.6, -0.5))
    with pytest.raises(ConfigError, match="no stable model"):
        draw_model(np.random.default_rng(0), ranges, max_tries=5)


# ----------------------------------------------------------- Euphonic physics

@needs_euphonic
@pytest.mark.parametrize("family", FAMILIES)
def test_numpy_frequencies_agree_with_euphonic(family):
    from gfe.ins.spectra import euphonic_force_constants

    m = model(family)
    qpts = np.random.default_rng(1).uniform(-1, 1, size=(50, 3))
    modes = euphonic_force_constants(m).calculate_qpoint_phonon_modes(qpts, asr=None, reduce_qpts=False)
    np.testing.assert_allclose(modes.frequencies.to("meV").magnitude, frequencies(m, qpts), atol=1e-5)


@needs_euphonic
def test_density_of_states_integrates_to_three_per_atom():
    import euphonic

    from gfe.ins.spectra import euphonic_force_constants

    m = model("rocksalt")
    modes = euphonic_force_constants(m).calculate_qpoint_phonon_modes(
        euphonic.util.mp_grid([6, 6, 6]), asr=None, reduce_qpts=False)
    edges = np.linspace(0, 1.1 * max_frequency(m), 200)
    dos = modes.calculate_dos(edges * euphonic.ureg("meV"))
    integral = np.sum(dos.y_data.to("1/meV").magnitude * np.diff(edges))
    # Euphonic normalises the DOS per atom: 3 means all 3n modes are real and binned.
    assert integral == pytest.approx(3.0, rel=1e-9)


@needs_euphonic
def test_detailed_balance_mode_by_mode_and_in_binned_maps():
    from gfe.ins.spectra import bin_powder_map, mode_intensities, powder_qpoints

    m, temperature = model("cscl"), 120.0
    kt = 8.617333262e-2 * temperature
    rng = np.random.default_rng(2)
    q_edges, e_edges = np.linspace(0.5, 6.0, 5), np.linspace(-40, 40, 21)
    energies, loss, gain = mode_intensities(m, powder_qpoints(m, q_edges, 30, rng), temperature, dw_grid=3)
    on = loss > 0
    assert on.mean() > 0.5
    np.testing.assert_allclose(gain[on] / loss[on], np.exp(-energies[on] / kt), rtol=1e-10)

    # Binned: every mode in the loss bin [E1, E2] sends exp(-E/kT) of its weight to
    # [-E2, -E1], so the bins' ratio lies between exp(-E2/kT) and exp(-E1/kT).
    binned = bin_powder_map(energies, loss, gain, len(q_edges) - 1, e_edges)
    half = len(e_edges) // 2
    positive, negative = binned[:, half:], binned[:, :half][:, ::-1]
    low, high = e_edges[half:-1], e_edges[half + 1:]
    filled = positive > 0
    ratio = negative[filled] / positive[filled]
    bounds = np.broadcast_to(np.exp(-high / kt), positive.shape)[filled], np.broadcast_to(
        np.exp(-low / kt), positive.shape)[filled]
    assert filled.sum() > 20
    assert np.all(ratio >= bounds[0] * (1 - 1e-12)) and np.all(ratio <= bounds[1] * (1 + 1e-12))


# ---------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    pytest.importorskip("euphonic", reason='needs the optional extra gfe[ins] (Euphonic): pip install "gfe[ins]"')
    return generate(3, out=tmp_path_factory.mktemp("ins") / "tiny.h5", seed=5, progress=False, **TINY)


def test_tiny_powder_maps_are_finite_non_negative_with_grids_labels_and_provenance(tiny_file):
    data = load_spectra(tiny_file)
    assert data.kind == "powder-map" and data.x.shape == (3, 8, 10) and data.x.dtype == np.float32
    assert np.isfinite(data.x).all() and data.x.min() >= 0 and data.x.max() > 0
    np.testing.assert_allclose(data.q_grid[[0, -1]], [0.5 + 5.5 / 16, 6.0 - 5.5 / 16])
    assert len(data.e_grid) == 10 and data.mask is None
    assert data.label_names == LABEL_NAMES and data.labels.shape == (3, len(LABEL_NAMES))
    assert set(data.labels[:, 0]) <= set(range(len(FAMILIES)))
    temperature = data.labels[:, LABEL_NAMES.index("temperature")]
    assert np.all((temperature >= 5) & (temperature <= 300))
    assert data.attrs["seed"] == 5 and data.attrs["settings"]["directions"] == 12
    assert {"gfe_version", "euphonic_version", "numpy_version"} <= set(data.attrs)
    with h5py.File(tiny_file) as f:
        assert list(f["labels"].attrs["family_names"]) == list(FAMILIES)


def test_generation_is_reproducible_for_a_seed_whatever_the_workers(tiny_file, tmp_path):
    again = generate(3, out=tmp_path / "again.h5", seed=5, workers=2, progress=False, **TINY)
    other = generate(1, out=tmp_path / "other.h5", seed=6, progress=False, **TINY)
    first, second = load_spectra(tiny_file), load_spectra(again)
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert not np.array_equal(load_spectra(other).x[0], first.x[0])


@needs_euphonic
def test_spectra_1d_with_poisson_noise_are_non_negative_integer_counts(tmp_path):
    path = generate(2, kind="spectrum-1d", out=tmp_path / "counts.h5", counts=5000, progress=False, **TINY)
    data = load_spectra(path)
    assert data.kind == "spectrum-1d" and data.x.shape == (2, 10) and data.q_grid is None
    assert data.x.min() >= 0 and np.array_equal(data.x, np.round(data.x))
    assert np.all(np.abs(data.x.sum(axis=1) - 5000) < 5 * np.sqrt(5000))


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        generate(1, kind="map", out=tmp_path / "x.h5")
    with pytest.raises(ConfigError, match="unknown INS setting"):
        generate(1, out=tmp_path / "x.h5", q_bin=3)
    with pytest.raises(ConfigError, match="e_range"):
        generate(1, out=tmp_path / "x.h5", e_range=(5, 1))
    assert not (tmp_path / "x.h5").exists()


def test_importing_gfe_ins_does_not_import_euphonic():
    code = "import sys, gfe.ins; assert 'euphonic' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -------------------------------------------------------------------- reader

def write_spectra(path, e_grid, q_grid=None, n=2, **extra):
    with h5py.File(path, "w") as f:
        shape = (n, len(e_grid)) if q_grid is None else (n, len(q_grid), len(e_grid))
        f["spectra"] = np.ones(shape, np.float32)
        f["e_grid"] = e_grid
        if q_grid is not None:
            f["q_grid"] = q_grid
        for name, value in extra.items():
            f[name] = value
    return path


def test_reader_names_missing_datasets_and_bad_files(tmp_path):
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["e_grid"] = np.arange(4.0)
    with pytest.raises(DataError, match=r"lacks the dataset\(s\) \['spectra'\]"):
        load_spectra(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "noq.h5", "w") as f:
        f["spectra"], f["e_grid"] = np.ones((2, 3, 4)), np.arange(4.0)
    with pytest.raises(DataError, match="need a q_grid"):
        load_spectra(tmp_path / "noq.h5")
    with h5py.File(tmp_path / "short.h5", "w") as f:
        f["spectra"], f["e_grid"], f["q_grid"] = np.ones((2, 3, 4)), np.arange(4.0), np.arange(2.0)
    with pytest.raises(DataError, match=r"shape \(3, 4\), but the grids give \(2, 4\)"):
        load_spectra(tmp_path / "short.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="cannot read"):
        load_spectra(tmp_path / "text.h5")
    with pytest.raises(DataError, match="no such file"):
        load_spectra(tmp_path / "missing.h5")


def test_reader_without_labels_and_with_mask(tmp_path):
    mask = np.zeros((3, 4), bool)
    data = load_spectra(write_spectra(tmp_path / "m.h5", np.arange(4.0), np.arange(3.0), mask=mask))
    assert data.labels is None and data.label_names is None and data.mask.shape == (3, 4)


def test_grid_mismatch_names_both_grids(tmp_path):
    a = load_spectra(write_spectra(tmp_path / "a.h5", np.linspace(2, 50, 64), np.linspace(0.5, 8, 64)))
    same = load_spectra(write_spectra(tmp_path / "b.h5", np.linspace(2, 50, 64), np.linspace(0.5, 8, 64)))
    other = load_spectra(write_spectra(tmp_path / "c.h5", np.linspace(2, 60, 64), np.linspace(0.5, 8, 64)))
    flat = load_spectra(write_spectra(tmp_path / "d.h5", np.linspace(2, 50, 64)))
    check_same_grid(a, same)
    with pytest.raises(DataError, match=r"training data are powder-map .*E 64 bins 2\.\.50 meV.*"
                                        r"encoding data are powder-map .*E 64 bins 2\.\.60 meV"):
        check_same_grid(a, other)
    with pytest.raises(DataError, match="spectrum-1d"):
        check_same_grid(a, flat)
