"""The import contracts in pyproject.toml ([tool.importlinter]) hold: no module
imports one in a layer above it or the package façade `gfe`, and no imports
form a cycle. Run here so that the README's `python -m pytest` (what CI runs)
checks them; `lint-imports` gives the same report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gfe

ROOT = Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def test_imports_keep_the_contracts():
    # the gfe these tests import (this checkout's src/), whatever PYTHONPATH or install found it
    source = str(Path(gfe.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", LINT, "--no-cache"],  # reads ROOT/pyproject.toml
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"import contracts broken:\n{result.stdout}\n{result.stderr}"
