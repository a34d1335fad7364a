"""What the `gfe bench` commands share: their parsers' form and common options,
and how a result is written. Each benchmark module registers its own command
with `add_parser(bench)`; `gfe.cli` lists the modules."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_args import DATA_HELP
from ..persist import atomic_write_text


def parser(bench, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """The parser of `gfe bench NAME`, showing each option's default."""
    return bench.add_parser(name, help=help, description=description,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_result_options(q, json_help: str = "write the results here") -> None:
    """Where a benchmark's JSON goes (printed if not given), and --quiet."""
    q.add_argument("--json", type=Path, default=None, help=json_help)
    q.add_argument("--quiet", action="store_true", help="print nothing but errors")


def flow_parser(bench, name: str, help: str, description: str, n_test: int) -> argparse.ArgumentParser:
    """A benchmark parser with the options the flow benchmarks (gradients, solvers) share."""
    q = parser(bench, name, help, description)
    q.add_argument("--dataset", default="mnist", help=DATA_HELP)
    q.add_argument("--n-train", type=int, default=1000, help="training samples (one pass)")
    q.add_argument("--n-test", type=int, default=n_test, help="held-out samples")
    add_result_options(q)
    return q


def emit(result: dict, path: Path | None, quiet: bool) -> None:
    """Write `result` as JSON to `path` atomically, or print it unless quiet."""
    text = json.dumps(result, indent=2)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text + "\n")
    elif not quiet:
        print(text)
