"""How a trained model encodes, resolved once: the model's stored encode settings with
the user's options on top, checked, as one typed object that the file pipeline,
shards, plots and the estimator all use.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from .encode import Encoding, FlowEncoder, encode
from .errors import ConfigError
from .losses import Loss
from .start import MAX_FEATURES, START_MODES

DEFAULT_CHUNK = inspect.signature(FlowEncoder).parameters["chunk_size"].default


@dataclass(frozen=True)
class EncodeSettings:
    """`options` go to `gfe.encode` (flow, solver, loss, tolerances, solver options);
    `start` is "learned" (the model's start map) or "zero"; `with_encoder` is True
    for an autoencoder model encoded with its encoder (when no options ask for the flow)."""

    options: dict
    start: str
    with_encoder: bool = False

    @classmethod
    def resolve(cls, stored: dict, options: dict | None = None, *, has_start: bool,
                has_encoder: bool = False) -> EncodeSettings:
        """Settings from a model's `stored` encode settings and the user's `options`.

        Flows start where the model says: "learned" (its start map, if it has one,
        the default) or "zero". Both read each sample alone, so a latent does not
        depend on the chunk or shard it is encoded in; a random start would, and is
        refused."""
        merged = {"start": "learned" if has_start else "zero", **stored, **(options or {})}
        if merged.get("seed") is not None or merged.get("z0") is not None:
            raise ConfigError("gfe encodes data files from the model's start (a random start would depend on how the "
                              "samples are chunked or sharded); 'seed' and 'z0' are options of gfe.encode on arrays")
        start = merged.pop("start")
        if start not in START_MODES:
            raise ConfigError(f"start must be one of {', '.join(START_MODES)}; got {start!r}")
        if start == "learned" and not has_start:
            raise ConfigError("this model has no learned start map (trained with start='zero', on more than "
                              f"{MAX_FEATURES} features, or by an older gfe); encode with start='zero'")
        return cls(merged, start, has_encoder and not options)

    @classmethod
    def of_model(cls, loaded, options: dict | None = None) -> EncodeSettings:
        """Settings of a `gfe.persist.LoadedModel`."""
        return cls.resolve(loaded.settings.get("encode", {}), options, has_start=loaded.start is not None,
                           has_encoder=loaded.encoder is not None)

    @property
    def loss(self) -> str:
        return self.options.get("loss", "bce")

    @property
    def loss_function(self) -> Loss:
        """The loss and latent penalty the flow descends."""
        return Loss.of(self.options.get("loss", "bce"), self.options.get("penalty"),
                       self.options.get("penalty_weight", 0.0))

    @property
    def chunk_size(self) -> int:
        """Samples per solver call: files are read and encoded in chunks of this size,
        the chunks an in-memory encoding would make."""
        return self.options.get("chunk_size", DEFAULT_CHUNK)

    def record(self) -> dict:
        """The settings as JSON, as latents files and shard manifests record them."""
        return {"start": self.start, **self.options}

    def flow_encode(self, decoder, start_map, x, *, weights=None, progress: bool = False) -> Encoding:
        """Encode `x` by the flow against `decoder` from `start_map` (used when `start` is "learned")."""
        z0 = start_map if self.start == "learned" else None
        return encode(decoder, x, progress=progress, weights=weights, z0=z0, **self.options)
