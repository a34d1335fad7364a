"""The INS spectra file format and its reader; reading needs no Euphonic.

An HDF5 file holds:

- `spectra`: float32, (n, n_Q, n_E) for powder maps or (n, n_E) for 1-D spectra;
- `e_grid` (and `q_grid` for maps): bin centres; `e_edges` / `q_edges`: bin edges;
  energies in meV, |Q| in Å⁻¹;
- `labels`: float64 (n, k) with the attribute `label_names` (optional in files
  from elsewhere, such as measured spectra to be encoded);
- `mask`: optional, bool with the shape of one spectrum, True where a pixel is
  to be used (gfe's generator crops its energy window instead of masking, so it
  writes none);
- file attributes: `format`, `format_version`, `kind` and provenance.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataError
from ..samples import Dataset, Samples, same_axis

FORMAT = "gfe-ins"
FORMAT_VERSION = 1
KINDS = ("powder-map", "spectrum-1d")
_KIND_OF_NDIM = {3: "powder-map", 2: "spectrum-1d"}  # spectra's ndim, with the sample axis


@dataclass(frozen=True)
class SpectraDataset(Dataset):
    """A `gfe.samples.Dataset` of INS spectra plus their axes and labels.

    `q_grid` is None for 1-D spectra, whose `axis` is `e_grid`; `labels`, `label_names` and `mask` are None
    when the file has none. `attrs` holds the file's attributes (provenance,
    with the generator's `settings` decoded from JSON).
    """

    kind: str
    e_grid: np.ndarray
    q_grid: np.ndarray | None
    labels: np.ndarray | None
    label_names: tuple[str, ...] | None
    mask: np.ndarray | None
    attrs: dict


def _describe(data: SpectraDataset | Grid) -> str:
    def axis(name, grid, unit):
        return f"{name} {len(grid)} bins {grid[0]:g}..{grid[-1]:g} {unit}"

    axes = [axis("E", data.e_grid, "meV")]
    if data.q_grid is not None:
        axes.insert(0, axis("|Q|", data.q_grid, "1/Å"))
    return f"{data.kind} ({', '.join(axes)})"


@dataclass(frozen=True)
class Grid:
    """The axes of spectra without the spectra: what a model trained on them records."""

    kind: str
    e_grid: np.ndarray
    q_grid: np.ndarray | None

    def to_record(self) -> dict:
        return {"kind": self.kind, "e_grid": self.e_grid.tolist(),
                "q_grid": None if self.q_grid is None else self.q_grid.tolist()}

    @classmethod
    def from_record(cls, record: dict) -> Grid:
        q = record.get("q_grid")
        return cls(record["kind"], np.asarray(record["e_grid"], float), None if q is None else np.asarray(q, float))


def grid_of(data: SpectraDataset) -> Grid:
    return Grid(data.kind, data.e_grid, data.q_grid)


def check_same_grid(a: SpectraDataset | Grid, b: SpectraDataset | Grid, *,
                    names=("training data", "encoding data")) -> None:
    """Raise `DataError` unless `a` and `b` share kind and (|Q|, E) bins.

    A decoder trained on one grid maps latents to that grid only: encoding
    spectra binned differently would silently compare mismatched pixels.
    """
    if not (a.kind == b.kind and same_axis(a.e_grid, b.e_grid) and same_axis(a.q_grid, b.q_grid)):
        raise DataError(f"the spectra are on different grids: {names[0]} are {_describe(a)}, "
                        f"{names[1]} are {_describe(b)}; rebin one set or generate both with the same settings")


def _attrs(f: h5py.File) -> dict:
    attrs = {key: (value.item() if isinstance(value, np.generic) else value) for key, value in f.attrs.items()}
    if "settings" in attrs:
        attrs["settings"] = json.loads(attrs["settings"])
    return attrs


def _read(f: h5py.File, path: Path) -> SpectraDataset:
    """Everything but the spectra, which stay in the file (`x` is the HDF5 dataset)."""
    missing = [name for name in ("spectra", "e_grid") if not isinstance(f.get(name), h5py.Dataset)]
    if missing:
        raise DataError(f"{path} is not an INS spectra file: it lacks the dataset(s) {missing} "
                        f"(has: {sorted(f) or 'nothing'})")
    x = f["spectra"]
    e_grid = np.asarray(f["e_grid"][()], dtype=float)
    if x.ndim not in (2, 3) or x.shape[0] == 0:
        raise DataError(f"{path}: spectra must have shape (n, E) or (n, Q, E) with n >= 1; got {x.shape}")
    kind = _KIND_OF_NDIM[x.ndim]
    if "kind" in f.attrs and f.attrs["kind"] != kind:
        raise DataError(f"{path}: kind attribute is {f.attrs['kind']!r} but spectra have shape {x.shape}")
    q_grid = None
    if kind == "powder-map":
        if "q_grid" not in f:
            raise DataError(f"{path}: 2-D spectra {x.shape} need a q_grid dataset of |Q| bin centres")
        q_grid = np.asarray(f["q_grid"][()], dtype=float)
    expected = x.shape[1:]
    got = (len(e_grid),) if q_grid is None else (len(q_grid), len(e_grid))
    if expected != got:
        raise DataError(f"{path}: each spectrum has shape {expected}, but the grids give {got}")
    labels = label_names = mask = None
    if "labels" in f:
        labels = np.asarray(f["labels"][()], dtype=float)
        label_names = tuple(str(name) for name in f["labels"].attrs.get("label_names", ()))
        if labels.ndim != 2 or labels.shape[0] != x.shape[0] or len(label_names) != labels.shape[1]:
            raise DataError(f"{path}: labels {labels.shape} with {len(label_names)} label_names do not "
                            f"fit {x.shape[0]} spectra (need shape ({x.shape[0]}, k) and k names)")
    if "mask" in f:
        mask = np.asarray(f["mask"][()], dtype=bool)
        if mask.shape != expected:
            raise DataError(f"{path}: mask has shape {mask.shape}, but each spectrum has shape {expected}")
    return SpectraDataset(x=x, name=str(path), scaling={"kind": "none"}, kind=kind, e_grid=e_grid,
                          q_grid=q_grid, labels=labels, label_names=label_names, mask=mask, attrs=_attrs(f),
                          axis=e_grid if q_grid is None else None)  # 1-D spectra: energies select channels


def is_spectra_file(path) -> bool:
    """Whether `path` is an HDF5 file holding a `spectra` dataset (so it is read
    with `load_spectra`, grids and mask included)."""
    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5") or not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get("spectra"), h5py.Dataset)
    except OSError:
        return False  # the ordinary reader reports what is wrong with the file


@contextlib.contextmanager
def open_spectra(path) -> Iterator[Samples]:
    """An INS spectra file as `gfe.samples.Samples`: grids, labels and mask read,
    the spectra read as they are indexed while the block runs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    with contextlib.ExitStack() as stack:
        try:
            samples = Samples(_read(stack.enter_context(h5py.File(path, "r")), path))
        except OSError as err:
            raise DataError(f"cannot read {path} as HDF5: {err}") from err
        yield samples


def load_spectra(path) -> SpectraDataset:
    """Read an INS spectra file (see the module docstring for the layout)."""
    with open_spectra(path) as samples:
        return samples.load()
