"""The trainer: loss goes down, checkpoints resume exactly, models and histories are written."""

from __future__ import annotations

import copy
import csv
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

import gfe
from gfe import ConfigError, ModelFileError
from gfe.models import MLPDecoder
from gfe.train import Trainer
from gfe.train_config import EpochRecord, TrainConfig

SHAPE = (4, 4)
FAST_ENCODE = {"max_steps": 30, "gtol": 1e-4}
METHOD_OPTIONS = {
    "gfe-amd": FAST_ENCODE,
    "gfe-nesterov": FAST_ENCODE,
    "gfe-euler": {**FAST_ENCODE, "dt": 1.0, "tau": 10.0},
    "gfe-rk4": {**FAST_ENCODE, "dt": 1.0, "tau": 10.0},
    "gfe-dopri5": {**FAST_ENCODE, "tau": 20.0},
    "ae": {},
}


@pytest.fixture(scope="module")
def images():
    """60 structured 4x4 images in [0, 1] (mixtures of three patterns plus noise)."""
    rng = np.random.default_rng(0)
    basis = rng.uniform(size=(3, 16))
    x = (rng.uniform(size=(60, 3)) @ basis / 3).reshape(60, *SHAPE)
    return np.clip(x + rng.normal(scale=0.02, size=x.shape), 0, 1).astype(np.float32)


def make_config(method="gfe-amd", epochs=2, **overrides):
    options = METHOD_OPTIONS[method]
    settings = dict(method=method, latent_dim=3, epochs=epochs, batch_size=10, optimizer="adam", lr=1e-2,
                    loss="bce", seed=0, encode_options=dict(options), eval_options=dict(options))
    settings.update(overrides)
    return TrainConfig(**settings)


def make_trainer(config, **kwargs):
    torch.manual_seed(0)
    decoder = MLPDecoder(config.latent_dim, SHAPE, hidden=(16,))
    return Trainer(config, SHAPE, decoder=decoder, progress=False, **kwargs)


def parameters(module):
    return {name: p.detach().clone() for name, p in module.state_dict().items()}


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_training_lowers_the_loss(images, method):
    trainer = make_trainer(make_config(method))
    before = trainer.evaluate(images)
    history = trainer.fit(images, images[:20])
    after = trainer.evaluate(images)
    assert after < before - 0.02, (before, after)
    assert [r.epoch for r in history] == [1, 2]
    for record in history:
        assert isinstance(record, EpochRecord) and record.samples == 60
        values = [record.train_loss, record.val_loss, record.seconds, record.mean_steps, record.mean_nfe]
        assert all(math.isfinite(v) for v in values)
        if method == "ae":
            assert record.mean_steps == 0 and record.mean_nfe == 0
        else:
            assert 0 < record.mean_steps <= FAST_ENCODE["max_steps"] and record.mean_nfe > record.mean_steps
    assert history[1].train_loss < history[0].train_loss
    assert trainer.history is history


def test_validation_loss_is_nan_without_validation_data(images):
    record = make_trainer(make_config(epochs=1)).fit(images)[0]
    assert math.isnan(record.val_loss) and math.isfinite(record.train_loss)


def test_training_is_deterministic(images):
    a = make_trainer(make_config())
    b = make_trainer(make_config())
    a.fit(images)
    b.fit(images)
    for (name, p), q in zip(parameters(a.decoder).items(), parameters(b.decoder).values()):
        assert torch.equal(p, q), name


def test_callbacks_get_each_epoch_record(images):
    seen = []
    trainer = make_trainer(make_config(epochs=2), callbacks=(lambda t, r: seen.append((t, r.epoch)),))
    trainer.fit(images)
    assert seen == [(trainer, 1), (trainer, 2)]


def _strip_seconds(history):
    return [{k: v for k, v in asdict(r).items() if k != "seconds"} for r in history]


@pytest.mark.parametrize(("method", "ahead"), [("gfe-amd", 1), ("gfe-amd", 4), ("ae", 1)])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, images, method, ahead):
    # run A: three epochs in one go (with ahead = 4, each epoch's 6 batches are encoded as 4 + 2)
    run_a = make_trainer(make_config(method, epochs=3, encode_ahead=ahead), checkpoint_dir=tmp_path / "a")
    history_a = run_a.fit(images, images[:20])

    # run B: interrupted after epoch 1 (the checkpoint is written before callbacks run)
    def interrupt(trainer, record):
        if record.epoch == 1:
            raise KeyboardInterrupt

    run_b = make_trainer(make_config(method, epochs=3, encode_ahead=ahead), checkpoint_dir=tmp_path / "b",
                         callbacks=(interrupt,))
    with pytest.raises(KeyboardInterrupt):
        run_b.fit(images, images[:20])
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["checkpoint"] == "epoch-00001"

    resumed = Trainer.resume(tmp_path / "b", progress=False)
    assert len(resumed.history) == 1 and resumed.config == run_a.config
    history_b = resumed.fit(images, images[:20])

    assert _strip_seconds(history_b) == _strip_seconds(history_a)
    for (name, p), q in zip(parameters(run_a.decoder).items(), parameters(resumed.decoder).values()):
        assert torch.equal(p, q), name
    if method == "ae":
        for (name, p), q in zip(parameters(run_a.source.encoder).items(), parameters(resumed.source.encoder).values()):
            assert torch.equal(p, q), name
    for run in ("a", "b"):
        directory = tmp_path / run
        assert json.loads((directory / "latest.json").read_text())["checkpoint"] == "epoch-00003"
        assert sorted(p.name for p in directory.glob("epoch-*")) == ["epoch-00003"]
    # a finished run resumes to a no-op
    again = Trainer.resume(tmp_path / "a", progress=False)
    assert _strip_seconds(again.fit(images)) == _strip_seconds(history_a)


def test_resume_without_checkpoint_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="no usable checkpoint"):
        Trainer.resume(tmp_path)


def test_saved_model_gives_identical_encodings(tmp_path, images):
    trainer = make_trainer(make_config("gfe-amd", epochs=1))
    trainer.fit(images)
    directory = trainer.save_model(tmp_path / "model")
    loaded = gfe.load_model(directory)
    assert loaded.settings["method"] == "gfe-amd"
    assert loaded.settings["encode"]["solver"] == "amd" and loaded.settings["encode"]["max_steps"] == 30
    opts = {k: v for k, v in loaded.settings["encode"].items()}
    a = gfe.encode(trainer.decoder, images[:8], **opts)
    b = gfe.encode(loaded.decoder, images[:8], **opts)
    assert torch.equal(a.z, b.z) and torch.equal(a.steps, b.steps) and torch.equal(a.loss, b.loss)


def test_write_history_csv(tmp_path, images):
    trainer = make_trainer(make_config(epochs=2))
    trainer.fit(images, images[:10])
    path = tmp_path / "history.csv"
    trainer.write_history_csv(path)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["epoch", "train_loss", "val_loss", "seconds", "samples", "mean_steps", "mean_nfe",
                       "skipped_batches", "best_epoch"]
    assert len(rows) == 3
    for row, record in zip(rows[1:], trainer.history):
        assert int(row[0]) == record.epoch and float(row[1]) == record.train_loss
        assert int(row[4]) == record.samples


@pytest.mark.parametrize(("field", "value", "pattern"), [
    ("method", "vae", r"unknown method 'vae'; expected one of gfe-amd, .*ae"),
    ("optimizer", "lion", r"unknown optimizer 'lion'"),
    ("epochs", 0, r"epochs must be a positive integer"),
    ("batch_size", 2.5, r"batch_size must be a positive integer"),
    ("latent_dim", True, r"latent_dim must be a positive integer"),
    ("lr", 0.0, r"lr must be > 0"),
    ("loss", "hinge", r"unknown loss 'hinge'"),
    ("encode_ahead", 0, r"encode_ahead must be a positive integer"),
])
def test_bad_config_is_a_config_error(field, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("overrides", [{"method": "ae"}, {"gradient": "unrolled"}])
def test_encoding_ahead_needs_the_approximate_gradient_of_a_flow(overrides):
    with pytest.raises(ConfigError, match="encode_ahead > 1 needs a GFE method with the approximate gradient"):
        TrainConfig(encode_ahead=2, **overrides)


def test_batches_encoded_ahead_use_the_decoder_before_the_first_of_them(images):
    """With encode_ahead = 3 the three batches of one epoch are encoded against the
    initial decoder, and the decoder then takes one update per batch with those latents."""
    trainer = make_trainer(make_config(epochs=1, encode_ahead=3, start="zero"))
    initial = copy.deepcopy(trainer.decoder)
    x = images[:30]
    trainer.fit(x)

    shuffled = torch.from_numpy(x[np.random.default_rng([0, 0]).permutation(30)])  # epoch 0's order
    latents = gfe.encode(initial, shuffled, **trainer.config.flow_options(training=True))
    assert [row[3] for row in trainer.batch_log] == [int(n.sum()) for n in latents.nfe.split(10)]
    optimizer = torch.optim.Adam(initial.parameters(), lr=1e-2)
    for xb, zb in zip(shuffled.split(10), latents.z.split(10)):
        optimizer.zero_grad()
        (trainer.loss(initial(zb), xb, zb).sum() / 10).backward()
        optimizer.step()
    for (name, p), q in zip(parameters(trainer.decoder).items(), parameters(initial).values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_encode_options_fail_when_the_trainer_is_built():
    with pytest.raises(ConfigError, match="has no option"):
        make_trainer(make_config(encode_options={"dt": 0.1}))


def test_decoder_shape_must_match_data():
    with pytest.raises(ConfigError, match="differs from the data"):
        Trainer(make_config(), (5, 5), decoder=MLPDecoder(3, SHAPE, hidden=(8,)), progress=False)


def test_training_data_are_validated(images):
    trainer = make_trainer(make_config(epochs=1))
    with pytest.raises(gfe.DataError, match="bce loss needs data in"):
        trainer.fit(images * 2)


def test_building_a_trainer_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = Trainer(make_config("ae"), SHAPE, progress=False)  # seeds its own initial weights
    assert torch.equal(torch.rand(3), expected)
    b = Trainer(make_config("ae"), SHAPE, progress=False)
    for (name, p), q in zip(parameters(a.source.encoder).items(), parameters(b.source.encoder).values()):
        assert torch.equal(p, q), name  # and still reproducibly


def _jumpy(**overrides):
    """A run whose validation loss goes up and down (`noise` validates it): its best epoch is not its last."""
    return make_config(epochs=6, lr=0.05, **overrides)


@pytest.fixture(scope="module")
def noise():
    """Validation samples unlike the training images: uniform noise."""
    return np.random.default_rng(1).uniform(size=(20, *SHAPE)).astype(np.float32)


def _per_epoch_states(states):
    def record(trainer, r):
        states[r.epoch] = (parameters(trainer.decoder), trainer.start_map().weight.clone())
    return record


def test_the_best_validation_epoch_is_kept(images, noise):
    states = {}
    trainer = make_trainer(_jumpy(), callbacks=(_per_epoch_states(states),))
    history = trainer.fit(images, noise)
    losses = [r.val_loss for r in history]
    best = int(np.argmin(losses)) + 1
    assert best < len(history), losses  # else this run does not test anything
    assert [r.best_epoch for r in history] == [int(np.argmin(losses[:i])) + 1 for i in range(1, len(history) + 1)]
    kept, start = states[best]
    for (name, p), q in zip(parameters(trainer.decoder).items(), kept.values()):
        assert torch.equal(p, q), name
    assert torch.equal(trainer.start_map().weight, start)
    assert trainer.evaluate(noise) == pytest.approx(losses[best - 1], rel=1e-6)

    last = make_trainer(_jumpy(keep_best=False))
    last.fit(images, noise)
    for (name, p), q in zip(parameters(last.decoder).items(), states[len(history)][0].values()):
        assert torch.equal(p, q), name


def test_patience_stops_the_run(images, noise):
    history = make_trainer(_jumpy(patience=1)).fit(images, noise)
    assert len(history) < 6 and len(history) == history[-1].best_epoch + 1
    with pytest.raises(ConfigError, match="patience acts on the validation loss: pass validation data"):
        make_trainer(_jumpy(patience=1)).fit(images)


@pytest.mark.parametrize(("field", "value", "pattern"), [
    ("patience", 0, "patience must be a positive integer"),
    ("keep_best", "yes", "keep_best must be True or False"),
    ("lr_schedule", "step", "lr_schedule must be one of constant, cosine"),
])
def test_bad_stopping_settings_are_config_errors(field, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(("method", "schedule"), [("gfe-amd", "constant"), ("ae", "cosine")])
def test_kept_best_epoch_and_patience_survive_an_interruption(tmp_path, images, noise, method, schedule):
    config = _jumpy(method=method, patience=2, lr_schedule=schedule)
    whole = make_trainer(config, checkpoint_dir=tmp_path / "a")
    history = whole.fit(images, noise)

    def interrupt(trainer, record):
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_trainer(config, checkpoint_dir=tmp_path / "b", callbacks=(interrupt,)).fit(images, noise)
    resumed = Trainer.resume(tmp_path / "b", progress=False)
    assert _strip_seconds(resumed.fit(images, noise)) == _strip_seconds(history)
    saved = [gfe.load_model(run.save_model(tmp_path / name)) for run, name in ((whole, "ma"), (resumed, "mb"))]
    assert saved[0].config["weights_sha256"] == saved[1].config["weights_sha256"]


def test_cosine_schedule_decays_the_learning_rate_to_zero(images):
    seen = []
    trainer = make_trainer(make_config(epochs=2, lr_schedule="cosine"),
                           callbacks=(lambda t, r: seen.append(t.optimizer.param_groups[0]["lr"]),))
    trainer.fit(images)
    batches = 6  # per epoch
    assert seen == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * (e * batches - 1) / (2 * batches)))
                                  for e in (1, 2)])


@pytest.mark.parametrize(("gradient", "step"), [("approx", "bfgs"), ("adjoint", "spectral"), ("unrolled", "spectral")])
def test_gfe_amd_trains_with_bfgs_steps_unless_its_gradient_replays_the_path(gradient, step):
    """BFGS steps leave the flow's path, which exact gradients replay: they get the method's `exact_options`."""
    assert TrainConfig(gradient=gradient).flow_options(training=True)["step"] == step
    assert TrainConfig(gradient=gradient).flow_options(training=False)["step"] == "bfgs"  # evaluation is not replayed
    mine = TrainConfig(gradient=gradient, encode_options={"step": "flow"}).flow_options(training=True)
    assert mine["step"] == "flow"  # the user's options come last
