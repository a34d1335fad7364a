"""Crash safety: a training run killed with SIGKILL at many moments, including in
the middle of checkpoint writes, resumes to exactly the parameters of an
uninterrupted run, and no half-written checkpoint or model is ever visible.

Each run is a child forked from a fork server that has imported torch and gfe
but never computed (so a restart costs milliseconds, and no thread pool or lock
of the test process is inherited half-held: forking the pytest process itself
hung intermittently once earlier tests had started torch's OpenMP threads, whose
pool a forked child cannot use).
Kills land at delays spread over the next epoch or so, and at points inside
`Trainer.save_checkpoint` where the child, patched in the child, reports over a
pipe and pauses: with a temporary file half written, after the model but before
the optimizer state, after `latest.json` moved on but before old checkpoints are
gone, and in the middle of deleting them. If the machine speeds up and a run
finishes before a timed kill, it is checked and a fresh run takes the remaining
kills. Every wait is bounded: a child that hangs fails the test, never CI.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from gfe import load_model
from gfe.models import MLPDecoder
from gfe.persist import CONFIG_FILE, WEIGHTS_FILE
from gfe.checkpoint import LATEST, verified_checkpoint
from gfe.train import Trainer
from gfe.train_config import TrainConfig

pytestmark = pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(),
                                reason="needs the forkserver start method (POSIX)")

SHAPE = (6,)
CONFIG = TrainConfig(method="gfe-amd", latent_dim=2, epochs=12, batch_size=10, optimizer="adam", lr=1e-2,
                     encode_options={"max_steps": 20}, eval_options={"max_steps": 20})
X = np.random.default_rng(0).uniform(0.1, 0.9, size=(40, *SHAPE)).astype(np.float32)
TIMED_KILLS = 16  # plus the injected ones below: 24 kill points
HANG_SECONDS = 120  # a child that neither pauses nor finishes by then has hung
# (what to patch, which file or call) for the kills inside a checkpoint write
INJECTED_KILLS = [
    ("half-written", WEIGHTS_FILE), ("half-written", CONFIG_FILE), ("half-written", "optimizer.safetensors"),
    ("half-written", "trainer.json"), ("half-written", LATEST), ("after-model", None),
    ("after-latest", None), ("mid-cleanup", None),
]


def new_trainer(checkpoints: Path) -> Trainer:
    torch.manual_seed(0)
    return Trainer(CONFIG, SHAPE, decoder=MLPDecoder(2, SHAPE, hidden=(8,)), checkpoint_dir=checkpoints,
                   progress=False)


def _pause_at(point, tell_parent) -> None:
    """In the child: patch the checkpoint writer so that it reports and sleeps at `point`."""
    import gfe.train

    kind, file = point

    def pause():
        tell_parent.send("paused")
        time.sleep(HANG_SECONDS)

    if kind == "half-written":
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst).name == file:  # cut the temporary in half: a write interrupted midway
                data = Path(src).read_bytes()
                Path(src).write_bytes(data[: len(data) // 2])
                pause()
            real_replace(src, dst)

        os.replace = replace
    elif kind == "after-model":
        real_save_model = gfe.train.save_model
        gfe.train.save_model = lambda *args, **kwargs: (real_save_model(*args, **kwargs), pause())[0]
    elif kind == "after-latest":
        real_rmtree = shutil.rmtree
        shutil.rmtree = lambda path, ignore_errors=False: pause() if ignore_errors else real_rmtree(path)
    else:  # mid-cleanup: one file of an old checkpoint deleted, the rest not
        real_rmtree = shutil.rmtree

        def rmtree(path, ignore_errors=False):
            if ignore_errors:
                (Path(path) / CONFIG_FILE).unlink()
                pause()
            real_rmtree(path, ignore_errors=ignore_errors)

        shutil.rmtree = rmtree


def _child(run_dir: Path, point, tell_parent) -> None:
    """Train (or resume) to the end and write the final model; never returns."""
    code = 1
    try:
        # fsync guards against power loss; a killed process's writes survive in
        # the page cache without it, and skipping it makes checkpoints ~10x faster
        os.fsync = lambda fd: None
        if point is not None:
            _pause_at(point, tell_parent)
        checkpoints = run_dir / "checkpoints"
        trainer = (Trainer.resume(checkpoints, progress=False) if (checkpoints / LATEST).exists()
                   else new_trainer(checkpoints))
        trainer.fit(X)
        trainer.save_model(run_dir / "model")
        code = 0
    finally:
        os._exit(code)


@pytest.fixture(scope="module")
def forkserver():
    """A multiprocessing context whose children fork from a clean server process."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "gfe.train"])
    return context


def run_child(context, run_dir: Path, *, kill_after: float | None = None, point=None) -> str:
    """Start a training child; SIGKILL it after `kill_after` seconds or when it
    pauses at `point`. Returns "killed" or "finished"."""
    listen, tell_parent = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(run_dir, point, tell_parent))
    child.start()
    tell_parent.close()
    try:
        paused = listen.poll(HANG_SECONDS if kill_after is None else kill_after)
        if paused or kill_after is not None:
            child.kill()
        child.join(HANG_SECONDS)
        if child.exitcode is None:
            child.kill()
            child.join()
            pytest.fail(f"a training child hung for {HANG_SECONDS} s (point={point}, kill_after={kill_after})")
    finally:
        listen.close()
    if child.exitcode == -9:
        return "killed"
    assert child.exitcode == 0, f"the training child failed with exit code {child.exitcode}"
    return "finished"


def assert_nothing_half_written(run_dir: Path) -> int:
    """Every file under its real name is complete, and `latest.json` names a
    checkpoint that verifies and resumes. Returns the epochs it holds (0 if none)."""
    for path in run_dir.rglob("*"):
        if path.name.startswith("."):  # temporaries of interrupted atomic writes
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            safetensors.torch.load_file(str(path))
    if (run_dir / "model").exists():
        load_model(run_dir / "model")
    checkpoints = run_dir / "checkpoints"
    if not (checkpoints / LATEST).exists():
        return 0
    target = verified_checkpoint(checkpoints)
    resumed = Trainer.resume(checkpoints, progress=False)
    assert f"epoch-{len(resumed.history):05d}" == target.name
    return len(resumed.history)


def _records(history) -> list[dict]:
    return [{k: v for k, v in vars(r).items() if k not in ("seconds", "val_loss")} for r in history]


def assert_same_as_reference(run_dir: Path, reference: Trainer) -> None:
    assert assert_nothing_half_written(run_dir) == CONFIG.epochs
    final = load_model(run_dir / "model").decoder
    for (name, expected), got in zip(reference.decoder.state_dict().items(), final.state_dict().values()):
        assert torch.equal(expected, got), (run_dir, name)
    assert _records(Trainer.resume(run_dir / "checkpoints", progress=False).history) == _records(reference.history)


def test_sigkill_at_many_moments_resumes_to_the_uninterrupted_result(tmp_path, forkserver):
    reference = new_trainer(tmp_path / "reference")
    reference.fit(X)
    run_child(forkserver, tmp_path / "warm-up")  # starts the fork server
    start = time.perf_counter()  # a child's uninterrupted run times one epoch plus its checkpoint
    assert run_child(forkserver, tmp_path / "timing") == "finished"
    epoch_seconds = (time.perf_counter() - start) / CONFIG.epochs
    assert_same_as_reference(tmp_path / "timing", reference)

    # timed kills land from the resume up to a quarter into the epoch after next
    schedule = [{"kill_after": 1.25 * epoch_seconds * (i + 0.5) / TIMED_KILLS} for i in range(TIMED_KILLS)]
    schedule += [{"point": point} for point in INJECTED_KILLS]
    pending = [schedule[i] for i in np.random.default_rng(1).permutation(len(schedule))]
    runs = [tmp_path / "run-1"]
    epochs_done = 0
    for _ in range(2 * len(schedule)):  # a kill the run outpaced is retried on a fresh run
        if not pending:
            break
        if run_child(forkserver, runs[-1], **pending[0]) == "killed":
            pending.pop(0)
        epochs = assert_nothing_half_written(runs[-1])
        assert epochs >= epochs_done, "a kill lost a complete checkpoint"
        epochs_done = epochs
        if (runs[-1] / "model").exists():  # finished, if faster than timed: check it, start afresh
            assert_same_as_reference(runs[-1], reference)
            runs.append(tmp_path / f"run-{len(runs) + 1}")
            epochs_done = 0
    assert not pending, f"{len(pending)} of {len(schedule)} kills never landed before a run finished"

    if not (runs[-1] / "model").exists():
        assert run_child(forkserver, runs[-1]) == "finished"
    assert_same_as_reference(runs[-1], reference)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="counts threads in /proc (Linux)")
def test_importing_gfe_starts_no_threads():
    """So that a process may fork after `import gfe` (torchode, which starts
    OpenMP's pool when imported, is imported only when dopri5 runs)."""
    import subprocess
    import sys

    code = ("import torch; count = lambda: int([l for l in open('/proc/self/status') if l.startswith('Threads')][0]"
            ".split()[1]); before = count(); import gfe, gfe.train, gfe.workflows, gfe.cli; print(before, count())")
    before, after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True).stdout.split()
    assert after == before
