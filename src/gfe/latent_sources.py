"""Where the trainer's latents come from: the gradient flow (GFE) or an encoder (the
autoencoder baseline). The training loop asks its source and never branches on which
it has; everything else (data order, batches, optimizer, loss, checkpoints) is shared,
so comparisons are fair.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .devices import module_device
from .encode import FlowEncoder
from .errors import ConfigError
from .models import build_encoder
from .start import MAX_FEATURES, RidgeFit, RidgeStart, can_learn_start, default_refit_every, metric_from_hessian
from .train_config import TrainConfig


def _no_cost(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


class EncoderLatents:
    """The autoencoder baseline: latents from a mirrored encoder trained with the decoder,
    which carries the latent prior in its update loss (a flow's latents minimise it already)."""

    exact_gradients = False

    def __init__(self, decoder: nn.Module, config: TrainConfig):
        self.encoder = build_encoder(decoder).to(module_device(decoder))  # built on the CPU, as the decoder
        self.update_penalty = ("l2", config.latent_penalty) if config.latent_penalty else (None, 0.0)
        self.state: dict = {}  # nothing to checkpoint besides the model

    def parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def __call__(self, x: torch.Tensor, *, training: bool):
        """Latents of a batch, with each sample's flow steps and evaluations (none)."""
        return self.encoder(x), _no_cost(len(x)), _no_cost(len(x))

    def grad_mode(self):
        """Evaluation needs no graph: the encoder is one forward pass."""
        return torch.no_grad()

    def for_update(self, z: torch.Tensor) -> torch.Tensor:
        return z  # the update trains the encoder too

    def learn(self, x: torch.Tensor, z: torch.Tensor, gather) -> None:
        """Nothing to learn besides the encoder's weights."""

    def end_epoch(self) -> None:
        """Nothing to fold."""

    def encode_settings(self, config: TrainConfig) -> dict:
        return {"loss": config.loss}

    def start_map(self) -> None:
        return None

    def saved_modules(self) -> dict:
        return {"encoder": self.encoder}

    def restore(self, loaded, state: dict) -> None:
        """Take the encoder's weights from a checkpoint's model."""
        self.encoder.load_state_dict(loaded.encoder.state_dict())

    def load_saved(self, states: dict) -> None:
        """Take the encoder's weights from states of `saved_modules()` (a kept best epoch)."""
        self.encoder.load_state_dict(states["encoder"])


class FlowLatents:
    """GFE: latents from the gradient flow against the decoder being trained, from a
    learned start map (`gfe.start`) when the configuration asks for one."""

    def __init__(self, decoder: nn.Module, config: TrainConfig, weights: torch.Tensor | None):
        self.decoder, self.weights = decoder, weights
        self.train_flow = FlowEncoder(decoder, **config.flow_options(training=True))
        self.eval_flow = FlowEncoder(decoder, **config.flow_options(training=False))
        shape = tuple(decoder.out_shape)
        learn = config.start == "learned" and can_learn_start(shape)
        self.device = module_device(decoder)
        # The map starts one flow call per `encode_ahead` batches: re-solving it more often buys nothing.
        refit_every = max(default_refit_every(shape), config.batch_size * config.encode_ahead)
        self.start_fit = (RidgeFit(shape, config.latent_dim, refit_every=refit_every, device=self.device)
                          if learn else None)
        self.final_start: RidgeStart | None = None  # set by `refine` or `load_saved`
        self.update_penalty = (None, 0.0)
        self.exact_gradients = config.gradient != "approx"

    def parameters(self) -> list[nn.Parameter]:
        return []

    def start(self, x: torch.Tensor, *, training: bool) -> torch.Tensor:
        """Training flows begin at the learned start, when there is one; validation at 0."""
        if training and self.start_fit is not None:
            return self.start_fit.start(x, self.weights)
        return x.new_zeros((x.shape[0], self.decoder.latent_dim))

    def __call__(self, x: torch.Tensor, *, training: bool):
        """Latents of a batch, with each sample's flow steps and decoder evaluations."""
        if len(x) == 0:  # a replica's share of a batch may be empty
            return x.new_zeros((0, self.decoder.latent_dim)), _no_cost(0), _no_cost(0)
        flow = self.train_flow if training else self.eval_flow
        enc = flow(x, self.start(x, training=training), self.weights)
        return enc.z, enc.steps, enc.nfe

    def grad_mode(self):
        return contextlib.nullcontext()  # the flow differentiates the decoder in any mode

    def for_update(self, z: torch.Tensor) -> torch.Tensor:
        return z.detach()  # the approximate gradient holds latents fixed

    def learn(self, x: torch.Tensor, z: torch.Tensor, gather) -> None:
        """Fold a batch's latents (all replicas' rows, via `gather`) into the start map's fit."""
        if self.start_fit is not None:
            self.start_fit.update(gather(self.start_fit.rows(x, z, self.weights)))

    def end_epoch(self) -> None:
        if self.start_fit is not None:  # as a checkpoint would, so writing one changes no result
            self.start_fit.fold()

    def encode_settings(self, config: TrainConfig) -> dict:
        return config.flow_options(training=False)

    @property
    def state(self) -> dict:
        """What a checkpoint carries besides the model: the running start-map fit."""
        return {} if self.start_fit is None else {"start": self.start_fit.state_dict()}

    def restore(self, loaded, state: dict) -> None:
        """Take the running start-map fit from a checkpoint (the decoder comes with its model)."""
        if self.start_fit is not None and "start" in state:
            self.start_fit.load_state_dict(state["start"])

    def saved_modules(self) -> dict:
        return {"start": self.start_map()}

    def load_saved(self, states: dict) -> None:
        """Carry the start map in states of `saved_modules()` (a kept best epoch) instead of the training fit's."""
        if "start" in states:
            self.final_start = RidgeStart(tuple(self.decoder.out_shape), self.decoder.latent_dim).to(self.device)
            self.final_start.load_state_dict(states["start"])

    def start_map(self) -> RidgeStart | None:
        """The start map a saved model carries: the one `refine` fitted or a kept
        best epoch's, else the training fit solved from all its statistics; None
        when training starts at 0."""
        if self.final_start is not None:
            return self.final_start
        return None if self.start_fit is None else self.start_fit.fitted()

    def check_refine(self) -> None:
        if self.start_fit is None:
            raise ConfigError("refine_start needs a learned start: TrainConfig(start='learned') with a GFE method "
                              f"on at most {MAX_FEATURES:,} features")

    def refine(self, batches: Iterable[torch.Tensor], total: int, *, progress: bool) -> RidgeStart:
        """Refit the start map on the latents the finished decoder gives `batches`,
        encoded to convergence from the training fit's map, and give it the inverse of
        the energy's mean Hessian there as the BFGS rule's first metric.

        Training flows stop early, so the training fit predicts loose latents of earlier
        decoders, and a fresh BFGS metric knows nothing of the curvature; started nearer
        their end and with that curvature, later encodings need far fewer evaluations
        (measured: docs/benchmarks.md)."""
        self.check_refine()
        shape, d = tuple(self.decoder.out_shape), self.decoder.latent_dim
        fit = RidgeFit(shape, d, memory=math.inf, penalty=self.start_fit.penalty, refit_every=total + 1,
                       device=self.device)
        first = self.start_map()
        hessian, counted = 0.0, 0
        with tqdm(total=total, desc="refining the start map", unit="sample", disable=not progress,
                  leave=False) as bar:
            for xb in batches:
                z = self.eval_flow(xb, first(xb, self.weights), self.weights).z
                fit.update(fit.rows(xb, z, self.weights))
                finite = torch.isfinite(z).all(1)  # (weights have the feature shape: they fit any rows)
                n = int(finite.sum())
                hessian = hessian + self.eval_flow.objective.mean_hessian(z[finite], xb[finite], self.weights) * n
                counted += n
                bar.update(len(xb))
        refined = RidgeStart(shape, d, curvature=True).to(self.device)
        refined.weight.copy_(fit.solution())
        refined.metric.copy_(metric_from_hessian(hessian / max(counted, 1)))
        self.final_start = refined
        return refined


def latent_source(decoder: nn.Module, config: TrainConfig, weights: torch.Tensor | None):
    """The source a configuration's method trains with."""
    return FlowLatents(decoder, config, weights) if config.is_gfe else EncoderLatents(decoder, config)
