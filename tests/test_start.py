"""The learned start map: a ridge fit of latents on samples, where flows begin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import gfe
from gfe import ConfigError, ModelFileError
from gfe.cli import main
from gfe.start import MAX_FEATURES, RidgeFit, RidgeStart
from gfe.train import TrainConfig, Trainer


def run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:  # errors end in parser.exit
        return exit_.code


def fit_in_batches(fit: RidgeFit, x: torch.Tensor, z: torch.Tensor, batch: int = 10) -> None:
    for lo in range(0, len(x), batch):
        fit.update(fit.rows(x[lo:lo + batch], z[lo:lo + batch]))


def test_the_fit_recovers_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 2, generator=gen), torch.randn(2, generator=gen)
    x = torch.rand(400, 2, 3, generator=gen)
    fit = RidgeFit((2, 3), 2, penalty=1e-8, memory=1e9)
    fit_in_batches(fit, x, x.flatten(1) @ a + b)
    new = torch.rand(50, 2, 3, generator=gen)
    torch.testing.assert_close(fit.fitted()(new), new.flatten(1) @ a + b, atol=1e-4, rtol=0)
    # the map in use is re-solved every `refit_every` samples: here it has caught up
    torch.testing.assert_close(fit.start(new), fit.fitted()(new))


def test_older_samples_are_forgotten():
    """With a short memory the fit follows the latest relation between samples and latents."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(600, 4, generator=gen)
    fit = RidgeFit((4,), 1, penalty=1e-8, memory=50)
    fit_in_batches(fit, x[:300], x[:300, :1])  # latents once followed feature 0 ...
    fit_in_batches(fit, x[300:], -x[300:, 1:2])  # ... now they follow feature 1
    # the first 300 samples' weight has decayed to (1 - 1/50)^300 = 0.2%
    torch.testing.assert_close(fit.fitted()(x[:20]), -x[:20, 1:2], atol=0.02, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_sample_start_does_not_depend_on_its_batch(dtype):
    start = RidgeStart((28, 28), 20)
    start.weight.copy_(torch.randn(785, 20, generator=torch.Generator().manual_seed(2)))
    x = torch.rand(300, 28, 28, generator=torch.Generator().manual_seed(3), dtype=dtype)
    together = start(x)
    assert together.dtype == dtype
    for i in (0, 1, 7, 150, 299):
        assert torch.equal(start(x[i:i + 1])[0], together[i])


def test_masked_features_do_not_move_the_start():
    start = RidgeStart((5,), 2)
    start.weight.copy_(torch.randn(6, 2, generator=torch.Generator().manual_seed(4)))
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0])
    x = torch.rand(8, 5)
    changed = x.clone()
    changed[:, [1, 3]] = 100.0
    assert torch.equal(start(x, mask), start(changed, mask))
    assert torch.equal(start(x, mask.expand(8, 5)), start(x, mask))  # per-row weights too
    fit = RidgeFit((5,), 2)
    assert torch.equal(fit.rows(x, x[:, :2], mask), fit.rows(changed, x[:, :2], mask))


def test_samples_without_a_finite_latent_add_nothing_to_the_fit():
    gen = torch.Generator().manual_seed(5)
    x, z = torch.rand(40, 3, generator=gen), torch.randn(40, 2, generator=gen)
    broken = z.clone()
    broken[[3, 17], 1] = float("nan")
    broken[25, 0] = float("inf")
    keep = torch.ones(40, dtype=torch.bool)
    keep[[3, 17, 25]] = False
    with_bad, without = RidgeFit((3,), 2, refit_every=10), RidgeFit((3,), 2, refit_every=10)
    for lo in range(0, 40, 10):  # the same batches, with and without their broken samples
        part = slice(lo, lo + 10)
        with_bad.update(with_bad.rows(x[part], broken[part]))
        without.update(without.rows(x[part][keep[part]], z[part][keep[part]]))
    with_bad.fold(), without.fold()  # wait for the refits on the worker thread
    torch.testing.assert_close(with_bad.gram, without.gram)
    torch.testing.assert_close(with_bad.fitted().weight, without.fitted().weight)


@pytest.fixture(scope="module")
def digits():
    x = (load_digits().data / 16.0).astype(np.float32)
    return x[:500], x[500:700]


def train_on_digits(digits) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(TrainConfig(latent_dim=8, batch_size=5, seed=0), (64,), progress=False)
    trainer.fit(digits[0])
    return trainer


@pytest.fixture(scope="module")
def trained(digits):
    return train_on_digits(digits)


def test_the_learned_start_saves_evaluations_at_equal_loss(trained, digits):
    """Trained on 500 digits, the start map reaches the zero start's loss in fewer evaluations."""
    settings = trained.settings()["encode"]
    zero = gfe.encode(trained.decoder, digits[1], **settings)
    learned = gfe.encode(trained.decoder, digits[1], z0=trained.start_map(), **settings)
    assert float(learned.loss.mean()) <= 1.01 * float(zero.loss.mean())
    assert float(learned.nfe.float().mean()) < 0.8 * float(zero.nfe.float().mean())


@pytest.fixture(scope="module")
def refined(digits):
    """A trainer whose start map was refined on 300 of its training samples."""
    trainer = train_on_digits(digits)
    before = trainer.start_map()
    trainer.refine_start(digits[0], max_samples=300)
    return trainer, before


def test_a_refined_start_is_fitted_to_converged_latents(refined, digits):
    """`refine_start` refits the saved map to where the finished decoder's flows end
    for the training samples, so it starts them closer than the training fit did."""
    trainer, before = refined
    assert trainer.start_map() is trainer.source.final_start and before.metric is None
    x = torch.from_numpy(digits[0][-300:])
    converged = gfe.encode(trainer.decoder, x, z0=before, **trainer.settings()["encode"]).z
    distance = {name: float((start(x) - converged).norm(dim=1).mean()) for name, start in
                (("before", before), ("refined", trainer.source.final_start))}
    assert distance["refined"] < 0.9 * distance["before"], distance


def test_a_refined_start_carries_the_curvature_where_flows_end(refined, digits, tmp_path):
    """Its metric is the inverse mean Hessian at converged latents: symmetric positive
    definite; saved and loaded with the model; used as the BFGS rule's first metric,
    which then needs fewer evaluations for the same loss."""
    trainer, _ = refined
    metric = trainer.source.final_start.metric
    torch.testing.assert_close(metric, metric.T)
    assert float(torch.linalg.eigvalsh(metric.double()).min()) > 0
    trainer.save_model(tmp_path / "model")
    loaded = gfe.load_model(tmp_path / "model")
    assert torch.equal(loaded.start.metric, metric) and loaded.config["start"]["curvature"] is True
    settings = trainer.settings()["encode"]
    with_metric = gfe.encode(loaded.decoder, digits[1], z0=loaded.start, **settings)
    identity = gfe.encode(loaded.decoder, digits[1], z0=loaded.start, metric0=None, **settings)
    assert float(with_metric.loss.mean()) <= 1.001 * float(identity.loss.mean())
    assert float(with_metric.nfe.float().mean()) < 0.8 * float(identity.nfe.float().mean())


def test_refining_needs_a_learned_start(digits, tmp_path):
    trainer = Trainer(TrainConfig(latent_dim=2, start="zero"), (64,), progress=False)
    with pytest.raises(ConfigError, match="refine_start needs a learned start"):
        trainer.refine_start(digits[0])
    np.save(tmp_path / "x.npy", digits[0][:20])
    assert run("train", tmp_path / "x.npy", "--out", tmp_path / "m", "--start", "zero", "--refine-start",
               "--quiet") == 2
    assert not (tmp_path / "m" / "checkpoints").exists()  # refused before training


def test_train_command_refines_the_saved_start(digits, tmp_path):
    np.save(tmp_path / "x.npy", digits[0][:60])
    assert run("train", tmp_path / "x.npy", "--out", tmp_path / "m", "--latent-dim", "3", "--refine-start",
               "--quiet") == 0
    loaded = gfe.load_model(tmp_path / "m")
    assert loaded.config["start"]["curvature"] is True and loaded.start.metric.shape == (3, 3)


def test_a_saved_model_keeps_its_start_map(trained, tmp_path):
    trained.save_model(tmp_path / "model")
    loaded = gfe.load_model(tmp_path / "model")
    assert torch.equal(loaded.start.weight, trained.start_map().weight)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["start"] == {"type": "ridge", "feature_shape": [64], "latent_dim": 8, "curvature": False}
    config["start"]["latent_dim"] = 9  # a start map that cannot belong to this decoder
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="start map"):
        gfe.load_model(tmp_path / "model")


def test_encode_starts_where_the_model_says_unless_asked_for_zero(trained, digits, tmp_path):
    trained.save_model(tmp_path / "model")
    loaded = gfe.load_model(tmp_path / "model")
    np.save(tmp_path / "x.npy", digits[1][:20])
    settings = trained.settings()["encode"]
    for options, z0 in ((None, loaded.start), ('{"start": "zero"}', None)):
        out = tmp_path / "z.npy"
        argv = ["encode", tmp_path / "model", tmp_path / "x.npy", "-o", out, "--quiet"]
        assert run(*argv, *(["--options", options] if options else [])) == 0
        expected = gfe.encode(loaded.decoder, digits[1][:20], z0=z0, **settings).z.numpy()
        np.testing.assert_array_equal(np.load(out), expected)


def test_zero_start_training_saves_no_map_and_encode_says_so(digits, tmp_path, capsys):
    np.save(tmp_path / "x.npy", digits[0][:40])
    argv = ["train", tmp_path / "x.npy", "--out", tmp_path / "model", "--latent-dim", "2", "--start", "zero",
            "--encode-options", '{"max_steps": 5}', "--quiet"]
    assert run(*argv) == 0
    assert gfe.load_model(tmp_path / "model").start is None
    argv = ["encode", tmp_path / "model", tmp_path / "x.npy", "-o", tmp_path / "z.npy", "--quiet",
            "--options", '{"start": "learned"}']
    assert run(*argv) == 2
    assert "has no learned start map" in capsys.readouterr().err


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="start must be one of"):
        TrainConfig(start="pca")
    with pytest.raises(ConfigError, match="at most"):
        RidgeFit((MAX_FEATURES + 1,), 2)
    with pytest.raises(ConfigError, match="memory >= 1"):
        RidgeFit((4,), 2, memory=0.5)
    # too many features for a learned start: training starts at 0 and saves no map
    assert Trainer(TrainConfig(latent_dim=2), (MAX_FEATURES + 1,), progress=False).start_map() is None


@pytest.mark.parametrize(("decoder", "shape"), [("conv1d", (64,)), ("conv2d", (8, 8))])
def test_conv_decoders_learn_and_refine_a_start(digits, decoder, shape, tmp_path):
    """A convolutional decoder gets a training start map and a refined one with a
    metric, saved and loaded with it; from the refined start the BFGS rule needs
    fewer evaluations than from the training map, at the same loss."""
    x_train, x_test = (x.reshape(len(x), *shape) for x in digits)
    torch.manual_seed(0)
    conv = gfe.models.build_decoder({"type": decoder, "latent_dim": 4, "out_shape": list(shape), "channels": [8, 4]})
    trainer = Trainer(TrainConfig(latent_dim=4, batch_size=10, optimizer="adam", lr=3e-3), shape, decoder=conv,
                      progress=False)
    trainer.fit(x_train[:200])
    before = trainer.start_map()
    trainer.refine_start(x_train[:200])
    trainer.save_model(tmp_path / "model")
    loaded = gfe.load_model(tmp_path / "model")
    assert loaded.config["start"]["curvature"] is True
    settings = trainer.settings()["encode"]
    trained = gfe.encode(loaded.decoder, x_test, z0=before, **settings)
    refined = gfe.encode(loaded.decoder, x_test, z0=loaded.start, **settings)
    assert float(refined.loss.mean()) <= 1.001 * float(trained.loss.mean())
    assert float(refined.nfe.float().mean()) < 0.95 * float(trained.nfe.float().mean())
