"""Model directories and atomic writes."""

import hashlib
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from gfe.errors import ConfigError, ModelFileError
from gfe.models import Conv1dDecoder, MLPDecoder, MLPEncoder, build_encoder
from gfe.persist import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
    load_model,
    save_model,
)

SETTINGS = {"loss": "bce", "solver": {"name": "amd", "tau": 1e4}, "scaling": {"kind": "divide", "by": 255.0}}


@pytest.fixture
def decoder():
    torch.manual_seed(0)
    return MLPDecoder(3, (4, 5), hidden=(6, 7))


@pytest.fixture
def saved(tmp_path, decoder):
    return save_model(tmp_path / "model", decoder, settings=SETTINGS)


def test_round_trip_gives_identical_outputs(tmp_path, decoder):
    encoder = build_encoder(decoder)
    directory = save_model(tmp_path / "m", decoder.double(), settings=SETTINGS, encoder=encoder)
    loaded = load_model(directory)
    assert isinstance(loaded.encoder, MLPEncoder) and loaded.settings == SETTINGS
    assert not loaded.decoder.training and not loaded.encoder.training
    assert all(p.dtype == torch.float32 for p in loaded.decoder.parameters())
    z = torch.randn(4, 3)
    assert torch.equal(loaded.decoder(z), decoder.float()(z))
    x = torch.rand(4, 4, 5)
    assert torch.equal(loaded.encoder(x), encoder(x))


def test_config_records_format_and_digest(saved, decoder):
    config = json.loads((saved / "config.json").read_text())
    assert config["format"] == "gfe-model" and config["format_version"] == 1
    assert config["decoder"] == decoder.config() and config["encoder"] is None
    assert config["weights_sha256"] == file_sha256(saved / "weights.safetensors")
    assert isinstance(config["gfe_version"], str)
    names = safetensors.torch.load_file(saved / "weights.safetensors").keys()
    assert names and all(name.startswith("decoder.") for name in names)
    assert load_model(saved).config == config


def test_saving_again_overwrites(saved):
    other = Conv1dDecoder(2, (8,), channels=(4, 3))
    save_model(saved, other, settings={})
    assert isinstance(load_model(saved).decoder, Conv1dDecoder)
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "weights.safetensors"]


def test_tampered_weights_are_refused(saved):
    path = saved / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256 digest.*modified or corrupted"):
        load_model(saved)


def _rewrite_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_truncated_weights_with_matching_digest_cannot_be_parsed(saved):
    path = saved / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    _rewrite_config(saved, weights_sha256=file_sha256(path))
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(saved)


def test_weights_that_do_not_fit_the_architecture(saved):
    _rewrite_config(saved, decoder=MLPDecoder(3, (4, 5), hidden=(6, 8)).config())
    with pytest.raises(ModelFileError, match=r"decoder.net.2.weight has shape \(7, 6\), expected \(8, 6\)"):
        load_model(saved)


def test_arrays_are_kept_in_the_weights_file_under_its_digest(tmp_path, decoder, saved):
    arrays = {"standardise.mean": np.arange(20.0).reshape(4, 5), "standardise.std": np.full((4, 5), 0.5)}
    directory = save_model(tmp_path / "m", decoder, settings={}, arrays=arrays)
    loaded = load_model(directory)
    assert sorted(loaded.arrays) == sorted(arrays)
    for name, array in arrays.items():
        assert loaded.arrays[name].dtype == np.float32
        np.testing.assert_array_equal(loaded.arrays[name], array)
    assert "arrays.standardise.mean" in safetensors.torch.load_file(directory / "weights.safetensors")
    assert load_model(saved).arrays == {}  # a model saved without arrays


def test_stray_encoder_tensors_are_refused(tmp_path, decoder):
    directory = save_model(tmp_path / "m", decoder, settings={}, encoder=build_encoder(decoder))
    _rewrite_config(directory, encoder=None)
    with pytest.raises(ModelFileError, match="tensors for no configured model"):
        load_model(directory)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: (d / "config.json").unlink(), "has no config.json"),
    (lambda d: (d / "weights.safetensors").unlink(), "has no weights.safetensors"),
    (lambda d: (d / "config.json").write_text("{not json"), "is not valid JSON"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "must hold a JSON object"),
    (lambda d: (d / "config.json").write_text('{"format": "gfe-model"}'), "lacks the keys"),
    (lambda d: _rewrite_config(d, format="keras"), "not a gfe model"),
    (lambda d: _rewrite_config(d, format_version=99), "format_version 99"),
    (lambda d: _rewrite_config(d, decoder={"type": "os.system"}), "cannot build.*unknown decoder type"),
])
def test_broken_directories_raise_model_file_error(saved, change, message):
    change(saved)
    with pytest.raises(ModelFileError, match=message):
        load_model(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelFileError, match="no model directory"):
        load_model(tmp_path / "absent")


@pytest.mark.parametrize(("settings", "message"), [
    ({"alpha": float("nan")}, "JSON-serialisable"),
    ({"x": object()}, "JSON-serialisable"),
    ([1, 2], "must be a dict"),
])
def test_bad_settings_are_refused(tmp_path, decoder, settings, message):
    with pytest.raises(ConfigError, match=message):
        save_model(tmp_path / "m", decoder, settings=settings)
    assert not (tmp_path / "m").exists()


def test_unregistered_modules_cannot_be_saved(tmp_path):
    with pytest.raises(ConfigError, match="only registered types"):
        save_model(tmp_path / "m", nn.Linear(2, 3), settings={})


def test_atomic_writes_replace_and_leave_no_temporaries(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    with atomic_path(tmp_path / "b.npy") as temporary:
        np.save(temporary, np.arange(3))
    assert np.array_equal(np.load(tmp_path / "b.npy"), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.npy"]


def test_failed_writer_keeps_old_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(path) as temporary:
        temporary.write_bytes(b"partial")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_file_sha256_streams_large_files(tmp_path):
    data = bytes(range(256)) * 10_000  # larger than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_importing_persist_leaves_the_umask_alone():
    """Not even set and restored: a thread creating a file meanwhile would get the wrong mode."""
    code = ("import os; calls = []; umask = os.umask; os.umask = lambda mask: calls.append(mask) or umask(mask); "
            "umask(0o027); import gfe.persist; print(calls, oct(umask(0o022)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "0o27"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_writes_give_files_the_permissions_open_gives(tmp_path):
    """0o666 less the umask, as for any new file, not mkstemp's owner-only 0o600."""
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
