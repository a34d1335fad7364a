"""Untrusted files: loading a model, checkpoint or latents file never runs code
(no pickle, no `torch.load`), and tampered, truncated or wrong-version files are
refused with a `ModelFileError` or `DataError` that says what is wrong."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import gfe
from gfe.data import read_array
from gfe.errors import DataError, ModelFileError
from gfe.latents import read_latents, write_latents
from gfe.models import MLPDecoder
from gfe.persist import save_model
from gfe.checkpoint import LATEST
from gfe.train import Trainer
from gfe.train_config import TrainConfig

SHAPE = (5,)
X = np.random.default_rng(0).uniform(0.1, 0.9, size=(12, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """A one-epoch checkpoint of an Adam-trained GFE decoder (Adam has optimizer state)."""
    directory = tmp_path_factory.mktemp("run") / "checkpoints"
    torch.manual_seed(0)
    config = TrainConfig(latent_dim=2, epochs=1, batch_size=6, optimizer="adam", encode_options={"max_steps": 5})
    Trainer(config, SHAPE, decoder=MLPDecoder(2, SHAPE, hidden=(4,)), checkpoint_dir=directory,
            progress=False).fit(X)
    return directory


@pytest.fixture
def damaged(checkpoints, tmp_path) -> Path:
    """A private copy of the checkpoint directory to damage."""
    import shutil

    return Path(shutil.copytree(checkpoints, tmp_path / "checkpoints"))


def _target(directory: Path) -> Path:
    return directory / json.loads((directory / LATEST).read_text())["checkpoint"]


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_latest(directory: Path, **changes) -> None:
    record = json.loads((directory / LATEST).read_text())
    record.update(changes)
    (directory / LATEST).write_text(json.dumps(record))


def _reshape_start_statistics(directory: Path) -> None:
    """Rewrite the learned start's statistics with a wrong shape and record matching digests,
    as a tool that edits checkpoints consistently would."""
    import safetensors.torch

    from gfe.persist import file_sha256

    path = _target(directory) / "optimizer.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    tensors["start/gram"] = torch.zeros(3, 3, dtype=torch.float64)
    safetensors.torch.save_file(tensors, str(path))
    record = json.loads((directory / LATEST).read_text())
    record["sha256"]["optimizer.safetensors"] = file_sha256(path)
    (directory / LATEST).write_text(json.dumps(record))


CHECKPOINT_DAMAGE = {
    "start statistics of another shape": (_reshape_start_statistics, "unusable learned-start statistics"),
    "flipped optimizer byte": (lambda d: _flip_last_byte(_target(d) / "optimizer.safetensors"), "sha256"),
    "flipped weights byte": (lambda d: _flip_last_byte(_target(d) / "weights.safetensors"), "sha256"),
    "truncated optimizer": (lambda d: _truncate(_target(d) / "optimizer.safetensors"), "sha256"),
    "truncated trainer.json": (lambda d: _truncate(_target(d) / "trainer.json"), "sha256"),
    "edited history": (lambda d: (_target(d) / "trainer.json").write_text(
        (_target(d) / "trainer.json").read_text().replace('"epoch": 1', '"epoch": 7')), "sha256"),
    "edited config": (lambda d: (_target(d) / "config.json").write_text(
        (_target(d) / "config.json").read_text().replace('"adam"', '"sgd"')), "sha256"),
    "missing trainer.json": (lambda d: (_target(d) / "trainer.json").unlink(), "lacks trainer.json"),
    "wrong version": (lambda d: _edit_latest(d, format_version=2), "format_version 2"),
    "not a checkpoint record": (lambda d: _edit_latest(d, format="something-else"), "not a gfe checkpoint"),
    "path escape": (lambda d: _edit_latest(d, checkpoint="../../etc"), "must name a checkpoint epoch-N"),
    "latest.json not JSON": (lambda d: (d / LATEST).write_bytes(b"\x80garbage"), "not valid JSON"),
    "truncated latest.json": (lambda d: _truncate(d / LATEST), "not valid JSON"),
    "no latest.json": (lambda d: (d / LATEST).unlink(), "latest.json is missing"),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoints_are_refused(damaged, damage):
    change, message = CHECKPOINT_DAMAGE[damage]
    change(damaged)
    with pytest.raises(ModelFileError, match=message):
        Trainer.resume(damaged, progress=False)


def test_intact_checkpoint_resumes(checkpoints):
    assert len(Trainer.resume(checkpoints, progress=False).history) == 1


@pytest.fixture
def no_unpickling(monkeypatch):
    """Make every unpickling route fail loudly for the duration of a test."""
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)


def test_loading_models_checkpoints_and_latents_never_unpickles(tmp_path, checkpoints, no_unpickling):
    model = Trainer.resume(checkpoints, progress=False).save_model(tmp_path / "model")
    loaded = gfe.load_model(model)
    encoding = gfe.encode(loaded.decoder, X[:3], loss="bce", max_steps=3)
    for suffix in (".h5", ".npz", ".npy"):
        path = write_latents(tmp_path / f"latents{suffix}", encoding, {"format": "gfe-latents"})
        z, _ = read_latents(path)
        np.testing.assert_array_equal(z, encoding.z.numpy())


class Payload:
    """An object whose unpickling would create a file: the classic pickle exploit."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_pickled_arrays_are_refused_without_running_them(tmp_path, suffix):
    marker = tmp_path / "exploited"
    hostile = np.array([Payload(marker)], dtype=object)
    path = tmp_path / f"hostile{suffix}"
    if suffix == ".npy":
        np.save(path, hostile, allow_pickle=True)
    else:
        np.savez(path, z=hostile)
    for reader in (read_array, read_latents):
        with pytest.raises(DataError, match="cannot read|pickle"):
            reader(path)
    assert not marker.exists()


def test_config_cannot_name_a_class_or_allocate_before_checking(tmp_path):
    torch.manual_seed(0)
    directory = save_model(tmp_path / "m", MLPDecoder(2, SHAPE, hidden=(4,)), settings={})
    config_path = directory / "config.json"
    original = json.loads(config_path.read_text())
    hostile = [
        ({"type": "subprocess.Popen", "args": ["touch", str(tmp_path / "x")]}, "unknown decoder type"),
        ({**original["decoder"], "activation": "builtins.eval"}, "unknown activation"),
        ({**original["decoder"], "__class__": "os.system"}, "bad arguments"),
        # 10^12 weights would need 4 TB: refused by shape, before anything is allocated
        ({**original["decoder"], "hidden": [10**6, 10**6]}, "does not match the architecture"),
    ]
    for decoder, message in hostile:
        config_path.write_text(json.dumps({**original, "decoder": decoder}))
        with pytest.raises(ModelFileError, match=message):
            gfe.load_model(directory)
    assert not (tmp_path / "x").exists()
