"""Devices: names checked with clear errors, `--device cpu` (the default) changes
nothing, and, where a CUDA GPU is present, training, encoding, decoding and the
estimator run on it and their files load anywhere. The GPU tests are skipped
without one; `bench/gpu_check.py` runs them on a lent GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfe.cli import main
from gfe.devices import resolve_device
from gfe.errors import ConfigError
from gfe.estimator import GFE
from gfe.models import MLPDecoder
from gfe.persist import load_model
from gfe.train import TrainConfig, Trainer
from gfe.workflows import decode_file, encode_file, train_model

CONFIG = dict(latent_dim=2, epochs=2, batch_size=8, loss="mse", encode_options={"max_steps": 20},
              encode_ahead=2)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.py runs these on one)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("devices") / "x.npy"
    np.save(path, (rng.uniform(size=(48, 3)) @ rng.uniform(size=(3, 12))).astype(np.float32))
    return path


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", 3.5])
def test_an_unknown_device_is_a_config_error(name):
    with pytest.raises(ConfigError, match="unknown device|not supported"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_says_so(data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="sees no CUDA GPU here; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(data), "--out", str(tmp_path / "m"), "--device", "cuda:0"])
    assert exit_.value.code == 2 and not (tmp_path / "m").exists()
    assert capsys.readouterr().err.startswith("gfe: error: device 'cuda:0' asked for")


def test_device_cpu_is_the_default_bit_for_bit(data, tmp_path):
    models = [train_model(data, tmp_path / name, TrainConfig(**CONFIG), quiet=True, **kwargs) and tmp_path / name
              for name, kwargs in (("default", {}), ("cpu", {"device": "cpu"}))]
    weights = [(m / "weights.safetensors").read_bytes() for m in models]
    assert weights[0] == weights[1]
    for model, kwargs in zip(models, ({}, {"device": "cpu"})):
        encode_file(model, data, tmp_path / f"{model.name}.npy", quiet=True, **kwargs)
    assert np.array_equal(np.load(tmp_path / "default.npy"), np.load(tmp_path / "cpu.npy"))


@gpu
def test_training_on_a_gpu_writes_a_model_and_checkpoint_any_device_loads(data, tmp_path):
    trainer = train_model(data, tmp_path / "m", TrainConfig(**CONFIG), quiet=True, refine_start=True, device="cuda")
    assert next(trainer.decoder.parameters()).is_cuda and trainer.start_map().weight.is_cuda
    on_cpu, on_gpu = load_model(tmp_path / "m"), load_model(tmp_path / "m", "cuda")
    assert next(on_cpu.decoder.parameters()).device.type == "cpu" and on_gpu.start.weight.is_cuda
    resumed = Trainer.resume(tmp_path / "m" / "checkpoints", device="cpu", progress=False)
    assert len(resumed.history) == CONFIG["epochs"]
    resumed.config.epochs += 1
    x = np.load(data)
    resumed.fit(x[:40])  # a third epoch on the CPU, from the GPU's checkpoint (optimizer state included)
    assert len(resumed.history) == 3


@gpu
def test_the_autoencoder_baseline_trains_on_a_gpu(data):
    decoder = MLPDecoder(2, (12,), hidden=(16,)).to("cuda")
    trainer = Trainer(TrainConfig(method="ae", latent_dim=2, batch_size=8, loss="mse"), (12,), decoder=decoder,
                      progress=False)
    assert np.isfinite(trainer.fit(np.load(data))[-1].train_loss)
    assert next(trainer.source.encoder.parameters()).is_cuda


@gpu
def test_encoding_and_decoding_on_a_gpu_match_the_cpu(data, tmp_path):
    train_model(data, tmp_path / "m", TrainConfig(**CONFIG), quiet=True)
    summaries = {device: encode_file(tmp_path / "m", data, tmp_path / f"{device}.h5", quiet=True, device=device)
                 for device in ("cpu", "cuda")}
    assert summaries["cuda"]["mean_loss"] == pytest.approx(summaries["cpu"]["mean_loss"], rel=1e-3)
    recon = {device: decode_file(tmp_path / "m", tmp_path / "cpu.h5", tmp_path / f"{device}.npy", quiet=True,
                                 device=device) for device in ("cpu", "cuda")}
    np.testing.assert_allclose(recon["cuda"], recon["cpu"], rtol=1e-4, atol=1e-5)


@gpu
def test_the_estimator_fits_on_a_gpu_and_loads_on_the_cpu(data, tmp_path):
    x = np.load(data)
    model = GFE(latent_dim=2, decoder={"type": "mlp", "hidden": [16]}, epochs=1, batch_size=8,
                encode_options={"max_steps": 30}, device="cuda")
    z = model.fit_transform(x)
    assert isinstance(z, np.ndarray) and model.inverse_transform(z).shape == x.shape
    loaded = GFE.load(model.save(tmp_path / "est"))
    assert loaded.device == "cpu"
    np.testing.assert_allclose(loaded.score(x), model.score(x), rtol=1e-3)


@gpu
def test_a_gpu_encoding_repeats_bit_for_bit(data, tmp_path):
    train_model(data, tmp_path / "m", TrainConfig(**CONFIG), quiet=True)
    for name in ("a", "b"):
        encode_file(tmp_path / "m", data, tmp_path / f"{name}.npy", quiet=True, device="cuda")
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
