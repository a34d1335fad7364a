"""How long the command line and `import gfe` take to start: each command run
in fresh interpreters, the rounds interleaved (so a busy moment of a shared
machine slows every command alike), the median reported beside a bare
`python -c pass`. Each command is also run once more to list which heavy
libraries it loaded, since start-up time is mostly import time. `baseline`, the
`src` folder of another gfe checkout, runs the same commands in the same rounds
for a before-and-after comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..models import MLPDecoder
from ..persist import save_model
from ..errors import ConfigError
from . import at_least, cli
from .data_efficiency import machine

HEAVY = ("torch", "sklearn", "matplotlib", "h5py", "torchode", "safetensors", "numpy")
GOAL_HELP_SECONDS = 0.5  # issue 17's goal for `gfe --help`


def _commands(model: Path) -> dict[str, list[str]]:
    """Name → arguments after the interpreter; "gfe ..." runs as `python -m gfe ...`."""
    return {
        "python -c pass": ["-c", "pass"],
        "import gfe": ["-c", "import gfe"],
        "gfe --help": ["-m", "gfe", "--help"],
        "gfe train --help": ["-m", "gfe", "train", "--help"],
        "gfe info MODEL": ["-m", "gfe", "info", str(model)],
    }


def _environment(src: Path) -> dict[str, str]:
    """The environment with the gfe in `src` first on the path, so the children import it."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}


def _seconds(args: list[str], env: dict) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def _loaded(args: list[str], env: dict) -> list[str]:
    """The heavy libraries a command imports: it runs as it would, then lists them."""
    code = args[1] if args[0] == "-c" else (
        f"import sys, runpy; sys.argv = {['gfe', *args[2:]]!r}\n"
        "try:\n    runpy.run_module('gfe', run_name='__main__')\nexcept SystemExit:\n    pass")
    probe = f"{code}\nimport sys, json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(repeat: int = 7, baseline: Path | None = None, progress: bool = True) -> dict:
    at_least(1, repeat=repeat)
    sources = {"this gfe": Path(__file__).resolve().parents[2]}
    if baseline is not None:
        if not (Path(baseline) / "gfe" / "__init__.py").is_file():
            raise ConfigError(f"baseline must be the src folder of a gfe checkout; {baseline} has no gfe/__init__.py")
        sources["baseline"] = Path(baseline).resolve()
    with tempfile.TemporaryDirectory() as folder:
        model = save_model(Path(folder) / "model", MLPDecoder(2, (16,), hidden=(8,)), settings={"encode": {}})
        runs = [(source, name, args, _environment(src)) for source, src in sources.items()
                for name, args in _commands(model).items()]
        times = {(source, name): [] for source, name, _, _ in runs}
        for _ in range(repeat):
            for source, name, args, env in runs:
                times[source, name].append(_seconds(args, env))
        rows = [{"source": source, "command": name, "median_seconds": float(np.median(times[source, name])),
                 "seconds_each": times[source, name], "loads": _loaded(args, env)} for source, name, args, env in runs]
    if progress:
        for row in rows:
            print(f"{row['source']:>8} {row['command']:>18}: {row['median_seconds']:.3f} s (median of {repeat}); "
                  f"loads {', '.join(row['loads']) or 'none of ' + ', '.join(HEAVY)}", flush=True)
    help_seconds = float(np.median(times["this gfe", "gfe --help"]))
    return {"benchmark": "startup", "repeat": repeat, "baseline": None if baseline is None else str(baseline),
            "goal_help_seconds": GOAL_HELP_SECONDS, "help_within_goal": help_seconds <= GOAL_HELP_SECONDS,
            "machine": machine(), "results": rows}


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "startup", "start-up time of the command line and of 'import gfe'",
        "Run 'gfe --help', 'gfe train --help', 'gfe info MODEL', 'import gfe' and a bare 'python -c pass' in "
        "fresh interpreters, the rounds interleaved; report the median seconds of each and the heavy libraries "
        "(PyTorch, scikit-learn, matplotlib, h5py, torchode, ...) each loads.")
    q.add_argument("--repeat", type=int, default=7, help="rounds of every command")
    q.add_argument("--baseline", type=Path, default=None, metavar="SRC",
                   help="the src folder of another gfe checkout (e.g. before a change), timed in the same rounds")
    cli.add_result_options(q)
    q.set_defaults(run=lambda args: cli.emit(run(args.repeat, args.baseline, progress=not args.quiet), args.json,
                                             args.quiet))
