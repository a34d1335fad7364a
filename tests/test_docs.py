"""The ```python examples of README.md and docs/*.md run: each file's blocks in
order, as one script, in a fresh temporary folder (so files they write vanish)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if python_blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_example__"}
    for number, block in enumerate(python_blocks(path), 1):
        exec(compile(block, f"{path.name} (python block {number})", "exec"), namespace)


def test_the_guide_and_reference_have_examples():
    for name in ("user-guide.md", "api.md"):
        assert len(python_blocks(ROOT / "docs" / name)) >= 3, name
