"""Start-up: `import gfe` and `gfe --help` import no heavy library (`gfe bench
startup` measures the seconds), and gfe works without torchode but for dopri5."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import gfe

HEAVY = ("torch", "sklearn", "matplotlib", "h5py", "torchode")


def loaded_after(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_import_gfe_loads_no_heavy_library():
    assert loaded_after("import gfe; gfe.__version__, gfe.__all__") == []


def test_gfe_help_loads_no_heavy_library():
    code = "import gfe.cli\ntry:\n    gfe.cli.main(['--help'])\nexcept SystemExit:\n    pass"
    assert loaded_after(code) == []


def test_gfe_info_on_a_model_loads_no_heavy_library(tmp_path):
    from gfe.models import MLPDecoder
    from gfe.persist import save_model

    model = save_model(tmp_path / "m", MLPDecoder(2, (4,), hidden=(8,)), settings={"encode": {"loss": "mse"}})
    code = f"import gfe.cli\ngfe.cli.main(['info', {str(model)!r}])"
    assert loaded_after(code) == []


def test_a_command_builds_only_its_own_options():
    assert loaded_after("import gfe.cli; gfe.cli.build_parser(['decode', '--help'])") == []
    assert "torch" in loaded_after("import gfe.cli; gfe.cli.build_parser(['train', '--help'])")


def test_the_facade_exports_stay_what_they_name():
    import gfe.encode  # noqa: F401  (the submodule would set the attribute gfe.encode)
    import gfe.train  # noqa: F401

    assert callable(gfe.encode) and gfe.encode.__module__ == "gfe.encode"
    assert gfe.GFE.__name__ == "GFE" and set(gfe.__all__) <= set(dir(gfe))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        gfe.nothing  # noqa: B018


def test_gfe_works_without_torchode_but_for_dopri5():
    code = ("import sys; sys.modules['torchode'] = None\n"
            "import numpy as np, gfe\n"
            "from gfe.models import MLPDecoder\n"
            "decoder, x = MLPDecoder(2, (4,), hidden=(8,)), np.full((3, 4), 0.5)\n"
            "print(gfe.encode(decoder, x, max_steps=5).status_counts())\n"
            "try:\n    gfe.encode(decoder, x, solver='dopri5')\n"
            "except gfe.ConfigError as err:\n    print(err)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "solver 'dopri5' needs torchode" in done.stdout and "pip install torchode" in done.stdout
