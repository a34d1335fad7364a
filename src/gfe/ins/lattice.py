"""Born–von Kármán (BvK) spring models of simple cubic crystals, in pure NumPy.

A model is a crystal family (fcc, bcc, rocksalt, CsCl, zincblende) in its
primitive cell, with a longitudinal and a transverse pair spring for each of
the first two neighbour shells. A pair of atoms at separation `d` (unit vector
`e`) has the 3 × 3 spring tensor `K = k_L e eᵀ + k_T (1 - e eᵀ)`; its force
constants are `Φ(0i, Rj) = -K` and the self terms follow from the acoustic sum
rule, `Φ(0i, 0i) = Σ K`, so uniform translations cost no energy. In two-species
crystals the second shell joins like atoms (A–A and B–B); both use the same
springs, which keeps every family at four spring constants.

This module is what a dataset's labels describe, and it needs no Euphonic: it
builds the force constants Euphonic is given (`supercell_force_constants`),
computes frequencies independently of Euphonic (`frequencies`, the test
reference), and rejects unstable draws (`is_stable`) before any costly work.

Units: Å, amu, eV/Å², fm, meV.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ConfigError

# ħ·sqrt(eV / (Å² amu)) in meV: converts sqrt(eigenvalues of the mass-weighted
# force constants) into phonon energies.
_EV = 1.602176634e-19  # J
_AMU = 1.66053906660e-27  # kg
_HBAR_EV_S = 6.582119569e-16  # eV s
MEV_PER_ROOT_EIGENVALUE = 1e3 * _HBAR_EV_S * math.sqrt(_EV / (1e-20 * _AMU))

# Family name -> (primitive cell in units of the cubic lattice constant,
# fractional atom positions, species index per atom, nearest-neighbour distance
# in units of the lattice constant).
_FCC_CELL = 0.5 * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
_BCC_CELL = 0.5 * np.array([[-1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
_FAMILY_DATA = {
    "fcc": (_FCC_CELL, [[0, 0, 0]], [0], math.sqrt(0.5)),
    "bcc": (_BCC_CELL, [[0, 0, 0]], [0], math.sqrt(3) / 2),
    "rocksalt": (_FCC_CELL, [[0, 0, 0], [0.5, 0.5, 0.5]], [0, 1], 0.5),
    "cscl": (np.eye(3), [[0, 0, 0], [0.5, 0.5, 0.5]], [0, 1], math.sqrt(3) / 2),
    "zincblende": (_FCC_CELL, [[0, 0, 0], [0.25, 0.25, 0.25]], [0, 1], math.sqrt(3) / 4),
}
FAMILIES = tuple(_FAMILY_DATA)
SPECIES = ("A", "B")  # invented atom labels; Euphonic gets their scattering lengths explicitly

# The numeric description of a model, in this order, as stored in datasets.
PARAMETER_NAMES = ("family", "lattice_constant", "mass_a", "mass_b", "b_a", "b_b",
                   "k_l1", "k_t1", "k_l2", "k_t2")


@dataclass(frozen=True)
class BvKModel:
    """A crystal and its springs; everything a phonon calculation needs.

    `masses` and `scattering_lengths` are per species (A, B); one-species
    families carry B equal to A so that every model has the same parameters.
    `springs[s] = (k_L, k_T)` for neighbour shell `s` (0: nearest, 1: next).
    """

    family: str
    lattice_constant: float
    masses: tuple[float, float]
    scattering_lengths: tuple[float, float]
    springs: tuple[tuple[float, float], tuple[float, float]]

    def __post_init__(self):
        if self.family not in _FAMILY_DATA:
            raise ConfigError(f"unknown crystal family {self.family!r}; choose one of {FAMILIES}")

    @property
    def cell(self) -> np.ndarray:
        """Primitive cell vectors as rows, in Å."""
        return self.lattice_constant * _FAMILY_DATA[self.family][0]

    @property
    def frac_positions(self) -> np.ndarray:
        return np.array(_FAMILY_DATA[self.family][1], dtype=float)

    @property
    def species(self) -> np.ndarray:
        """Species index (0 for A, 1 for B) of each atom in the cell."""
        return np.array(_FAMILY_DATA[self.family][2])

    @property
    def atom_masses(self) -> np.ndarray:
        return np.asarray(self.masses, dtype=float)[self.species]

    @property
    def n_atoms(self) -> int:
        return len(self.species)

    def parameters(self) -> np.ndarray:
        """The model as numbers, in the order of `PARAMETER_NAMES`."""
        (kl1, kt1), (kl2, kt2) = self.springs
        return np.array([FAMILIES.index(self.family), self.lattice_constant, *self.masses,
                         *self.scattering_lengths, kl1, kt1, kl2, kt2], dtype=float)

    def with_springs_scaled(self, factor: float) -> BvKModel:
        """The same model with every spring multiplied by `factor`, so every
        phonon energy is multiplied by sqrt(factor)."""
        return replace(self, springs=tuple((factor * kl, factor * kt) for kl, kt in self.springs))


@dataclass(frozen=True)
class Pairs:
    """Every spring of a model: atom `i` of the home cell is joined to atom `j`
    of the cell at integer offset `cells[p]` (in primitive-cell units) by the
    3 × 3 spring tensor `springs[p]`; `vectors[p]` is the separation in Å."""

    i: np.ndarray
    j: np.ndarray
    cells: np.ndarray
    vectors: np.ndarray
    springs: np.ndarray


def neighbour_pairs(model: BvKModel) -> Pairs:
    """Find the first two neighbour shells by distance and attach their springs."""
    cell, frac = model.cell, model.frac_positions
    offsets = np.array(list(itertools.product(range(-3, 4), repeat=3)))
    i, j, n = np.meshgrid(np.arange(model.n_atoms), np.arange(model.n_atoms), np.arange(len(offsets)),
                          indexing="ij")
    i, j, n = i.ravel(), j.ravel(), n.ravel()
    vectors = (offsets[n] + frac[j] - frac[i]) @ cell
    distances = np.linalg.norm(vectors, axis=1)
    nearest = _FAMILY_DATA[model.family][3] * model.lattice_constant
    shells = np.unique(np.round(distances[distances > 1e-9 * nearest] / nearest, 6))[:2] * nearest
    shell = np.full(len(distances), -1)
    for s, radius in enumerate(shells):
        shell[np.abs(distances - radius) < 1e-5 * nearest] = s
    keep = shell >= 0
    e = vectors[keep] / distances[keep, None]
    k = np.asarray(model.springs, dtype=float)[shell[keep]]  # (pairs, 2): k_L, k_T
    longitudinal = e[:, :, None] * e[:, None, :]
    tensors = k[:, 0, None, None] * longitudinal + k[:, 1, None, None] * (np.eye(3) - longitudinal)
    return Pairs(i[keep], j[keep], offsets[n[keep]], vectors[keep], tensors)


def real_space_force_constants(model: BvKModel) -> tuple[np.ndarray, np.ndarray]:
    """Force constants `Φ(0i, Rj)` grouped by cell offset R, in eV/Å².

    Returns `(cells, phi)`: integer offsets (m, 3) and matrices (m, 3n, 3n),
    with the acoustic-sum-rule self terms in the R = 0 block.
    """
    pairs = neighbour_pairs(model)
    n = model.n_atoms
    cells, index = np.unique(np.vstack([np.zeros((1, 3), int), pairs.cells]), axis=0, return_inverse=True)
    index = index.ravel()
    phi = np.zeros((len(cells), 3 * n, 3 * n))
    home = index[0]
    for p, c in enumerate(index[1:]):
        a, b = 3 * pairs.i[p], 3 * pairs.j[p]
        phi[c, a:a + 3, b:b + 3] -= pairs.springs[p]
        phi[home, a:a + 3, a:a + 3] += pairs.springs[p]
    return cells, phi


def supercell_size(model: BvKModel) -> int:
    """The smallest odd `N` for which an N × N × N supercell holds every spring
    strictly inside its Wigner–Seitz cell, so each force constant belongs to one
    periodic image and Euphonic's image search reproduces the model exactly."""
    vectors = neighbour_pairs(model).vectors
    steps = np.array([s for s in itertools.product(range(-2, 3), repeat=3) if any(s)])

    def fits(size: int) -> bool:
        lattice = size * steps @ model.cell
        return bool((np.abs(vectors @ lattice.T) / np.sum(lattice ** 2, axis=1)).max() < 0.49)

    size = 3
    while not fits(size):
        size += 2
    return size


def supercell_force_constants(model: BvKModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Force constants in Euphonic's layout: `(fc, sc_matrix, cell_origins)` with
    `fc[c, 3i+α, 3j+β] = Φ(0iα, c jβ)` (eV/Å²) for each cell `c` of an odd
    N × N × N supercell, `sc_matrix = N·1` and `cell_origins` in [0, N)³."""
    size = supercell_size(model)
    cells, phi = real_space_force_constants(model)
    origins = np.array(list(itertools.product(range(size), repeat=3)))
    slot = {tuple(o): s for s, o in enumerate(origins)}
    fc = np.zeros((len(origins), *phi.shape[1:]))
    for cell, block in zip(cells, phi):
        fc[slot[tuple(cell % size)]] += block
    return fc, size * np.eye(3, dtype=int), origins


def eigenvalues(model: BvKModel, qpts: np.ndarray) -> np.ndarray:
    """Eigenvalues ω² of the dynamical matrix at fractional q-points (n_q, 3),
    ascending, in eV/(Å² amu); a negative value is an imaginary mode."""
    cells, phi = real_space_force_constants(model)
    inverse_root_mass = np.repeat(model.atom_masses, 3) ** -0.5
    phases = np.exp(2j * np.pi * np.asarray(qpts, dtype=float) @ cells.T)
    dynamical = np.einsum("qc,cab->qab", phases, phi) * np.outer(inverse_root_mass, inverse_root_mass)
    return np.linalg.eigvalsh(dynamical)


def frequencies(model: BvKModel, qpts: np.ndarray) -> np.ndarray:
    """Phonon energies in meV at fractional q-points, ascending; imaginary modes
    are returned negative, as Euphonic does."""
    values = eigenvalues(model, qpts)
    return np.sign(values) * np.sqrt(np.abs(values)) * MEV_PER_ROOT_EIGENVALUE


def stability_qpoints(grid: int = 8) -> np.ndarray:
    """A Γ-centred grid³ of fractional q-points (it holds Γ and, for even
    `grid`, the zone-boundary points) plus a shell of 26 short wavevectors,
    which catch long-wavelength (elastic) instabilities a coarse grid misses."""
    axis = np.arange(grid) / grid
    mesh = np.array(list(itertools.product(axis, repeat=3)))
    directions = np.array([s for s in itertools.product((-1, 0, 1), repeat=3) if any(s)], dtype=float)
    return np.vstack([mesh, 0.02 * directions])


def is_stable(model: BvKModel, qpts: np.ndarray | None = None) -> bool:
    """True when no mode is imaginary at `qpts` (default `stability_qpoints()`).

    ω² may dip below zero by rounding only at Γ; anything below -1e-9 of the
    largest ω² is a real instability.
    """
    values = eigenvalues(model, stability_qpoints() if qpts is None else qpts)
    return bool(values.min() >= -1e-9 * values.max())


def max_frequency(model: BvKModel) -> float:
    """The largest phonon energy (meV) on `stability_qpoints()`; the grid holds
    the zone-boundary points where these models peak."""
    return float(frequencies(model, stability_qpoints()).max())


@dataclass(frozen=True)
class ParameterRanges:
    """Ranges for random models. Springs are drawn as ratios and then scaled so
    that the model's top phonon energy is `max_energy` (drawn uniformly in its
    range): every map then fills one fixed energy window sensibly, whatever the
    masses. Masses are drawn log-uniformly."""

    families: tuple[str, ...] = FAMILIES
    nearest_distance: tuple[float, float] = (2.3, 3.3)  # Å
    mass: tuple[float, float] = (6.0, 210.0)  # amu
    scattering_length: tuple[float, float] = (2.0, 10.0)  # fm
    transverse_ratio: tuple[float, float] = (-0.1, 0.3)  # k_T / k_L, both shells
    second_shell_ratio: tuple[float, float] = (0.05, 0.5)  # k_L2 / k_L1
    max_energy: tuple[float, float] = (25.0, 45.0)  # meV

    def __post_init__(self):
        unknown = [f for f in self.families if f not in _FAMILY_DATA]
        if not self.families or unknown:
            raise ConfigError(f"families must be a non-empty subset of {FAMILIES}; got {self.families}")


def draw_model(rng: np.random.Generator, ranges: ParameterRanges = ParameterRanges(),
               max_tries: int = 1000) -> BvKModel:
    """A random stable model. Unstable draws (imaginary modes anywhere on
    `stability_qpoints()`) are redrawn from the same generator, so the result
    depends only on the generator's state."""
    for _ in range(max_tries):
        family = ranges.families[rng.integers(len(ranges.families))]
        two_species = len(set(_FAMILY_DATA[family][2])) == 2
        a = rng.uniform(*ranges.nearest_distance) / _FAMILY_DATA[family][3]
        masses = np.exp(rng.uniform(*np.log(ranges.mass), size=2))
        lengths = rng.uniform(*ranges.scattering_length, size=2)
        if not two_species:
            masses[1], lengths[1] = masses[0], lengths[0]
        transverse = rng.uniform(*ranges.transverse_ratio, size=2)
        second = rng.uniform(*ranges.second_shell_ratio)
        target = rng.uniform(*ranges.max_energy)
        model = BvKModel(family, float(a), (float(masses[0]), float(masses[1])),
                         (float(lengths[0]), float(lengths[1])),
                         ((1.0, float(transverse[0])), (second, float(second * transverse[1]))))
        if is_stable(model):
            return model.with_springs_scaled((target / max_frequency(model)) ** 2)
    raise ConfigError(f"no stable model in {max_tries} draws; the parameter ranges are too wide: {ranges}")
