"""Encoding throughput of several processes against one (sharded encoding).

Protocol: a decoder is trained briefly (one pass over `train_samples` images,
batch 5, as in the data-efficiency benchmark; 0 keeps the random decoder), then
`samples` other images are encoded with the AMD flow from z0 = 0 (at most
`max_steps` steps) by separate `gfe encode` commands, each process with one
intra-op thread:

- `one process`: `gfe encode --shards 1`;
- `one process, N threads`: the same with OMP_NUM_THREADS=N, the other way to use N cores;
- `N processes`: `torchrun --nproc-per-node N -m gfe encode`, one shard each.

The chunk size is set so that shard boundaries fall on chunk boundaries, which
makes the merged latents bit-identical to the single-process ones (checked).
Wall time includes starting Python and loading the model and data; `encode_s`
is the encoding alone (for N processes, the slowest shard's).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..cli_args import DATA_HELP
from ..data import load_dataset
from ..errors import ConfigError
from ..latents import read_encoding
from ..samples import split
from ..train import TrainConfig, Trainer
from . import at_least, cli
from .data_efficiency import _decoder


def _train_model(x_train: np.ndarray, directory: Path, max_steps: int, seed: int, progress: bool) -> Path:
    config = TrainConfig(method="gfe-amd", latent_dim=20, epochs=1, batch_size=5, optimizer="rmsprop", lr=5e-4,
                         seed=seed, eval_options={"max_steps": max_steps})
    trainer = Trainer(config, x_train.shape[1:], decoder=_decoder(x_train.shape[1:], 20, seed), progress=progress)
    if len(x_train):
        trainer.fit(x_train)
    return trainer.save_model(directory)


def _gfe_command(launcher: list[str], args: list[str], threads: int) -> float:
    """Run `gfe ARGS` under `launcher` with `threads` intra-op threads per process; return wall seconds."""
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *launcher, "-m", "gfe", *args, "--quiet"], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"gfe {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return seconds


def _variant(name, launcher, processes, threads, model, data, out, options) -> dict:
    from ..shards import merge_shards, shard_path  # here: it imports gfe.workflows, which `gfe --help` need not

    wall = _gfe_command(launcher, ["encode", str(model), str(data), "-o", str(out), "--options", json.dumps(options),
                                   *(["--shards", "1"] if processes == 1 else [])], threads)
    shard_seconds = [read_encoding(shard_path(out, i, processes))[1]["encode_seconds"] for i in range(processes)]
    merge_shards(out, out / "merged.h5", quiet=True)
    merged, _ = read_encoding(out / "merged.h5")
    return {"name": name, "processes": processes, "threads_per_process": threads, "wall_s": wall,
            "encode_s": max(shard_seconds), "shard_encode_s": shard_seconds,
            "mean_steps": float(merged.steps.float().mean()), "merged": merged}


def run(dataset: str = "mnist", *, samples: int = 2000, train_samples: int = 100, max_steps: int = 200,
        processes: int = 2, seed: int = 0, progress: bool = True) -> dict:
    """Time encoding `samples` images with 1 process, 1 process with `processes`
    threads, and `processes` processes; return the timings and speed-ups."""
    at_least(1, samples=samples, max_steps=max_steps, processes=processes)
    at_least(0, train_samples=train_samples)
    if samples < processes:
        raise ConfigError(f"samples ({samples}) must be at least processes ({processes}): one or more per shard")
    data = load_dataset(dataset)
    x_train, x_encode = split(data.x, max(train_samples, 1), samples, seed=seed)
    options = {"chunk_size": math.ceil(samples / processes)}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = _train_model(x_train[:train_samples], tmp / "model", max_steps, seed, progress)
        np.save(tmp / "x.npy", x_encode)
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        variants = [
            _variant("one process", [], 1, 1, model, tmp / "x.npy", tmp / "one", options),
            _variant(f"one process, {processes} threads", [], 1, processes, model, tmp / "x.npy", tmp / "threads",
                     options),
            _variant(f"{processes} processes", torchrun, processes, 1, model, tmp / "x.npy", tmp / "procs", options),
        ]
    one, threads, procs = variants
    identical = all(torch.equal(getattr(procs["merged"], f), getattr(one["merged"], f))
                    for f in ("z", "loss", "steps", "nfe", "status", "t"))
    for variant in variants:
        del variant["merged"]
    return {
        "benchmark": "sharded-encoding",
        "protocol": " ".join(__doc__.split()),
        "dataset": data.name, "samples": samples, "train_samples": train_samples, "max_steps": max_steps,
        "options": options, "seed": seed, "variants": variants,
        "speedup_wall": one["wall_s"] / procs["wall_s"],
        "speedup_encode": one["encode_s"] / procs["encode_s"],
        "speedup_threads_encode": one["encode_s"] / threads["encode_s"],
        "shard_imbalance": max(procs["shard_encode_s"]) / min(procs["shard_encode_s"]),
        "merged_equals_single_process": identical,
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "platform": platform.platform(),
                    "torch": torch.__version__, "python": platform.python_version()},
    }


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "sharded-encoding", "encoding speed of N processes (torchrun) against one",
        "Train a decoder briefly, then encode SAMPLES images with one process (one thread), one process with N "
        "threads, and N processes under torchrun (one thread each); report wall and encoding times, speed-ups, "
        "and whether the merged shards equal the single-process latents.")
    q.add_argument("--dataset", default="mnist", help=DATA_HELP)
    q.add_argument("--samples", type=int, default=2000, help="images to encode")
    q.add_argument("--train-samples", type=int, default=100, help="images for the brief training (0: random decoder)")
    q.add_argument("--max-steps", type=int, default=200, help="flow step budget per sample when encoding")
    q.add_argument("--processes", type=int, default=2, help="N")
    cli.add_result_options(q)
    q.set_defaults(run=_command)


def _command(args) -> None:
    result = run(args.dataset, samples=args.samples, train_samples=args.train_samples, max_steps=args.max_steps,
                 processes=args.processes, progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)
