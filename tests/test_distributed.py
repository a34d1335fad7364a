"""Data-parallel training: two gloo processes under torchrun train the same model
as one process, write files once, and resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gfe
from gfe.distributed import Replicas, process_group, split_bounds
from gfe.errors import ConfigError
from gfe.models import MLPDecoder
from gfe.persist import load_model
from gfe.train import TrainConfig, Trainer
from gfe.workflows import train_model

# 14 samples, 3 held out: 11 training samples in batches of 5, 5 and 1, so the
# shares are uneven (3 + 2) and, in the last batch, one process has no rows.
# SGD, because Adam and RMSprop divide by the root of the squared gradient: for
# parameters whose gradient is ~0 they turn rounding noise into full-size steps.
# Two batches are encoded per flow call (encode_ahead), so the groups are 5 + 5 and 1.
# The decoder trains on noisy latents: each replica must draw its rows' share of the batch's noise.
TRAIN = dict(epochs=2, latent_dim=3, batch_size=5, optimizer="sgd", lr=0.5, val_fraction=0.2,
             encode_options={"max_steps": 20}, encode_ahead=2, latent_noise=0.3, latent_penalty=0.01)
SRC = Path(gfe.__file__).resolve().parents[1]


def cli_args(data, out, *flags, **settings):
    args = [data, "--out", out, *flags]
    for name, value in settings.items():
        args += ["--" + name.replace("_", "-"), json.dumps(value) if isinstance(value, dict) else value]
    return [str(a) for a in args]


def torchrun(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "gfe", *args], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(14, 3)) @ rng.uniform(size=(3, 16)) / 3
    path = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(path, np.clip(x, 0, 1).astype(np.float32).reshape(14, 4, 4))
    return path


def history(directory):
    with open(directory / "history.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_two_processes_train_like_one_and_resume(tmp_path, data):
    config = TrainConfig(**{k: v for k, v in TRAIN.items() if k != "val_fraction"})
    single = train_model(data, tmp_path / "single", config, val_fraction=TRAIN["val_fraction"],
                         quiet=True).decoder.state_dict()

    # two processes: one epoch, then resumed from rank 0's checkpoint for the second
    out = tmp_path / "ddp"
    first = torchrun("train", *cli_args(data, out, "--quiet", **{**TRAIN, "epochs": 1}))
    assert first.stdout == ""  # --quiet on every rank
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-00001", "latest.json"]
    resumed = torchrun("train", *cli_args(data, out, "--resume", **TRAIN))  # not quiet: rank 0 reports
    assert resumed.stdout.count("model written to") == 1
    assert resumed.stdout.count("resuming") == 1

    ddp = load_model(out).decoder.state_dict()
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value, atol=1e-6, rtol=1e-5, msg=name)
    reference, got = history(tmp_path / "single"), history(out)
    assert [r["epoch"] for r in got] == [1, 2] and all(r["samples"] == 11 for r in got)
    for a, b in zip(reference, got):
        for key in ("train_loss", "val_loss", "mean_steps", "mean_nfe"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (one process on each, over NCCL)")
def test_two_gpus_train_like_one(tmp_path, data):
    config = TrainConfig(**{k: v for k, v in TRAIN.items() if k != "val_fraction"})
    single = train_model(data, tmp_path / "single", config, val_fraction=TRAIN["val_fraction"], quiet=True,
                         device="cuda").decoder.state_dict()
    torchrun("train", *cli_args(data, tmp_path / "ddp", "--quiet", "--device", "cuda", **TRAIN))
    ddp = load_model(tmp_path / "ddp").decoder.state_dict()
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value.cpu(), atol=1e-5, rtol=1e-4, msg=name)


def test_replicas_split_every_batch_and_average_to_the_batch_mean():
    for n in (1, 5, 11):
        for world in (1, 2, 3):
            shares = [Replicas(rank, world).rows(n) for rank in range(world)]
            assert [i for s in shares for i in range(n)[s]] == list(range(n))
            sizes = [s.stop - s.start for s in shares]
            assert max(sizes) - min(sizes) <= 1
            # DDP averages over processes: mean_r(scale * sum_r) is the batch mean
            losses = np.arange(1.0, n + 1)
            shared = np.mean([Replicas(r, world).loss_scale(n) * losses[s].sum() for r, s in enumerate(shares)])
            assert shared == pytest.approx(losses.mean())
    assert split_bounds(5, 2, 0) == (0, 3) and split_bounds(5, 2, 1) == (3, 5)


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group() as replicas:
        assert replicas == Replicas() and replicas.is_writer and replicas.sum(1.5, 2.0) == (1.5, 2.0)
        module = torch.nn.Linear(2, 2)
        assert replicas.wrap(module) is module


def test_world_size_without_torchrun_is_a_config_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="start several processes with torchrun"):
        with process_group():
            pass


def test_the_autoencoder_baseline_is_refused_in_distributed_training():
    with pytest.raises(ConfigError, match="autoencoder baseline trains in one process"):
        Trainer(TrainConfig(method="ae", latent_dim=3), (4, 4), decoder=MLPDecoder(3, (4, 4), hidden=(8,)),
                progress=False, replicas=Replicas(0, 2))
