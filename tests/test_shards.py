"""Sharded, resumable encoding and merging (`gfe encode --shard/--shards`, `gfe merge`)."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

from gfe import cli, shards, workflows
from gfe.models import MLPDecoder
from gfe.latents import read_latents
from gfe.persist import load_model, save_model

N_SAMPLES, N_FEATURES = 14, 12
ENCODE = {"flow": "first", "solver": "amd", "loss": "bce", "max_steps": 40, "gtol": 1e-4}
ALIGNED = '{"chunk_size": 7}'  # two chunks of 7: shard boundaries fall on chunk boundaries


def _model(directory, seed):
    torch.manual_seed(seed)
    return save_model(directory, MLPDecoder(3, (N_FEATURES,), hidden=(16,)), settings={"encode": ENCODE})


@pytest.fixture
def job(tmp_path):
    """(model A, model B, data file, other data file) in `tmp_path`."""
    rng = np.random.default_rng(0)
    for name in ("x.npy", "y.npy"):
        np.save(tmp_path / name, rng.uniform(size=(N_SAMPLES, N_FEATURES)).astype(np.float32))
    return _model(tmp_path / "a", 0), _model(tmp_path / "b", 1), tmp_path / "x.npy", tmp_path / "y.npy"


def gfe(*args):
    """Run the command line; return its exit status."""
    try:
        return cli.main([str(a) for a in args] + ["--quiet"])
    except SystemExit as exit:
        return exit.code


def arrays(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in ("z", "loss", "steps", "nfe", "status", "t")}


def assert_same_arrays(a, b):
    for name, value in arrays(a).items():
        assert np.array_equal(value, arrays(b)[name]), name


def snapshot(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


class CountingEncoder:
    """Stands in for `workflows.encode_samples` (one call per chunk, here per
    shard), counting calls; raises KeyboardInterrupt at call `kill_at`."""

    def __init__(self, kill_at=None):
        self.calls, self.kill_at = 0, kill_at
        self.real = workflows.encode_samples

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_two_shards_equal_single_process_encoding_exactly(tmp_path, job):
    model, _, data, _ = job
    assert gfe("encode", model, data, "-o", tmp_path / "single.h5", "--options", ALIGNED) == 0
    for index in (1, 0):  # any order, e.g. separate cluster jobs
        assert gfe("encode", model, data, "-o", tmp_path / "out", "--shard", f"{index}/2", "--options", ALIGNED) == 0
    assert gfe("merge", tmp_path / "out", "-o", tmp_path / "merged.h5") == 0
    assert_same_arrays(tmp_path / "single.h5", tmp_path / "merged.h5")
    _, meta = read_latents(tmp_path / "merged.h5")  # provenance lets 'gfe decode' check the model
    _, single = read_latents(tmp_path / "single.h5")
    assert meta["model_weights_sha256"] == single["model_weights_sha256"] == load_model(model).config["weights_sha256"]
    assert meta["input_sha256"] == single["input_sha256"] and meta["merged_from"]["shards"] == 2


def test_shards_off_chunk_boundaries_equal_single_process_encoding_exactly(tmp_path, job):
    """Three shards of one 14-sample chunk (the default chunk size): each sample is
    encoded among other batch-mates than in one process, bit-identically."""
    model, _, data, _ = job
    assert gfe("encode", model, data, "-o", tmp_path / "single.h5") == 0
    for index in range(3):
        assert gfe("encode", model, data, "-o", tmp_path / "out", "--shard", f"{index}/3") == 0
    assert gfe("merge", tmp_path / "out", "-o", tmp_path / "merged.h5") == 0
    assert_same_arrays(tmp_path / "single.h5", tmp_path / "merged.h5")


def test_torchrun_ranks_take_their_own_shards(tmp_path, job, monkeypatch):
    model, _, data, _ = job
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert gfe("encode", model, data, "-o", tmp_path / "out", "--options", ALIGNED) == 0
    assert [p.name for p in sorted((tmp_path / "out").glob("shard-*"))] == ["shard-00001-of-00002.h5"]
    assert gfe("encode", model, data, "-o", tmp_path / "five", "--shards", "5") == 0
    assert [p.name[6:11] for p in sorted((tmp_path / "five").glob("shard-*"))] == ["00001", "00003"]
    assert gfe("encode", model, data, "-o", tmp_path / "bad", "--shard", "0/2") == 2  # ranks choose, not --shard


def test_killed_run_resumes_without_redoing_finished_shards(tmp_path, job, monkeypatch):
    model, _, data, _ = job
    out = tmp_path / "out"
    killer = CountingEncoder(kill_at=2)
    monkeypatch.setattr(workflows, "encode_samples", killer)
    assert gfe("encode", model, data, "-o", out, "--shards", "3") == 130  # killed while encoding shard 1
    done = snapshot(out)
    assert sorted(done) == ["manifest.json", "shard-00000-of-00003.h5"]  # no half-written shard, no temp file

    counter = CountingEncoder()
    monkeypatch.setattr(workflows, "encode_samples", counter)
    assert gfe("encode", model, data, "-o", out, "--shards", "3") == 0
    assert counter.calls == 2  # shards 1 and 2 only
    assert all(snapshot(out)[name] == done[name] for name in done)  # shard 0 untouched
    assert gfe("encode", model, data, "-o", out, "--shards", "3") == 0 and counter.calls == 2  # all done
    assert gfe("merge", out, "-o", tmp_path / "merged.npz") == 0
    with np.load(tmp_path / "merged.npz") as merged:
        assert merged["z"].shape == (N_SAMPLES, 3)


def test_shard_bounds_cover_the_samples_in_order():
    for n, count, chunk in [(14, 2, 7), (14, 3, 7), (10, 4, 3), (5, 5, 4096), (4097, 2, 4096), (9000, 2, 4096)]:
        bounds = [shards.shard_bounds(n, count, i, chunk) for i in range(count)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bounds, bounds[1:]))
        if -(-n // chunk) >= count:  # enough chunks: boundaries on chunk boundaries
            assert all(start % chunk == 0 for start, _ in bounds)
    assert shards.shard_bounds(9000, 2, 0, 4096) == (0, 8192)


@pytest.mark.parametrize("spec", ["3/2", "2/2", "0/0", "-1/2", "1", "a/b"])
def test_bad_shard_spec_is_refused_before_writing(tmp_path, job, capsys, spec):
    model, _, data, _ = job
    assert gfe("encode", model, data, "-o", tmp_path / "out", f"--shard={spec}") == 2
    err = capsys.readouterr().err
    assert err.startswith("gfe: error: ") and "INDEX" in err
    assert not (tmp_path / "out").exists()


def test_bad_shard_spec_message():
    with pytest.raises(shards.ConfigError, match=r"shard 3/2: needs COUNT >= 1 and INDEX in 0..COUNT-1 .*0/2 to 1/2"):
        shards.parse_shard("3/2")


@pytest.mark.parametrize(("other", "pattern"), [("model", "model \\(weights sha256\\)"),
                                                 ("input", "input samples"), ("count", "shard count"),
                                                 ("settings", "encode settings")])
def test_folder_of_another_job_is_refused_and_left_untouched(tmp_path, job, capsys, other, pattern):
    model, model_b, data, data_b = job
    out = tmp_path / "out"
    assert gfe("encode", model, data, "-o", out, "--shard", "0/2") == 0
    before = snapshot(out)
    args = {"model": (model_b, data, "--shard", "0/2"), "input": (model, data_b, "--shard", "0/2"),
            "count": (model, data, "--shards", "3"), "settings": (model, data, "--shard", "1/2", "--options",
                                                                 '{"gtol": 1e-6}')}[other]
    assert gfe("encode", *args[:2], "-o", out, *args[2:]) == 2
    err = capsys.readouterr().err
    assert "holds shards of another encoding job" in err and "nothing was written" in err
    assert re.search(pattern, err)
    assert snapshot(out) == before


def test_merge_with_a_missing_shard_is_refused(tmp_path, job, capsys):
    model, _, data, _ = job
    assert gfe("encode", model, data, "-o", tmp_path / "out", "--shard", "0/2") == 0
    assert gfe("merge", tmp_path / "out", "-o", tmp_path / "merged.h5") == 2
    err = capsys.readouterr().err
    assert "lacks shard(s) 1/2; nothing was written" in err and "--shards 2" in err
    assert not (tmp_path / "merged.h5").exists()


def test_merge_refuses_a_shard_of_another_job(tmp_path, job, capsys):
    model, model_b, data, _ = job
    for folder, which in (("out", model), ("other", model_b)):
        for index in (0, 1):
            assert gfe("encode", which, data, "-o", tmp_path / folder, "--shard", f"{index}/2") == 0
    shard = shards.shard_path(tmp_path / "other", 1, 2)
    shard.replace(shards.shard_path(tmp_path / "out", 1, 2))
    assert gfe("merge", tmp_path / "out", "-o", tmp_path / "merged.h5") == 2
    assert "does not belong to the job" in capsys.readouterr().err
    assert not (tmp_path / "merged.h5").exists()


def test_other_bad_requests(tmp_path, job, capsys):
    model, _, data, _ = job
    assert gfe("encode", model, data, "-o", tmp_path / "out", "--shards", "15") == 2
    assert "cannot split 14 samples into 15 shards" in capsys.readouterr().err
    (tmp_path / "file.h5").write_bytes(b"keep")
    assert gfe("encode", model, data, "-o", tmp_path / "file.h5", "--shards", "2") == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file.h5").read_bytes() == b"keep"
    assert gfe("merge", tmp_path, "-o", tmp_path / "m.h5") == 2
    assert "holds no manifest.json" in capsys.readouterr().err
