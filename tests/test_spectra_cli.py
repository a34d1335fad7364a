"""`gfe data ins` on the command line: a tiny dataset, and the missing-extra error."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from gfe.cli import main
from gfe.ins import LABEL_NAMES, load_spectra

needs_euphonic = pytest.mark.skipif(
    importlib.util.find_spec("euphonic") is None,
    reason='needs the optional extra gfe[ins] (Euphonic): pip install "gfe[ins]"')
pytestmark = pytest.mark.filterwarnings("ignore:More than one OpenMP library:UserWarning")


@needs_euphonic
def test_data_ins_writes_a_tiny_spectra_file(tmp_path, capsys):
    out = tmp_path / "ins.h5"
    assert main(["data", "ins", "--n", "2", "--kind", "spectrum-1d", "--out", str(out), "--seed", "3",
                 "--counts", "1000", "--directions", "10", "--quiet"]) == 0
    data = load_spectra(out)
    assert data.kind == "spectrum-1d" and data.x.shape == (2, 64) and data.labels.shape == (2, len(LABEL_NAMES))
    assert data.attrs["seed"] == 3 and data.attrs["settings"]["counts"] == 1000
    assert data.x.min() >= 0 and np.array_equal(data.x, np.round(data.x))
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ins.h5"]  # no temporary left behind


def test_data_ins_without_euphonic_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "euphonic", None)  # makes `import euphonic` fail
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "ins", "--n", "1", "--out", str(tmp_path / "x.h5"), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gfe: error: generating INS spectra needs Euphonic") and 'pip install "gfe[ins]"' in err
    assert not (tmp_path / "x.h5").exists()
