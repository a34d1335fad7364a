"""`GFE`: the scikit-learn façade over `Trainer` (fit) and `encode` (transform).

It adds no numerics of its own: it checks parameters and arrays the way
scikit-learn expects, trains with `Trainer`, encodes with `gfe.encode` and saves
with `gfe.persist`, so a model behaves the same whichever interface made it.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .channels import Channels
from .devices import module_device, resolve_device
from .encode import Encoding
from .encode_settings import EncodeSettings
from .errors import ConfigError, DataError, ModelFileError
from .losses import link
from .methods import flow_methods, method_spec
from .models import DECODERS, build_decoder, default_decoder
from .normalise import Standardisation, normalise
from .persist import load_model, save_model
from .train import Trainer
from .train_config import TrainConfig
from .uncertainty import LatentUncertainty, laplace

_SET_BY_GFE = ("latent_dim", "out_shape")  # decoder arguments GFE fills in itself


class GFE(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Gradient Flow Encoding as a scikit-learn transformer.

    `fit` trains a decoder on latents found by a gradient flow (there is no
    encoder); `transform` finds each row's latent by integrating that flow from
    a start that depends on the row alone (`start_`), so latents are
    deterministic and do not depend on the other rows;
    `inverse_transform` decodes latents back to data space.

    Parameters
    ----------
    latent_dim : int, default=20
        Size of each latent vector.
    method : str, default="gfe-amd"
        A gradient-flow method of `gfe.methods.METHODS`: "gfe-amd", "gfe-nesterov",
        "gfe-euler", "gfe-rk4" or "gfe-dopri5". (The autoencoder baseline "ae"
        has an encoder and is trained with `gfe.train.Trainer` instead.)
    loss : {"mse", "bce", "poisson"}, default="mse"
        "mse" is the default because a general-purpose estimator meets arbitrary
        real data (scikit-learn's own checks feed it such data); `gfe train`
        defaults to "bce" instead, the paper's protocol on images. Use "bce" for
        data in [0, 1], such as images or the output of `MinMaxScaler` (the
        paper's choice for MNIST), and "poisson" for counts.
    decoder : None, str or dict, default=None
        None for the paper's MLP (hidden 150, 300, 600, ELU), as
        ``gfe train --decoder mlp``; a registered type
        ("mlp", "pca-mlp", "conv1d", "conv2d"); or a config dict of its constructor
        arguments, e.g. ``{"type": "mlp", "hidden": [64]}``. GFE fills in
        latent_dim and out_shape. "pca-mlp" starts from a PCA of X (for nearly
        linear data such as spectra).
    feature_shape : tuple of int, default=None
        The shape the decoder sees for each row of X, e.g. (C, L) for "conv1d"
        or (H, W) for "conv2d". Its product must be n_features; None keeps rows
        flat. X, transform's input and inverse_transform's output stay 2-D.
    epochs, batch_size, optimizer, lr, lr_schedule : training settings of `TrainConfig`
        The defaults are the trainer's and `gfe train`'s (the paper's MNIST
        run: one pass, batches of 5, RMSprop at a constant 5e-4). `fit` has no
        validation data, so it trains every epoch and keeps the last
        (`gfe.train.Trainer` keeps the best validation epoch and stops early).
    encode_options : dict, default=None
        Options for the flow, used in training and in transform, e.g.
        ``{"max_steps": 200, "gtol": 1e-4}`` (see `gfe.encode`).
    encode_ahead : int, default=1
        Batches encoded per flow call in training (`TrainConfig.encode_ahead`):
        faster for small batches on a CPU, with latents up to
        ``encode_ahead - 1`` updates stale.
    refine_start : bool, default=False
        After training, refit `start_` on converged latents of X and give it
        their mean curvature as the first BFGS metric (`Trainer.refine_start`):
        one more encoding of X in `fit`, fewer decoder evaluations in every
        `transform` with ``{"step": "bfgs"}``, the default of "gfe-amd".
    latent_penalty, latent_noise : float, default=0.0
        An L2 prior on the latents (in training and in transform) and Gaussian
        noise on the decoder's training latents (`TrainConfig`): bounded,
        smoother latent spaces for downstream linear models.
    random_state : int, RandomState or None, default=0
        Seeds the decoder's initial weights and the data order. Encodings use
        no randomness.
    device : str, default="cpu"
        Where to train and encode: "cpu", "cuda", "cuda:N" or "mps"
        (`gfe.devices.resolve_device`). The decoder is built on the CPU, so its
        initial weights do not depend on the device; arrays in and out stay
        NumPy, and a saved model loads on any device.
    verbose : bool, default=False
        Show a progress bar per epoch. Off by default, as scikit-learn
        estimators are silent; `gfe train` reports unless --quiet.

    Attributes
    ----------
    decoder_ : torch.nn.Module
        The trained decoder.
    start_ : gfe.start.RidgeStart or None
        The learned start map: a ridge regression from rows to the latents the
        flow found during training, where `transform`'s flows begin (fewer
        decoder evaluations than from 0 for the same loss; measured:
        docs/benchmarks.md). None (start at 0) for more than
        `gfe.start.MAX_FEATURES` features.
    channels_ : gfe.channels.Channels
        The input channels the model uses: all of them for models `fit` made;
        for a model from `gfe train --range/--weights`, those it kept and weighs
        (`channels_.model_axis`: their axis values, when the data gave an axis).
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when X had string column names)
    n_iter_ : int
        Epochs run.
    history_ : list of dict
        Per epoch: mean training loss, seconds, samples, mean flow steps and
        decoder evaluations per sample.
    reconstruction_err_ : float
        Mean loss of the training data at their final latents.
    encode_stats_ : dict
        `Encoding.summary()` of that final encoding of the training data (mean
        steps, nfe, loss and status counts). Per-sample statistics of any data
        come from `encode(X)`; `transform` leaves the estimator unchanged.

    Latents and reconstructions are float32, the decoder's precision.

    There is no per-feature standardisation option (`gfe train --standardise`):
    put a `sklearn.preprocessing.StandardScaler` before GFE in a `Pipeline`,
    whose `inverse_transform` then gives reconstructions in the data's units.

    Examples
    --------
    >>> import numpy as np
    >>> from gfe.estimator import GFE
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((40, 2)) @ rng.random((2, 6))  # 40 rows of rank-2 data
    >>> model = GFE(latent_dim=2, decoder={"type": "mlp", "hidden": [16]}, epochs=2,
    ...             batch_size=8, lr=1e-2, encode_options={"max_steps": 50, "gtol": 1e-4})
    >>> Z = model.fit_transform(X)
    >>> Z.shape, Z.dtype
    ((40, 2), dtype('float32'))
    >>> model.inverse_transform(Z).shape
    (40, 6)
    >>> bool(model.score(X) == -model.reconstruction_err_)
    True

    In a pipeline, scaling to [0, 1] lets the decoder use the "bce" loss:

    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import MinMaxScaler
    >>> pipe = make_pipeline(MinMaxScaler(), GFE(latent_dim=2, loss="bce",
    ...     decoder={"type": "mlp", "hidden": [16]}, epochs=1, batch_size=8,
    ...     encode_options={"max_steps": 50, "gtol": 1e-4}))
    >>> pipe.fit_transform(X).shape
    (40, 2)
    """

    def __init__(
        self,
        latent_dim=TrainConfig.latent_dim,
        *,
        method=TrainConfig.method,
        loss="mse",
        decoder=None,
        feature_shape=None,
        epochs=TrainConfig.epochs,
        batch_size=TrainConfig.batch_size,
        optimizer=TrainConfig.optimizer,
        lr=TrainConfig.lr,
        lr_schedule=TrainConfig.lr_schedule,
        encode_options=None,
        encode_ahead=TrainConfig.encode_ahead,
        refine_start=False,
        latent_penalty=TrainConfig.latent_penalty,
        latent_noise=TrainConfig.latent_noise,
        random_state=TrainConfig.seed,
        device="cpu",
        verbose=False,
    ):
        self.latent_dim = latent_dim
        self.method = method
        self.loss = loss
        self.decoder = decoder
        self.feature_shape = feature_shape
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.encode_options = encode_options
        self.encode_ahead = encode_ahead
        self.refine_start = refine_start
        self.latent_penalty = latent_penalty
        self.latent_noise = latent_noise
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Train the decoder on X, shape (n_samples, n_features); `y` is ignored."""
        self._fit(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit, then return X's latents (fit's final encoding of X, so no second pass)."""
        return _numpy(self._fit(X).z)

    def _fit(self, X) -> Encoding:
        config = self._train_config()
        device = resolve_device(self.device)
        X = validate_data(self, X, dtype=np.float32)
        shape = self._feature_shape(X.shape[1])
        # Seed the initial weights without disturbing the caller's torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            decoder = self._build_decoder(config.latent_dim, shape).to(device)
            trainer = Trainer(config, shape, decoder=decoder, progress=bool(self.verbose))
            trainer.fit(X)
            if self.refine_start:
                trainer.refine_start(X, max_samples=len(X))
        self.decoder_ = trainer.decoder.eval()
        self.start_ = trainer.start_map()
        self._settings = trainer.settings()
        self._inputs, self.channels_ = None, Channels()
        self.n_iter_ = len(trainer.history)
        # fit has no validation data, so each record's val_loss is NaN and best_epoch 0: leave them out.
        self.history_ = [{k: v for k, v in asdict(r).items() if k not in ("val_loss", "best_epoch")}
                         for r in trainer.history]
        encoding = self._encode(X)
        self.reconstruction_err_ = float(encoding.loss.mean())
        self.encode_stats_ = encoding.summary()
        return encoding

    def _train_config(self) -> TrainConfig:
        """The parameters as a `TrainConfig`, which validates them."""
        if not method_spec(self.method).is_gfe:
            raise ConfigError(
                f"method {self.method!r} is the autoencoder baseline, which has an encoder; GFE fits "
                f"the gradient-flow methods {flow_methods()} "
                "(train the baseline with gfe.train.Trainer)")
        if not isinstance(self.refine_start, (bool, np.bool_)):
            raise ConfigError(f"refine_start must be True or False; got {self.refine_start!r}")
        options = {} if self.encode_options is None else self.encode_options
        if not isinstance(options, dict):
            raise ConfigError(f"encode_options must be a dict or None; got {options!r}")
        return TrainConfig(
            method=self.method, latent_dim=_plain(self.latent_dim), epochs=_plain(self.epochs),
            batch_size=_plain(self.batch_size), optimizer=self.optimizer, lr=_plain(self.lr),
            lr_schedule=self.lr_schedule,
            loss=self.loss, seed=self._seed(), encode_options=dict(options), eval_options=dict(options),
            encode_ahead=_plain(self.encode_ahead), latent_penalty=_plain(self.latent_penalty),
            latent_noise=_plain(self.latent_noise))

    def _seed(self) -> int:
        """An int seed: `random_state` itself if it is one, else a draw from it."""
        rng = check_random_state(self.random_state)  # rejects values numpy cannot seed with
        if isinstance(self.random_state, Integral):
            return int(self.random_state)
        return int(rng.randint(np.iinfo(np.int32).max))

    def _feature_shape(self, n_features: int) -> tuple[int, ...]:
        if self.feature_shape is None:
            return (n_features,)
        shape = (self.feature_shape,) if isinstance(self.feature_shape, Integral) else tuple(self.feature_shape)
        if not all(isinstance(n, Integral) and n > 0 for n in shape) or math.prod(shape) != n_features:
            raise ConfigError(
                f"feature_shape {self.feature_shape!r} does not fit X's {n_features} features: "
                f"it must be positive integers whose product is {n_features}")
        return tuple(int(n) for n in shape)

    def _build_decoder(self, latent_dim: int, shape: tuple[int, ...]) -> torch.nn.Module:
        if self.decoder is None:
            return default_decoder(shape, latent_dim)
        spec = {"type": self.decoder} if isinstance(self.decoder, str) else self.decoder
        if not isinstance(spec, dict):
            raise ConfigError(
                f"decoder must be None, a registered type {sorted(DECODERS)} or a config dict such as "
                f"{{'type': 'mlp', 'hidden': [64]}}; got {self.decoder!r}")
        clash = [key for key in _SET_BY_GFE if key in spec]
        if clash:
            raise ConfigError(
                f"the decoder config sets {clash}; GFE sets them from latent_dim and feature_shape")
        return build_decoder({**spec, "latent_dim": latent_dim, "out_shape": list(shape)})

    # ----------------------------------------------------------------- encoding
    def encode(self, X) -> Encoding:
        """Latents of X with per-sample loss, steps, nfe and status (a `gfe.Encoding`)."""
        check_is_fitted(self)
        return self._encode(validate_data(self, X, dtype=np.float32, reset=False))

    def _encode(self, X: np.ndarray) -> Encoding:
        x, weights = self._prepared(X)
        return self._encode_settings().flow_encode(self.decoder_, self.start_, x, weights=weights)

    def _prepared(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """X as the decoder sees it, and the loss's feature weights: a command-line
        model's channels kept, weighed, normalised and standardised as `gfe encode` does."""
        if self._inputs is None:
            return X, None
        channels, kind, standardised = self._inputs
        x = channels.select(X.reshape(len(X), *channels.input_shape))
        x, _ = normalise(x, kind, channels.loss_weights(None))
        return (x if standardised is None else standardised.apply(x)), channels.loss_weights(None)

    def _encode_settings(self) -> EncodeSettings:
        return EncodeSettings.resolve(self._settings["encode"], has_start=self.start_ is not None)

    def encode_uncertainty(self, X, *, noise_std=None) -> tuple[Encoding, LatentUncertainty]:
        """`encode(X)` and each latent's Laplace covariance, given the decoder
        (`gfe.uncertainty.laplace`; docs/uncertainty.md): `noise_std` is the Gaussian
        noise level of the mse loss (None: estimated per sample from its residual)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        encoding = self._encode(X)
        x, weights = self._prepared(X)
        x = torch.from_numpy(np.ascontiguousarray(x)).reshape(len(x), *self.decoder_.out_shape)
        return encoding, laplace(self.decoder_, self._encode_settings().loss_function, x, encoding.z, weights,
                                 noise_std=noise_std)

    def transform(self, X, return_std=False):
        """Latents of X, shape (n_samples, latent_dim): each row's flow from its start.
        With `return_std`, also their standard deviations, same shape, as
        `encode_uncertainty` gives them (NaN or inf where they are not valid)."""
        if not return_std:
            return _numpy(self.encode(X).z)
        encoding, latent = self.encode_uncertainty(X)
        return _numpy(encoding.z), latent.std.float().numpy()

    def inverse_transform(self, Z):
        """Reconstructions in data space, shape (n_samples, n_features): the decoder's
        output through the loss's link (sigmoid for bce, exp for poisson). For a
        model from `gfe train`, its features are the channels it kept (`--range`;
        their axis is `channels_.model_axis`), with its standardisation undone;
        per-sample normalisation is not (each sample's scale is not known here)."""
        check_is_fitted(self)
        Z = check_array(Z, dtype=np.float32, input_name="Z")
        if Z.shape[1] != self.decoder_.latent_dim:
            raise DataError(
                f"Z has {Z.shape[1]} columns, but this GFE has latent_dim={self.decoder_.latent_dim}; "
                "pass latents shaped like transform's output")
        with torch.no_grad():
            z = torch.from_numpy(np.array(Z))  # a copy: Z may be read-only
            out = self.decoder_(z.to(module_device(self.decoder_)))
        out = _numpy(link(self._settings["encode"]["loss"], out))
        if self._inputs is not None and self._inputs[2] is not None:
            out = self._inputs[2].undo(out)
        return out.reshape(len(Z), -1)

    def score(self, X, y=None) -> float:
        """Negative mean loss of X at its latents: higher is better, as model selection expects."""
        return -float(self.encode(X).loss.mean())

    @property
    def _n_features_out(self) -> int:
        """Number of latents, for `get_feature_names_out` ("gfe0", "gfe1", ...)."""
        return self.decoder_.latent_dim

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    # -------------------------------------------------------------- persistence
    def save(self, directory) -> Path:
        """Write the fitted model as safetensors weights plus JSON (`gfe.save_model`):
        loading it never runs code, unlike a pickle."""
        check_is_fitted(self)
        # Every constructor parameter, so that `load` restores them all; random_state as the seed fit
        # used, which is what it meant for this model (a RandomState cannot be written as JSON).
        params = {name: _plain(value) for name, value in self.get_params().items()}
        fitted = {"params": {**params, "random_state": self._settings["train_config"]["seed"],
                             "device": str(self.device)},
                  "n_features_in": self.n_features_in_, "n_iter": self.n_iter_, "history": self.history_,
                  "reconstruction_err": self.reconstruction_err_, "encode_stats": self.encode_stats_}
        if hasattr(self, "feature_names_in_"):
            fitted["feature_names_in"] = self.feature_names_in_.tolist()
        return save_model(directory, self.decoder_, settings={**self._settings, "estimator": fitted},
                          start=self.start_)

    @classmethod
    def load(cls, directory, device="cpu") -> "GFE":
        """A fitted GFE from a model directory written by `save`, with the
        parameters it was saved with (an int `random_state` in place of a
        RandomState or None: the seed `fit` drew), so `clone` retrains the same
        model; or by `Trainer` or the command line for a gradient-flow method
        (then the parameters are those its training config records,
        `reconstruction_err_` and `encode_stats_`, which only `fit` records, are
        None, `history_` is empty and `n_iter_` is the configured number of epochs).
        A command-line model's data preparation comes along: `transform` takes
        samples as `gfe train` read them (every channel), keeps and weighs its
        channels (`--range`, `--weights`; `channels_`), normalises and standardises
        them as it did; `n_features_in_` counts every channel.
        The model is loaded onto `device`, which becomes its `device` parameter."""
        loaded = load_model(directory, device)
        settings = dict(loaded.settings)
        if loaded.encoder is not None or "train_config" not in settings or "encode" not in settings:
            raise ModelFileError(f"{directory} does not hold a gradient-flow model that GFE can load")
        train = settings["train_config"]
        out_shape = loaded.decoder.out_shape
        fitted = settings.pop("estimator", {})
        params = fitted.get("params")
        if params is None:  # written by Trainer, `gfe train` or an older gfe: the training config's share
            decoder = {k: v for k, v in loaded.decoder.config().items() if k not in _SET_BY_GFE}
            params = {name: train[name] for name in cls._get_param_names() if name in train}
            params.update(decoder=decoder, feature_shape=None if len(out_shape) == 1 else tuple(out_shape),
                          random_state=train["seed"])
        elif isinstance(params.get("feature_shape"), list):  # JSON has no tuples
            params = {**params, "feature_shape": tuple(params["feature_shape"])}
        model = cls(**{**params, "device": str(resolve_device(device))})
        model.decoder_ = loaded.decoder
        model.start_ = loaded.start
        model._settings = settings
        model._inputs = _inputs(loaded)
        model.channels_ = Channels() if model._inputs is None else model._inputs[0]
        model.n_features_in_ = math.prod(model.channels_.input_shape or out_shape)
        model.n_iter_ = fitted.get("n_iter", train["epochs"])
        model.history_ = fitted.get("history", [])
        model.reconstruction_err_ = fitted.get("reconstruction_err")
        model.encode_stats_ = fitted.get("encode_stats")
        if "feature_names_in" in fitted:
            model.feature_names_in_ = np.asarray(fitted["feature_names_in"], dtype=object)
        return model


def _inputs(loaded) -> tuple | None:
    """(channels, normalisation, standardisation or None) a command-line model
    prepares its samples with, or None for models `fit` or `Trainer` wrote."""
    settings = loaded.settings
    if "channels" not in settings:
        return None
    standardised = (Standardisation.from_arrays(loaded.arrays, loaded.decoder.out_shape)
                    if settings.get("standardise") else None)
    return Channels.from_record(settings["channels"]), settings.get("normalise", "none"), standardised


def _plain(value):
    """NumPy scalars (e.g. from a GridSearchCV grid built with np.arange) as Python ones."""
    return value.item() if isinstance(value, np.generic) else value


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
