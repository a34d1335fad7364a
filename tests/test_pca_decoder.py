"""The PCA-initialised decoder ("pca-mlp"): its first encoding is the PCA projection,
training only improves on it, and it trains, saves and loads everywhere a decoder does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gfe
from gfe.cli import main
from gfe.errors import ConfigError
from gfe.estimator import GFE
from gfe.losses import loss_spec
from gfe.models import DECODERS, PCAMLPDecoder, build_decoder, build_encoder
from gfe.train import Trainer
from gfe.train_config import TrainConfig

FEATURES, LATENT = 24, 3


def nearly_linear(n: int, seed: int = 0) -> np.ndarray:
    """Rank-3 data with noise and a slight curvature out of their span, as spectra are."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(LATENT + 1, FEATURES))
    factors = rng.normal(size=(n, LATENT))
    bend = 0.2 * (factors[:, :1] ** 2 - 1) * basis[LATENT]
    return (factors @ basis[:LATENT] + bend + 0.02 * rng.normal(size=(n, FEATURES)) + 1.0).astype(np.float32)


def pca_scores(x: np.ndarray, k: int, weights: np.ndarray | None = None):
    """Scores, components and mean of a (feature-weighted) PCA in float64."""
    from sklearn.decomposition import PCA

    root = np.ones(x.shape[1]) if weights is None else np.sqrt(weights)
    pca = PCA(k).fit(x.astype(np.float64) * root)
    return pca.transform(x * root), pca.components_, pca.mean_ / np.where(root > 0, root, 1.0)


def pca_trainer(loss: str = "mse", checkpoint_dir=None, callbacks=(), **config) -> Trainer:
    settings = dict(method="gfe-amd", latent_dim=LATENT, epochs=1, batch_size=10, optimizer="adam", lr=1e-3,
                    loss=loss, encode_options={"max_steps": 30})
    torch.manual_seed(0)
    decoder = PCAMLPDecoder(LATENT, (FEATURES,), hidden=(16,))
    return Trainer(TrainConfig(**{**settings, **config}), (FEATURES,), decoder=decoder, progress=False,
                   checkpoint_dir=checkpoint_dir, callbacks=callbacks)


def test_the_first_encoding_is_the_pca_projection():
    x = nearly_linear(80)
    trainer = pca_trainer()
    trainer.init_decoder(x)
    enc = gfe.encode(trainer.decoder, x, loss="mse", step="bfgs", gtol=1e-7, max_steps=500)
    assert enc.status_counts() == {"converged": 80}
    scores, components, mean = pca_scores(x, LATENT)
    reconstruction = scores @ components + mean
    with torch.no_grad():
        decoded = trainer.decoder(enc.z).double().numpy()
    np.testing.assert_allclose(decoded, reconstruction, atol=2e-5 * np.abs(reconstruction).max())
    # the components are fixed up to sign, so the latents are the scores (in units of RMS per feature)
    z = enc.z.double().numpy() * np.sqrt(FEATURES)
    signs = np.sign((z * scores).sum(0))
    np.testing.assert_allclose(z * signs, scores, atol=2e-5 * np.abs(scores).max())
    assert bool((trainer.decoder.residual(enc.z) == 0).all())  # the MLP residual starts at zero


def test_masked_features_follow_the_weighted_pca():
    """Weights weigh the PCA as they weigh the loss: masked features cannot move an encoding."""
    x = nearly_linear(60)
    mask = np.ones(FEATURES, dtype=np.float32)
    mask[::5] = 0.0
    x[:, ::5] = np.random.default_rng(1).normal(scale=100.0, size=x[:, ::5].shape)  # garbage under the mask
    torch.manual_seed(0)
    trainer = Trainer(TrainConfig(latent_dim=LATENT, loss="mse"), (FEATURES,), progress=False, weights=mask,
                      decoder=PCAMLPDecoder(LATENT, (FEATURES,), hidden=(16,)))
    trainer.init_decoder(x)
    enc = gfe.encode(trainer.decoder, x, loss="mse", step="bfgs", gtol=1e-7, max_steps=500, weights=mask)
    kept = mask > 0
    scores, components, mean = pca_scores(x[:, kept], LATENT)
    with torch.no_grad():
        decoded = trainer.decoder(enc.z).double().numpy()[:, kept]
    np.testing.assert_allclose(decoded, scores @ components + mean, atol=1e-4)


@pytest.mark.parametrize("loss", ["bce", "poisson"])
def test_bce_and_poisson_start_from_the_pca_in_link_space(loss):
    """The linear path is the PCA of the data through the inverse link (clipped logits, log(counts + 0.5))."""
    rng = np.random.default_rng(0)
    x = 1 / (1 + np.exp(-nearly_linear(50) + 1)) if loss == "bce" else rng.poisson(np.exp(nearly_linear(50) / 2))
    x = x.astype(np.float32)
    trainer = pca_trainer(loss)
    trainer.init_decoder(x)
    targets = loss_spec(loss).inverse_link(torch.from_numpy(x)).double().numpy()
    _, components, mean = pca_scores(targets, LATENT)
    linear = trainer.decoder.linear
    axes = linear.weight.detach().double().numpy().T / np.sqrt(FEATURES)
    np.testing.assert_allclose(np.abs(axes), np.abs(components), atol=1e-5)  # components are fixed up to sign
    np.testing.assert_allclose(linear.bias.detach().double().numpy(), mean, atol=1e-5)


def test_training_keeps_or_lowers_the_held_out_error():
    x, held_out = nearly_linear(200), nearly_linear(100, seed=1)
    trainer = pca_trainer(epochs=5, lr=3e-3, lr_schedule="cosine")
    trainer.init_decoder(x)
    initial = trainer.evaluate(held_out)
    trainer.fit(x)
    assert trainer.evaluate(held_out) <= initial, initial


def test_the_trainer_initialises_a_new_run_only(tmp_path, monkeypatch):
    """`fit` initialises from the data when a run begins; a resumed run keeps its checkpoint's weights
    (and so reaches the uninterrupted run's result)."""
    calls = []
    original = PCAMLPDecoder.init_from_data
    monkeypatch.setattr(PCAMLPDecoder, "init_from_data", lambda self, *a: (calls.append(1), original(self, *a)))
    x = nearly_linear(40)
    uninterrupted = pca_trainer(epochs=2)
    uninterrupted.fit(x)
    interrupted = pca_trainer(epochs=1)
    interrupted.checkpoint_dir = tmp_path
    interrupted.fit(x)
    assert len(calls) == 2
    resumed = Trainer.resume(tmp_path, progress=False)
    resumed.config.epochs = 2
    resumed.fit(x)
    assert len(calls) == 2
    for (name, p), q in zip(uninterrupted.decoder.state_dict().items(), resumed.decoder.state_dict().values()):
        assert torch.equal(p, q), name


def test_registered_saved_loaded_and_mirrored_for_the_autoencoder(tmp_path):
    assert DECODERS["pca-mlp"].decoder is PCAMLPDecoder
    decoder = PCAMLPDecoder(LATENT, (4, 6), hidden=(8, 5), activation="tanh")
    config = json.loads(json.dumps(decoder.config()))
    assert config == {"type": "pca-mlp", "latent_dim": LATENT, "out_shape": [4, 6], "hidden": [8, 5],
                      "activation": "tanh"}
    trainer = pca_trainer()
    trainer.fit(nearly_linear(30))
    loaded = gfe.load_model(trainer.save_model(tmp_path / "model"))
    assert isinstance(loaded.decoder, PCAMLPDecoder) and loaded.start is not None
    z = torch.randn(4, LATENT)
    torch.testing.assert_close(loaded.decoder(z), trainer.decoder(z))
    assert build_encoder(build_decoder(config))(torch.zeros(2, 4, 6)).shape == (2, LATENT)


def test_command_line_and_estimator(tmp_path):
    data = tmp_path / "spectra.npy"
    np.save(data, nearly_linear(60))
    assert main(["train", str(data), "--out", str(tmp_path / "model"), "--decoder", "pca-mlp", "--loss", "mse",
                 "--latent-dim", "3", "--epochs", "2", "--batch-size", "10", "--quiet"]) == 0
    assert gfe.load_model(tmp_path / "model").config["decoder"]["type"] == "pca-mlp"
    model = GFE(LATENT, decoder={"type": "pca-mlp", "hidden": [16]}, epochs=1, batch_size=10, lr=1e-4,
                encode_options={"max_steps": 100, "gtol": 1e-6})
    x = nearly_linear(60)
    scores, components, mean = pca_scores(x, LATENT)
    error = float(np.mean((scores @ components + mean - x) ** 2))
    assert model.fit(x).score(x) <= 0 and -model.score(x) < 1.05 * error  # about PCA's error after a short fit


def test_one_standard_error_rule():
    from gfe.train import _clearly_lower

    ref = torch.tensor([2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    assert _clearly_lower(ref - 0.1, ref)  # every sample lower alike
    assert not _clearly_lower(ref + torch.tensor([-1.0, 0.9, -1.0, 0.9], dtype=torch.float64), ref)  # within noise
    assert not _clearly_lower(ref[:1] - 1, ref[:1])  # one sample cannot say


def test_the_start_is_kept_unless_an_epoch_clearly_beats_it():
    x, val = nearly_linear(60), nearly_linear(20, seed=1)
    wrecked = pca_trainer(epochs=3, lr=0.3)  # too large a step: every epoch is worse than the PCA start
    wrecked.init_decoder(x)
    start = {name: t.clone() for name, t in wrecked.decoder.state_dict().items()}
    history = wrecked.fit(x, val)
    assert [r.best_epoch for r in history] == [0, 0, 0] and all(r.val_loss > wrecked.evaluate(val) for r in history)
    for name, t in wrecked.decoder.state_dict().items():
        assert torch.equal(t, start[name]), name
    learning = pca_trainer(epochs=3, lr=3e-3)  # the bend is there to learn: training clearly beats PCA
    assert learning.fit(nearly_linear(200), val)[-1].best_epoch > 0


@pytest.mark.parametrize("lr", [0.3, 3e-3])
def test_retrain_all_trains_the_best_epochs_again_on_every_sample(lr):
    x, val = nearly_linear(60), nearly_linear(20, seed=1)
    chooser = pca_trainer(epochs=3, lr=lr, retrain_all=True)
    chooser.fit(x, val)
    best = chooser.history[-1].best_epoch
    final = chooser.retrained(x, val)
    assert final.history == chooser.history and final.config == chooser.config
    every = np.concatenate([x, val])
    again = pca_trainer(epochs=max(best, 1), lr=lr)
    if best:
        again.fit(every)
    else:
        again.init_decoder(every)  # the start kept: the PCA of every sample, untrained
    for (name, p), q in zip(final.decoder.state_dict().items(), again.decoder.state_dict().values()):
        assert torch.equal(p, q), name
    with pytest.raises(ConfigError, match="retrain_all acts on the validation loss"):
        pca_trainer(retrain_all=True).fit(x)


def test_gfe_train_retrain_all_keeps_the_pca_of_every_sample(tmp_path, capsys):
    x = nearly_linear(40)
    np.save(tmp_path / "spectra.npy", x)
    assert main(["train", str(tmp_path / "spectra.npy"), "--out", str(tmp_path / "model"), "--decoder", "pca-mlp",
                 "--loss", "mse", "--latent-dim", "3", "--epochs", "2", "--batch-size", "10", "--lr", "0.3",
                 "--val-fraction", "0.25", "--retrain-all"]) == 0
    out = capsys.readouterr().out
    assert "training on 30 samples, validating on 10" in out and "retraining 0 epochs (the best) on all 40" in out
    decoder = gfe.load_model(tmp_path / "model").decoder
    np.testing.assert_allclose(decoder.linear.bias.detach().numpy(), x.mean(0), rtol=1e-5, atol=1e-6)


def test_the_kept_start_and_retraining_survive_an_interruption(tmp_path):
    x, val = nearly_linear(60), nearly_linear(20, seed=1)
    whole = pca_trainer(epochs=3, lr=3e-3, retrain_all=True)
    whole.fit(x, val)

    def interrupt(trainer, record):
        if record.epoch == 1:
            raise KeyboardInterrupt

    cut = pca_trainer(epochs=3, lr=3e-3, retrain_all=True, checkpoint_dir=tmp_path, callbacks=(interrupt,))
    with pytest.raises(KeyboardInterrupt):
        cut.fit(x, val)
    resumed = Trainer.resume(tmp_path, progress=False)
    assert torch.equal(resumed.start_val, cut.start_val)
    resumed.fit(x, val)
    assert [r.best_epoch for r in resumed.history] == [r.best_epoch for r in whole.history]
    a, b = whole.retrained(x, val), resumed.retrained(x, val)
    for (name, p), q in zip(a.decoder.state_dict().items(), b.decoder.state_dict().values()):
        assert torch.equal(p, q), name
