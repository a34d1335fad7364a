"""The latent prior (`latent_penalty`) and decoder noise (`latent_noise`) of training."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import gfe
from gfe import ConfigError
from gfe.cli import main
from gfe.distributed import Replicas
from gfe.models import MLPDecoder
from gfe.train import TrainConfig, Trainer

SHAPE = (4, 4)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(30, 3)) @ rng.uniform(size=(3, 16)) / 3
    return np.clip(x + rng.normal(scale=0.02, size=x.shape), 0, 1).astype(np.float32).reshape(30, *SHAPE)


def make_trainer(method="gfe-amd", **overrides):
    settings = dict(method=method, latent_dim=3, epochs=1, batch_size=10, optimizer="adam", lr=1e-2, loss="bce",
                    seed=0, encode_options={"max_steps": 30, "gtol": 1e-4})
    torch.manual_seed(0)
    config = TrainConfig(**{**settings, **overrides})
    return Trainer(config, SHAPE, decoder=MLPDecoder(3, SHAPE, hidden=(16,)), progress=False)


@pytest.mark.parametrize(("overrides", "pattern"), [
    ({"latent_penalty": -1e-3}, "latent_penalty must be a finite number >= 0"),
    ({"latent_penalty": float("nan")}, "latent_penalty must be a finite number >= 0"),
    ({"latent_noise": float("inf")}, "latent_noise must be a finite number >= 0"),
    ({"latent_noise": True}, "latent_noise must be a finite number >= 0"),
    ({"latent_noise": 0.1, "gradient": "adjoint"}, "latent_noise needs the approximate gradient"),
])
def test_bad_regularisation_is_a_config_error(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig(**overrides)


def test_the_penalty_enters_training_flows_and_the_saved_encoding_settings(tmp_path, images):
    config = TrainConfig(latent_penalty=0.05)
    for training in (True, False):
        assert config.flow_options(training=training)["penalty"] == "l2"
        assert config.flow_options(training=training)["penalty_weight"] == 0.05
    # options that name a penalty themselves win, as they do over every default
    l1 = TrainConfig(latent_penalty=0.05, eval_options={"penalty": "l1", "penalty_weight": 0.2})
    assert l1.flow_options(training=False)["penalty"] == "l1" and l1.flow_options(training=True)["penalty"] == "l2"

    trainer = make_trainer(latent_penalty=0.05)
    trainer.fit(images)
    loaded = gfe.load_model(trainer.save_model(tmp_path / "model"))
    assert loaded.settings["encode"]["penalty_weight"] == 0.05
    penalised = gfe.encode(loaded.decoder, images, **loaded.settings["encode"])
    free = gfe.encode(loaded.decoder, images, **{**loaded.settings["encode"], "penalty": None})
    assert penalised.z.square().sum(1).mean() < free.z.square().sum(1).mean()


def test_the_autoencoder_adds_the_penalty_to_its_training_loss(images):
    norms = {}
    for beta in (0.0, 1.0):
        trainer = make_trainer("ae", latent_penalty=beta, epochs=10)
        trainer.fit(images)
        with torch.no_grad():
            norms[beta] = float(trainer.source.encoder(torch.from_numpy(images)).square().sum(1).mean())
    assert norms[1.0] < 0.1 * norms[0.0]


def test_the_decoder_is_updated_on_latents_plus_seeded_noise(images):
    """Replays one epoch by hand: three batches encoded against the initial decoder
    (encode_ahead = 3), each update on its latents plus the trainer's noise."""
    trainer = make_trainer(latent_noise=0.5, encode_ahead=3, start="zero")
    initial = copy.deepcopy(trainer.decoder)
    trainer.fit(images)

    shuffled = torch.from_numpy(images[np.random.default_rng([0, 0]).permutation(30)])  # epoch 0's order
    latents = gfe.encode(initial, shuffled, **trainer.config.flow_options(training=True)).z
    optimizer = torch.optim.Adam(initial.parameters(), lr=1e-2)
    for batch, (xb, zb) in enumerate(zip(shuffled.split(10), latents.split(10)), start=1):
        noise = trainer._latent_noise(0, batch, 10, zb)
        assert noise.shape == zb.shape and float(noise.abs().min()) > 0
        optimizer.zero_grad()
        (trainer.loss(initial(zb + noise), xb, zb).sum() / 10).backward()
        optimizer.step()
    for (name, p), q in zip(trainer.decoder.state_dict().items(), initial.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_the_noise_is_standard_normal_times_sigma_seeded_and_split_across_replicas():
    trainer = make_trainer(latent_noise=0.5)
    z = torch.zeros(20_000, 3)
    noise = trainer._latent_noise(0, 1, len(z), z)
    assert abs(float(noise.mean())) < 0.01 and float(noise.std()) == pytest.approx(0.5, rel=0.02)
    assert torch.equal(noise, trainer._latent_noise(0, 1, len(z), z))
    assert not torch.equal(noise, trainer._latent_noise(0, 2, len(z), z))
    assert not torch.equal(noise, trainer._latent_noise(1, 1, len(z), z))
    # a replica's rows of a batch get that batch's noise for those rows
    whole = trainer._latent_noise(0, 1, 11, z[:11])
    trainer.replicas = Replicas(rank=1, world_size=2)
    rows = Replicas(rank=1, world_size=2).rows(11)
    torch.testing.assert_close(trainer._latent_noise(0, 1, 11, z[rows]), whole[rows], rtol=0, atol=0)
    assert make_trainer()._latent_noise(0, 1, 11, z[:11]) == 0.0  # off by default


def test_gfe_train_takes_the_regularisation_flags(tmp_path, images):
    np.save(tmp_path / "x.npy", images)
    assert main(["train", str(tmp_path / "x.npy"), "--out", str(tmp_path / "model"), "--latent-dim", "3",
                 "--latent-penalty", "0.01", "--latent-noise", "0.3", "--quiet"]) == 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["settings"]["train_config"]["latent_noise"] == 0.3
    assert config["settings"]["encode"]["penalty_weight"] == 0.01
