"""What determines a training run (`TrainConfig`) and what each epoch reports (`EpochRecord`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import ConfigError
from .gradients import check_gradient
from .losses import Loss
from .methods import method_spec
from .solvers import solver_spec
from .start import START_MODES

OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
ON_NONFINITE = ("stop", "skip")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything that determines a training run. `encode_options` go to the flow
    (e.g. {"gtol": 1e-3, "max_steps": 200}) during training; `eval_options` are
    used for validation and stored with the model for later encoding. Both
    override the method's defaults (`gfe.methods.METHODS`). `on_nonfinite` says what a
    batch whose loss is NaN or infinite does: "stop" the run with a
    `TrainingError`, or "skip" its update (counted in `EpochRecord.skipped_batches`).
    `start` is where training flows begin: "learned" (a ridge map from samples to
    the latents found so far, `gfe.start`; saved with the model; GFE methods on at
    most `gfe.start.MAX_FEATURES` features, else 0) or "zero". Validation always
    starts at 0, as the reference protocol does. `encode_ahead` batches are
    encoded in one flow call against the decoder as it is before the first of
    them, then each updates the decoder in turn: a batch's latents are up to
    `encode_ahead - 1` updates stale, but each decoder evaluation serves several
    batches, which on a CPU costs little more than one (approximate gradient only;
    docs/benchmarks.md measures the trade). `latent_penalty` (β) adds an L2 prior
    β·|z|² to the latents' energy: GFE flows minimise it in training and in the
    saved encoding settings (unless options name another penalty), the
    autoencoder adds it to its training loss. `latent_noise` (σ) trains the
    decoder on `z + σ·ε` instead of `z` (ε standard normal, seeded by seed, epoch
    and batch, so resume and DDP replay it): a decoder smooth at that scale, whose
    latents a linear model reads better (docs/spectra.md). Together they are the
    deterministic analogue of a VAE's prior and posterior noise. With validation
    data, `keep_best` makes the model `fit` ends with (and saves) the epoch of
    lowest validation loss rather than the last (`EpochRecord.best_epoch`), and
    `patience` stops the run once validation has not improved for that many
    epochs (it needs validation data). `lr_schedule="cosine"` lowers the learning
    rate from `lr` to 0 along half a cosine over the run's `epochs` (batch by
    batch), so the last updates are small and the decoder settles instead of
    jittering about its minimum. `retrain_all` keeps the initial weights so that,
    once validation has chosen the best epoch, `Trainer.retrained` trains that
    many epochs again on the training and validation samples together (for small
    data, where the validation share is a loss)."""

    method: str = "gfe-amd"
    latent_dim: int = 20
    epochs: int = 1
    batch_size: int = 5
    optimizer: str = "rmsprop"
    lr: float = 5e-4
    loss: str = "bce"
    seed: int = 0
    encode_options: dict = field(default_factory=dict)
    eval_options: dict = field(default_factory=dict)
    gradient: str = "approx"
    on_nonfinite: str = "stop"
    start: str = "learned"
    encode_ahead: int = 1
    latent_penalty: float = 0.0
    latent_noise: float = 0.0
    keep_best: bool = True
    patience: int | None = None
    lr_schedule: str = "constant"
    retrain_all: bool = False

    def __post_init__(self):
        method_spec(self.method)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        for name in ("latent_dim", "epochs", "batch_size", "encode_ahead"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        for name in ("keep_best", "retrain_all"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ConfigError(f"patience must be a positive integer (epochs) or None; got {self.patience!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        for name in ("latent_penalty", "latent_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
                raise ConfigError(f"{name} must be a finite number >= 0; got {value!r}")
        if self.latent_noise > 0 and self.gradient != "approx":
            raise ConfigError(f"latent_noise needs the approximate gradient: gradient={self.gradient!r} "
                              "differentiates the decoder at the converged latents themselves")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ConfigError(f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}; got {self.on_nonfinite!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        if self.start not in START_MODES:
            raise ConfigError(f"start must be one of {', '.join(START_MODES)}; got {self.start!r}")
        Loss(self.loss)  # validates the name
        if self.gradient != "approx" and not self.is_gfe:
            raise ConfigError(f"gradient={self.gradient!r} needs a GFE method; the autoencoder has no flow")
        if self.encode_ahead > 1 and not (self.is_gfe and self.gradient == "approx"):
            raise ConfigError("encode_ahead > 1 needs a GFE method with the approximate gradient: exact gradients "
                              "and the autoencoder's encoder need latents of the decoder being updated")
        if self.is_gfe:
            options = dict(self.flow_options(training=True))
            solver = solver_spec(options["solver"])
            check_gradient(self.gradient, solver, solver.make_options(
                {k: v for k, v in options.items() if k in solver.option_names}))

    @property
    def is_gfe(self) -> bool:
        return method_spec(self.method).is_gfe

    def flow_options(self, *, training: bool) -> dict:
        """Flow, solver, loss and the method's default options for `FlowEncoder`
        (with its `exact_options` when training with an exact gradient),
        overridden by `encode_options` (training) or `eval_options`."""
        spec = method_spec(self.method)
        flow, solver = (spec.flow, spec.solver) if spec.is_gfe else ("first", "amd")
        defaults = spec.encode_options if training else spec.eval_options
        if training and self.gradient != "approx":
            defaults = {**defaults, **spec.exact_options}
        options = self.encode_options if training else self.eval_options
        prior = {"penalty": "l2", "penalty_weight": float(self.latent_penalty)} if self.latent_penalty else {}
        return {"flow": flow, "solver": solver, "loss": self.loss, **defaults, **prior, **options}


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    seconds: float
    samples: int
    mean_steps: float
    mean_nfe: float
    skipped_batches: int = 0
    best_epoch: int = 0  # the epoch of lowest validation loss so far; 0 without validation
