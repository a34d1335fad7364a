"""The scikit-learn façade `GFE`: scikit-learn's own estimator checks, meta-estimators,
persistence (pickle and safetensors), determinism and error messages, all on tiny
data with a tiny decoder and a short flow."""

from __future__ import annotations

import doctest
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import gfe
import gfe.estimator
from gfe.errors import ConfigError, DataError, ModelFileError
from gfe.estimator import GFE
from gfe.train import TrainConfig, Trainer

FLOW = {"max_steps": 30, "gtol": 1e-4}


def tiny(**params) -> GFE:
    """A GFE that fits in a fraction of a second: 2 latents, one hidden layer of 16."""
    settings = dict(latent_dim=2, decoder={"type": "mlp", "hidden": [16]}, epochs=2, batch_size=8,
                    optimizer="adam", lr=1e-2, encode_options=FLOW)
    return GFE(**{**settings, **params})


@pytest.fixture(scope="module")
def X():
    """30 rows of rank-2 structure in 6 features (a smooth map of 2 hidden factors)."""
    rng = np.random.default_rng(0)
    return np.tanh(rng.normal(size=(30, 2)) @ rng.normal(size=(2, 6)))


@pytest.fixture(scope="module")
def fitted(X):
    return tiny().fit(X)


# Every check passes, so none is listed as an expected failure. The ones that a
# flow-based transformer could plausibly fail hold by design: transforms of
# subsets and permutations agree bit for bit (each row is encoded on its own, and
# evaluated in whole blocks of rows so that float32 kernels round it alike in any
# batch: gfe.rows), refits agree (seeded weights, seeded data order), and transform
# leaves the estimator unchanged (per-sample statistics come from `encode`, not
# from state). scikit-learn itself skips check_array_api_input unless
# SCIPY_ARRAY_API is set; GFE computes in torch and does not accept array-API inputs.
@parametrize_with_checks([tiny(epochs=1, batch_size=64, decoder={"type": "mlp", "hidden": [8]})])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_fit_transform_equals_fit_then_transform(X, fitted):
    assert np.array_equal(tiny().fit_transform(X), fitted.transform(X))


def test_fitted_attributes(X, fitted):
    assert fitted.n_features_in_ == 6 and fitted.n_iter_ == 2 and len(fitted.history_) == 2
    assert set(fitted.history_[0]) == {"epoch", "train_loss", "seconds", "samples", "mean_steps", "mean_nfe",
                                      "skipped_batches"}
    assert fitted.encode_stats_["samples"] == 30 and sum(fitted.encode_stats_["status"].values()) == 30
    assert fitted.reconstruction_err_ == pytest.approx(-fitted.score(X))
    assert list(fitted.get_feature_names_out()) == ["gfe0", "gfe1"]
    enc = fitted.encode(X[:4])
    assert isinstance(enc, gfe.Encoding) and enc.steps.shape == (4,) and len(enc.status_labels) == 4


def test_reconstructs_low_rank_data_better_than_the_mean(X, fitted):
    recon = fitted.inverse_transform(fitted.transform(X))
    assert recon.shape == X.shape and recon.dtype == np.float32
    assert np.mean((recon - X) ** 2) < 0.2 * np.mean((X - X.mean(0)) ** 2)


def test_deterministic_and_independent_of_batch_mates(X, fitted):
    assert np.array_equal(tiny().fit(X).transform(X), fitted.transform(X))
    assert not np.allclose(tiny(random_state=1).fit(X).transform(X), fitted.transform(X))
    assert np.array_equal(fitted.transform(X[3:4]), fitted.transform(X)[3:4])
    order = np.random.default_rng(0).permutation(len(X))[:17]
    assert np.array_equal(fitted.transform(X[order]), fitted.transform(X)[order])


def test_fit_leaves_the_global_torch_rng_alone(X):
    state = torch.get_rng_state()
    tiny(epochs=1).fit(X)
    assert torch.equal(torch.get_rng_state(), state)


def test_random_state_none_or_generator(X):
    for random_state in (None, np.random.RandomState(3)):
        assert tiny(epochs=1, random_state=random_state).fit(X).transform(X).shape == (30, 2)


def test_pipeline_with_bce_after_minmax_scaling(X):
    pipe = make_pipeline(MinMaxScaler(), tiny(loss="bce", lr=5e-2, epochs=3))
    Z = pipe.fit_transform(X)
    recon = pipe.inverse_transform(Z)  # sigmoid of the decoder, then the scaler undone
    assert Z.shape == (30, 2) and recon.shape == X.shape
    assert np.mean((recon - X) ** 2) < np.mean((X - X.mean(0)) ** 2)
    assert pipe.score(X) < 0


def test_grid_search_uses_score(X):
    # A NumPy grid gives np.int64 values, which the trainer's config must still accept.
    search = GridSearchCV(tiny(epochs=1), {"latent_dim": np.array([1, 2])}, cv=2).fit(X)
    assert search.best_params_["latent_dim"] in (1, 2)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert np.all(search.cv_results_["mean_test_score"] < 0)


def test_pickle_and_joblib_round_trips(X, fitted, tmp_path):
    for restored in (pickle.loads(pickle.dumps(fitted)),
                     joblib.load(joblib.dump(fitted, tmp_path / "gfe.joblib")[0])):
        assert np.array_equal(restored.transform(X), fitted.transform(X))


def test_save_load_round_trip(X, fitted, tmp_path):
    fitted.save(tmp_path / "model")
    loaded = GFE.load(tmp_path / "model")
    Z = fitted.transform(X)
    assert np.array_equal(loaded.transform(X), Z)
    assert np.array_equal(loaded.inverse_transform(Z), fitted.inverse_transform(Z))
    for name in ("n_features_in_", "n_iter_", "history_", "reconstruction_err_", "encode_stats_"):
        assert getattr(loaded, name) == getattr(fitted, name), name
    # The parameters are restored too: refitting the loaded model retrains the same one.
    assert np.array_equal(clone(loaded).fit(X).transform(X), Z)


def test_save_load_keeps_every_parameter(X, tmp_path):
    """Every constructor parameter, each set off its default, survives save and load,
    so `clone(GFE.load(d))` is the recipe of the saved model."""
    params = dict(latent_dim=3, method="gfe-nesterov", loss="bce", decoder={"type": "mlp", "hidden": [8]},
                  feature_shape=(2, 3), epochs=2, batch_size=7, optimizer="adam", lr=1e-2, lr_schedule="cosine",
                  encode_options={"max_steps": 10, "gtol": 1e-3}, encode_ahead=2, refine_start=True,
                  latent_penalty=0.1, latent_noise=0.05, random_state=3, device="cpu:0", verbose=True)
    defaults = GFE().get_params()
    assert params.keys() == defaults.keys()  # a new parameter belongs here too
    assert [name for name in params if params[name] == defaults[name]] == []
    model = GFE(**params).fit((X + 1) / 2)  # in [0, 1] for bce
    loaded = GFE.load(model.save(tmp_path / "model"))
    params["device"] = "cpu"  # but the device: the one it was loaded on, GFE.load's
    assert loaded.get_params() == params
    assert clone(loaded).get_params() == params


def test_save_load_keeps_the_seed_a_random_state_gave(X, tmp_path):
    model = tiny(epochs=1, random_state=np.random.RandomState(5)).fit(X)
    loaded = GFE.load(model.save(tmp_path / "model"))
    assert loaded.random_state == model._settings["train_config"]["seed"]
    assert np.array_equal(clone(loaded).fit(X).transform(X), model.transform(X))


def test_load_a_model_the_trainer_saved(X, tmp_path):
    config = TrainConfig(latent_dim=2, epochs=1, batch_size=8, loss="mse", encode_options=FLOW, eval_options=FLOW)
    trainer = Trainer(config, (2, 3), progress=False)  # a non-flat feature shape
    trainer.fit(X.reshape(30, 2, 3))
    trainer.save_model(tmp_path / "model")
    loaded = GFE.load(tmp_path / "model")
    expected = gfe.encode(trainer.decoder, X.reshape(30, 2, 3), z0=trainer.start_map(),
                          **trainer.settings()["encode"]).z.detach().numpy()
    assert loaded.feature_shape == (2, 3) and loaded.n_features_in_ == 6
    assert np.array_equal(loaded.transform(X), expected)
    assert loaded.inverse_transform(expected).shape == (30, 6)
    assert loaded.reconstruction_err_ is None and loaded.history_ == []


def test_load_refuses_an_autoencoder(X, tmp_path):
    trainer = Trainer(TrainConfig(method="ae", latent_dim=2, loss="mse"), (6,), progress=False)
    trainer.save_model(tmp_path / "ae")
    with pytest.raises(ModelFileError, match="does not hold a gradient-flow model"):
        GFE.load(tmp_path / "ae")


def test_conv_decoder_with_feature_shape(X):
    model = tiny(decoder={"type": "conv1d", "channels": [4, 2]}, feature_shape=(2, 3), epochs=1).fit(X)
    assert model.decoder_.out_shape == (2, 3)
    assert model.transform(X).shape == (30, 2)
    assert model.inverse_transform(model.transform(X)).shape == (30, 6)


def test_errors_on_use(X, fitted):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        tiny().transform(X)
    with pytest.raises(NotFittedError):
        tiny().inverse_transform(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="X has 5 features, but GFE is expecting 6 features as input"):
        fitted.transform(X[:, :5])
    with pytest.raises(DataError, match="Z has 3 columns, but this GFE has latent_dim=2"):
        fitted.inverse_transform(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="Expected 2D array"):
        fitted.inverse_transform(np.zeros(2))


@pytest.mark.parametrize("params, error, match", [
    ({"method": "ae"}, ConfigError, "autoencoder baseline"),
    ({"method": "pca"}, ConfigError, "unknown method 'pca'"),
    ({"latent_dim": 0}, ConfigError, "latent_dim must be a positive integer"),
    ({"loss": "l1"}, ConfigError, "unknown loss 'l1'"),
    ({"encode_options": [("gtol", 1)]}, ConfigError, "encode_options must be a dict"),
    ({"encode_options": {"dt": 0.1}}, ConfigError, "solver 'amd' has no option"),
    ({"decoder": "transformer"}, ConfigError, "unknown decoder type 'transformer'"),
    ({"decoder": 3}, ConfigError, "decoder must be None, a registered type"),
    ({"decoder": {"type": "mlp", "latent_dim": 4}}, ConfigError, r"sets \['latent_dim'\]"),
    ({"feature_shape": (4, 2)}, ConfigError, "feature_shape .* does not fit X's 6 features"),
    ({"random_state": -1}, ValueError, "Seed must be between"),
    ({"encode_ahead": 0}, ConfigError, "encode_ahead must be a positive integer"),
    ({"refine_start": "yes"}, ConfigError, "refine_start must be True or False"),
    ({"latent_penalty": -1.0}, ConfigError, "latent_penalty must be a finite number >= 0"),
    ({"loss": "bce"}, DataError, r"the bce loss needs data in \[0, 1\]"),
])
def test_bad_parameters_fail_in_fit_not_init(X, params, error, match):
    model = tiny(**params)  # scikit-learn's contract: __init__ only stores
    with pytest.raises(error, match=match):
        model.fit(X)


def test_latent_regularisation_reaches_training_and_transform(X):
    free = tiny().fit(X)
    regularised = tiny(latent_penalty=0.5, latent_noise=0.2).fit(X)
    assert regularised._settings["train_config"]["latent_noise"] == 0.2
    assert regularised._settings["encode"]["penalty_weight"] == 0.5
    assert np.square(regularised.transform(X)).sum(1).mean() < np.square(free.transform(X)).sum(1).mean()


def test_refined_start_and_encoding_ahead(X, tmp_path):
    """`refine_start` gives `start_` the curvature where the flows end, and transform
    (BFGS steps by default) then needs fewer evaluations; `encode_ahead` reaches the trainer."""
    plain = tiny(encode_options={"gtol": 1e-4}, encode_ahead=2).fit(X)
    refined = tiny(encode_options={"gtol": 1e-4}, encode_ahead=2, refine_start=True).fit(X)
    assert plain.start_.metric is None and refined.start_.metric.shape == (2, 2)
    assert refined._settings["train_config"]["encode_ahead"] == 2
    assert torch.equal(refined.decoder_.net[0].weight, plain.decoder_.net[0].weight)  # training is unchanged
    nfe = {name: float(model.encode(X).nfe.float().mean()) for name, model in (("plain", plain),
                                                                                  ("refined", refined))}
    assert nfe["refined"] < nfe["plain"], nfe
    loaded = GFE.load(refined.save(tmp_path / "model"))
    assert torch.equal(loaded.start_.metric, refined.start_.metric)


def test_docstring_examples():
    result = doctest.testmod(gfe.estimator, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_exported_from_the_package():
    assert gfe.GFE is GFE and "GFE" in gfe.__all__
