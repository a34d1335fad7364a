"""Argument types and help text shared by the `gfe` commands (`gfe.cli`) and the
benchmarks' parsers (`gfe.bench`), apart from both so neither imports the other."""

from __future__ import annotations

import argparse
import json

DATA_HELP = ("data: a .npy, .npz, .h5/.hdf5, .csv or .tsv/.tab file (one sample per row or leading index; an "
             "'axis' array beside the data in an .npz or HDF5 group is its axis; an HDF5 file with a 'spectra' "
             "dataset is read as INS spectra, with its grid and mask), 'digits' (scikit-learn's embedded 8x8 "
             "digits) or 'mnist=PATH' (a local MNIST .npz). CSV/TSV: blank lines and # comments are skipped, "
             "and a trailing delimiter on every line; the first line is a header if a cell is text or its first "
             "cell is empty (pandas), its numbers after the first cell are the axis; a first line of numbers "
             "is the axis if it is strictly monotonic and some line after it is not (refused as ambiguous if "
             "every line is); the first column is an index, dropped, if the header's first cell is empty or "
             "names it, or every row has one more cell than the header")

DEVICE_HELP = ("where to compute: cpu (the default), cuda (the current GPU; under torchrun, the process's "
               "LOCAL_RANK-th GPU), cuda:N or mps. Results on the CPU are the same bit for bit whatever the "
               "default; other devices round differently (docs/devices.md)")


def int_list(text: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, got {text!r}")
    return values


def seed_list(text: str) -> list[int]:
    return int_list(text, minimum=0)


def json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"gtol\": 1e-3}}', got {text!r}")
    return value
