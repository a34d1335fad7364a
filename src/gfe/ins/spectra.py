"""Synthetic inelastic neutron scattering (INS) spectra from random BvK crystals.

Each sample is a random stable `BvKModel` (see `lattice`) at a random
temperature. Euphonic (an optional, GPL-3.0 dependency, imported only here and
only when a function runs) computes the coherent one-phonon structure factor
with Debye–Waller damping; this module adds the Bose population, the powder
average, binning and instrument resolution:

- **powder average**: for each |Q| bin, `directions` wavevectors of random
  length within the bin, on a Fibonacci sphere turned by a random rotation,
  so that the bin holds the spherical average of S(Q, E);
- **Bose factor**: energy loss (E > 0) weighs a mode by n + 1, energy gain
  (E < 0) by n, n = 1 / (exp(E / kT) - 1); so S(Q, -E) = exp(-E/kT) S(Q, E)
  holds mode by mode (detailed balance);
- **binning**: intensity per meV (mbarn / meV per atom, averaged over the |Q|
  shell); 1-D spectra are maps integrated over |Q| (mbarn / (meV Å) per atom);
- **resolution**: Gaussian, with a fixed FWHM in |Q| and an FWHM in E of
  `e_fwhm[0] + e_fwhm[1]·|E|`, applied as exact bin-overlap matrices so that
  intensity is conserved (except what spreads past the window's edges);
- **noise** (optional): each spectrum scaled to `counts` expected counts in
  total and drawn from a Poisson distribution.

The lowest energies are cropped rather than masked: the default window starts
at 2 meV, about 4% of its 50 meV top, because acoustic modes near Bragg points
carry intensity ∝ kT/E², which would put most of a map's intensity into a few
pixels at the lowest energies.

Every sample draws from its own generator, spawned from `seed`, so a file is
the same for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import multiprocessing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..persist import atomic_path, gfe_version
from .io import FORMAT, FORMAT_VERSION, KINDS
from .lattice import (FAMILIES, PARAMETER_NAMES, SPECIES, BvKModel, ParameterRanges, draw_model, max_frequency,
                      supercell_force_constants)

LABEL_NAMES = (*PARAMETER_NAMES, "temperature", "max_energy")
_BOLTZMANN_MEV_PER_K = 8.617333262e-2
# Modes below this energy (meV) get no intensity: they are Γ-point acoustic
# modes whose 1/E structure factor diverges, far below any energy window.
_MIN_MODE_ENERGY = 0.01


def euphonic():
    """Import Euphonic, or say how to install it (a `ConfigError`, which the
    command line prints as one line, not a traceback)."""
    try:
        import euphonic as module
    except ImportError as err:
        raise ConfigError('generating INS spectra needs Euphonic (GPL-3.0), an optional extra: '
                          'pip install "gfe[ins]"') from err
    return module


@dataclass(frozen=True)
class Settings:
    """Everything that shapes a dataset besides the seed; stored in the file.

    `q_range` (Å⁻¹) and `e_range` (meV) are the outer bin edges. An `e_range`
    reaching below zero includes energy gain. FWHMs of zero switch resolution
    off. `dw_grid` is the Monkhorst–Pack grid (per axis) for Debye–Waller
    factors.
    """

    kind: str = "powder-map"
    q_range: tuple[float, float] = (0.5, 8.0)
    q_bins: int = 64
    e_range: tuple[float, float] = (2.0, 50.0)
    e_bins: int = 64
    directions: int = 500
    temperature: tuple[float, float] = (5.0, 300.0)
    q_fwhm: float = 0.1
    e_fwhm: tuple[float, float] = (0.5, 0.03)
    counts: float | None = None
    dw_grid: int = 6
    ranges: ParameterRanges = field(default_factory=ParameterRanges)

    def __post_init__(self):
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, not {self.kind!r}")
        for name in ("q_range", "e_range", "temperature"):
            low, high = getattr(self, name)
            if not low < high:
                problems.append(f"{name} must be (low, high) with low < high; got {(low, high)}")
        if self.q_range[0] <= 0 or self.temperature[0] <= 0:
            problems.append("q_range and temperature must be positive")
        for name in ("q_bins", "e_bins", "directions", "dw_grid"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.q_fwhm < 0 or min(self.e_fwhm) < 0:
            problems.append(f"resolution widths must be >= 0; got q_fwhm={self.q_fwhm}, e_fwhm={self.e_fwhm}")
        if self.counts is not None and not self.counts > 0:
            problems.append(f"counts must be positive or None; got {self.counts}")
        if problems:
            raise ConfigError("invalid INS settings: " + "; ".join(problems))

    @property
    def q_edges(self) -> np.ndarray:
        return np.linspace(*self.q_range, self.q_bins + 1)

    @property
    def e_edges(self) -> np.ndarray:
        return np.linspace(*self.e_range, self.e_bins + 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def euphonic_force_constants(model: BvKModel):
    """The model as a `euphonic.ForceConstants` (the invented species A and B)."""
    eu = euphonic()
    ureg = eu.ureg
    crystal = eu.Crystal(model.cell * ureg("angstrom"), model.frac_positions,
                         np.array(SPECIES)[model.species], model.atom_masses * ureg("amu"))
    fc, sc_matrix, origins = supercell_force_constants(model)
    return eu.ForceConstants(crystal, fc * ureg("eV/angstrom**2"), sc_matrix, origins)


def _fibonacci_sphere(n: int) -> np.ndarray:
    """`n` nearly evenly spread unit vectors (n, 3)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = math.pi * (1 + math.sqrt(5)) * k
    r = np.sqrt(1 - z * z)
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal 3 × 3 matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def powder_qpoints(model: BvKModel, q_edges: np.ndarray, directions: int, rng: np.random.Generator) -> np.ndarray:
    """Fractional q-points (n_Q · directions, 3) for the powder average,
    `directions` consecutive points per |Q| bin."""
    sphere = _fibonacci_sphere(directions)
    lengths = rng.uniform(q_edges[:-1, None], q_edges[1:, None], size=(len(q_edges) - 1, directions))
    cartesian = np.concatenate([length[:, None] * (sphere @ _random_rotation(rng)) for length in lengths])
    return cartesian @ model.cell.T / (2 * math.pi)  # Q = q_frac · reciprocal, reciprocal = 2π cell⁻ᵀ


def mode_intensities(model: BvKModel, qpts: np.ndarray, temperature: float, *,
                     dw_grid: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per mode: energy E (meV), and the Bose-weighted intensities for energy
    loss at +E (n + 1) and gain at -E (n), in mbarn per atom; shapes (n_q, 3·n_atoms).

    The temperature reaches Euphonic through the Debye–Waller object; the Bose
    factor is applied here, explicitly. Modes below 0.01 meV get no intensity.

    Euphonic runs serially: gfe loads torch, whose OpenMP runtime Euphonic
    refuses to share (it would warn and go serial anyway). Parallelism comes
    from worker processes instead.
    """
    eu = euphonic()
    ureg = eu.ureg
    fc = euphonic_force_constants(model)
    grid = eu.util.mp_grid([dw_grid] * 3)
    lengths = {label: b * ureg("fm") for label, b in zip(SPECIES, model.scattering_lengths)}
    # 1/E at E = 0 (Γ): Euphonic's Debye–Waller sum skips such modes, and their
    # structure factors are zeroed below.
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.filterwarnings("ignore", message="More than one OpenMP library", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="spglib")  # Euphonic's own call
        dw = fc.calculate_qpoint_phonon_modes(grid, asr=None, reduce_qpts=False, n_threads=1) \
            .calculate_debye_waller(temperature * ureg("K"))
        modes = fc.calculate_qpoint_phonon_modes(qpts, asr=None, reduce_qpts=False, n_threads=1)
        sf = modes.calculate_structure_factor(scattering_lengths=lengths, dw=dw)
    energies = sf.frequencies.to("meV").magnitude
    intensity = sf.structure_factors.to("mbarn").magnitude
    valid = (energies > _MIN_MODE_ENERGY) & np.isfinite(intensity)
    energies = np.where(valid, energies, 0.0)
    intensity = np.where(valid, intensity, 0.0)
    with np.errstate(over="ignore"):
        bose = 1 / np.expm1(np.maximum(energies, _MIN_MODE_ENERGY) / (_BOLTZMANN_MEV_PER_K * temperature))
    return energies, intensity * (bose + 1), intensity * bose


def bin_powder_map(energies: np.ndarray, loss: np.ndarray, gain: np.ndarray, q_bins: int,
                   e_edges: np.ndarray) -> np.ndarray:
    """Average mode intensities over each |Q| bin's directions and bin them in
    energy (loss at +E, gain at -E), per meV; rows of the inputs are q-points,
    `len / q_bins` consecutive ones per |Q| bin (as `powder_qpoints` orders them)."""
    per_bin = energies.shape[0] // q_bins
    q_index = np.repeat(np.arange(q_bins), per_bin * energies.shape[1])
    q_index = np.concatenate([q_index, q_index])
    e_all = np.concatenate([energies.ravel(), -energies.ravel()])
    weights = np.concatenate([loss.ravel(), gain.ravel()])
    binned, _, _ = np.histogram2d(q_index, e_all, bins=(np.arange(q_bins + 1) - 0.5, e_edges), weights=weights)
    return binned / (per_bin * np.diff(e_edges))


def resolution_matrix(edges: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    """`R[j, i]`: the share of bin j's intensity that a Gaussian of FWHM
    `fwhm[j]` centred on bin j puts into bin i (exact overlap via erf, so any
    width works and nothing is lost but past the edges); zero width keeps it."""
    centres = (edges[:-1] + edges[1:]) / 2
    sigma = np.asarray(fwhm, dtype=float) / (2 * math.sqrt(2 * math.log(2)))
    matrix = np.eye(len(centres))
    wide = sigma > 0
    if wide.any():
        z = (edges[None, :] - centres[wide, None]) / (math.sqrt(2) * sigma[wide, None])
        cdf = 0.5 * (1 + np.vectorize(math.erf)(z))
        matrix[wide] = np.diff(cdf, axis=1)
    return matrix


def simulate(seed: np.random.SeedSequence, s: Settings) -> tuple[np.ndarray, np.ndarray]:
    """One spectrum (float32) and its labels (float64), from `seed` alone."""
    rng = np.random.default_rng(seed)
    model = draw_model(rng, s.ranges)
    temperature = rng.uniform(*s.temperature)
    qpts = powder_qpoints(model, s.q_edges, s.directions, rng)
    energies, loss, gain = mode_intensities(model, qpts, temperature, dw_grid=s.dw_grid)
    spectrum = bin_powder_map(energies, loss, gain, s.q_bins, s.e_edges)
    e_centres = (s.e_edges[:-1] + s.e_edges[1:]) / 2
    spectrum = spectrum @ resolution_matrix(s.e_edges, s.e_fwhm[0] + s.e_fwhm[1] * np.abs(e_centres))
    if s.kind == "powder-map":
        spectrum = resolution_matrix(s.q_edges, np.full(s.q_bins, s.q_fwhm)).T @ spectrum
    else:
        spectrum = spectrum.sum(axis=0) * np.diff(s.q_edges)[0]
    if s.counts is not None:
        total = spectrum.sum()  # zero only when no mode reaches the window
        spectrum = rng.poisson(spectrum * (s.counts / total if total > 0 else 0.0)).astype(float)
    labels = np.concatenate([model.parameters(), [temperature, max_frequency(model)]])
    return spectrum.astype(np.float32), labels


def generate(n: int, *, out, kind: str = "powder-map", seed: int = 0, workers: int = 1,
             progress: bool = True, **settings) -> Path:
    """Generate `n` spectra and write them atomically to the HDF5 file `out`.

    `settings` are the fields of `Settings` (q_range, q_bins, e_range, e_bins,
    directions, temperature, q_fwhm, e_fwhm, counts, dw_grid, ranges). The file
    is identical for the same seed and settings whatever `workers` is; see
    `gfe.ins.io` for its layout. Returns the path written.
    """
    if int(n) < 1:
        raise ConfigError(f"n must be at least 1; got {n}")
    if int(workers) < 1:
        raise ConfigError(f"workers must be at least 1; got {workers}")
    try:
        config = Settings(kind=kind, **settings)
    except TypeError as err:
        raise ConfigError(f"unknown INS setting: {err}; known: {[f.name for f in dataclasses.fields(Settings)]}") \
            from err
    eu = euphonic()
    seeds = np.random.SeedSequence(seed).spawn(int(n))
    task = functools.partial(simulate, s=config)
    with contextlib.ExitStack() as stack:
        if workers == 1:
            stream = map(task, seeds)
        else:
            # spawn, not fork: the parent may hold torch's and Euphonic's thread pools
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(int(workers)))
            stream = pool.imap(task, seeds, chunksize=max(1, len(seeds) // (8 * int(workers))))
        results = list(tqdm(stream, total=len(seeds), desc=f"INS {kind}", unit="spectrum", disable=not progress))
    out = Path(out)
    with atomic_path(out) as temporary, h5py.File(temporary, "w") as f:
        _write(f, config, seed, results, eu.__version__)
    return out


def _write(f: h5py.File, config: Settings, seed: int, results, euphonic_version: str) -> None:
    spectra = f.create_dataset("spectra", data=np.stack([spectrum for spectrum, _ in results]))
    spectra.attrs["units"] = "counts" if config.counts is not None else (
        "mbarn/meV per atom, averaged over each |Q| shell" if config.kind == "powder-map"
        else "mbarn/(meV Å) per atom, integrated over |Q|")
    axes = [("e", config.e_edges, "meV")]
    if config.kind == "powder-map":
        axes.insert(0, ("q", config.q_edges, "1/angstrom"))
    for name, edges, unit in axes:
        f.create_dataset(f"{name}_edges", data=edges).attrs["units"] = unit
        f.create_dataset(f"{name}_grid", data=(edges[:-1] + edges[1:]) / 2).attrs["units"] = unit
    labels = f.create_dataset("labels", data=np.stack([label for _, label in results]))
    labels.attrs["label_names"] = list(LABEL_NAMES)
    labels.attrs["family_names"] = list(FAMILIES)  # the "family" label indexes this list
    f.attrs.update({
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": config.kind, "seed": seed,
        "settings": config.to_json(), "gfe_version": gfe_version(), "euphonic_version": euphonic_version,
        "numpy_version": np.__version__, "h5py_version": h5py.__version__,
    })
