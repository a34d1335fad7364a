"""Synthetic inelastic neutron scattering (INS) spectra for training and testing.

`generate` writes powder maps S(|Q|, E) or 1-D spectra of random Born–von Kármán
crystals to HDF5; `load_spectra` reads them back (`open_spectra` a chunk at a
time). Generating needs the optional extra `gfe[ins]` (Euphonic, GPL-3.0),
imported only when `generate` runs; reading needs nothing beyond gfe's core
dependencies.
"""

from .spectra import LABEL_NAMES, Settings, generate
from .io import Grid, SpectraDataset, check_same_grid, grid_of, is_spectra_file, load_spectra, open_spectra
from .lattice import FAMILIES, BvKModel, ParameterRanges, draw_model, frequencies, is_stable

__all__ = [
    "FAMILIES", "LABEL_NAMES", "BvKModel", "Grid", "ParameterRanges", "Settings", "SpectraDataset",
    "check_same_grid", "draw_model", "frequencies", "generate", "grid_of", "is_spectra_file", "is_stable",
    "load_spectra", "open_spectra",
]
