"""Peak memory of `gfe encode` against the number of samples: streamed (what
`gfe encode` does) it stays flat; read whole (for contrast) it grows with the data.

Each size gets a generated .npy file on disk and is encoded in a fresh Python
process, whose own peak resident memory (VmHWM) is the measure, so runs cannot
inflate each other. The decoder is small and the step count bounded: this
measures memory, not encoding quality.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..cli_args import int_list
from ..latents import NpyAppender
from ..models import MLPDecoder
from ..persist import save_model
from . import at_least, cli, known
from .data_efficiency import machine

MODES = ("stream", "whole")


def _peak_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec;
    `ru_maxrss` (the fallback) also counts the parent's memory at fork."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _write_data(path: Path, n: int, features: int, seed: int, rows: int = 10_000) -> None:
    """Uniform [0, 1] float32 samples, written a block at a time (so this process stays small too)."""
    rng = np.random.default_rng(seed)
    with contextlib.closing(NpyAppender(path, n)) as out:
        for lo in range(0, n, rows):
            out.append(rng.uniform(size=(min(rows, n - lo), features)).astype("<f4"))


def _encode_in_child(mode: str, model: Path, data: Path, output: Path, chunk_rows: int) -> dict:
    """Run one encoding in a fresh interpreter with one intra-op thread (two
    threads on a shared 2-core machine made the seconds vary; measured:
    docs/benchmarks.md); returns what it reports."""
    command = [sys.executable, "-m", "gfe.bench.stream_memory", mode, str(model), str(data), str(output),
               str(chunk_rows)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"the encoding child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sizes=(10_000, 100_000), *, features: int = 256, latent_dim: int = 8, max_steps: int = 5,
        chunk_rows: int = 4096, modes=MODES, seed: int = 0, progress: bool = True) -> dict:
    """Peak memory and seconds of encoding `sizes` samples in each mode."""
    at_least(1, sizes=sizes, features=features, latent_dim=latent_dim, max_steps=max_steps, chunk_rows=chunk_rows)
    known("modes", modes, MODES)
    results = []
    with tempfile.TemporaryDirectory(prefix="gfe-bench-stream.") as directory:
        root = Path(directory)
        torch.manual_seed(seed)
        model = save_model(root / "model", MLPDecoder(latent_dim, (features,), hidden=(32,)), settings={
            "encode": {"flow": "first", "solver": "amd", "loss": "bce", "max_steps": max_steps}})
        for n in sizes:
            data = root / f"x{n}.npy"
            _write_data(data, n, features, seed)
            for mode in modes:
                report = _encode_in_child(mode, model, data, root / "z.h5", chunk_rows)
                row = {"samples": n, "mode": mode, "data_mib": data.stat().st_size / 2**20, **report}
                results.append(row)
                if progress:
                    print(json.dumps(row), flush=True)
            data.unlink()
    return {
        "benchmark": "stream-memory",
        "protocol": " ".join(__doc__.split()),
        "settings": {"features": features, "latent_dim": latent_dim, "max_steps": max_steps,
                     "chunk_rows": chunk_rows, "output": ".h5", "decoder_hidden": [32]},
        "results": results,
        "machine": {**machine(), "threads": 1},  # the children run with OMP_NUM_THREADS=1
    }


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "stream-memory", "peak memory of 'gfe encode' against the number of samples",
        "Generate SIZES samples on disk (.npy, float32) and encode each in a fresh process, streamed in chunks "
        "(what 'gfe encode' does) and read whole (for contrast), with a small decoder and few steps; report each "
        "process's peak resident memory and seconds. Streamed, the peak stays flat.")
    q.add_argument("--sizes", type=int_list, default=[10_000, 100_000], help="numbers of samples")
    q.add_argument("--features", type=int, default=256, help="features per sample")
    q.add_argument("--chunk-rows", type=int, default=4096, help="samples per chunk (the encoder's chunk_size)")
    q.add_argument("--max-steps", type=int, default=5, help="flow steps per sample (bounds the run time)")
    cli.add_result_options(q)
    q.set_defaults(run=_command)


def _command(args) -> None:
    result = run(args.sizes, features=args.features, chunk_rows=args.chunk_rows, max_steps=args.max_steps,
                 progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)


def _child(mode: str, model: str, data: str, output: str, chunk_rows: str) -> dict:
    from ..data import load_dataset
    from ..encode import encode
    from ..latents import write_latents
    from ..persist import load_model
    from ..workflows import encode_file

    after_imports = _peak_mib()
    start = time.perf_counter()
    options = {"chunk_size": int(chunk_rows)}
    if mode == "stream":
        encode_file(model, data, output, options=options, quiet=True)
    else:  # the path before streaming: every sample in memory, then one write
        loaded = load_model(model)
        write_latents(output, encode(loaded.decoder, load_dataset(data).x, **loaded.settings["encode"], **options))
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": _peak_mib(),
            "peak_rss_after_imports_mib": after_imports}


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] not in MODES:
        sys.exit("usage: python -m gfe.bench.stream_memory {stream|whole} MODEL DATA OUTPUT CHUNK_ROWS")
    print(json.dumps(_child(*sys.argv[1:])))
