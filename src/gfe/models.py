"""Decoders, the autoencoder baseline's encoders, and the registry that rebuilds them.

A model file names its architecture by a registry key ("mlp", "conv1d", "conv2d")
plus constructor arguments, never by an import path, so loading a model cannot run
arbitrary code. Decoders map `(B, latent_dim)` to `(B, *out_shape)` and return raw
values (logits, log-rates): the loss applies the link. No layer uses batch
statistics, so a sample's output depends on its own latent only, which the
per-sample encoding guarantees rely on.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import ConfigError
from .registry import Registry

ACTIVATIONS = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d}
# Nearest x2 upsampling then a 3-tap convolution (padding 1) equals a stride-2
# transposed convolution with 4 taps: output 2i sees w0·s[i-1] + (w1+w2)·s[i],
# output 2i+1 sees (w0+w1)·s[i] + w2·s[i+1]. Row k of this matrix makes tap k.
_UPSAMPLED_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _int_tuple(name: str, value, *, allow_empty: bool = False) -> tuple[int, ...]:
    """Normalise an int or a sequence of ints (JSON gives lists) to a tuple."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{name} must be a sequence of positive integers; got {value!r}")
    result = tuple(_positive_int(f"every entry of {name}", v) for v in value)
    if not result and not allow_empty:
        raise ConfigError(f"{name} must not be empty")
    return result


def _activation(name) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


LATENT_COLUMNS = 16  # matrix products with at least this many columns round each row alike


class LatentLinear(nn.Linear):
    """A decoder's linear layer on the latent, padded so that its vector-Jacobian
    product to the latent (a matrix product with `in_features` columns) does not
    depend on a row's position in the batch: MKL rounds the rows of products with
    fewer than 12 columns by position (see `gfe.rows`). The latent and the weight
    get zero columns up to `LATENT_COLUMNS`; parameters are those of `nn.Linear`."""

    def forward(self, z: Tensor) -> Tensor:
        extra = LATENT_COLUMNS - self.in_features
        if extra <= 0:
            return super().forward(z)
        return F.linear(F.pad(z, (0, extra)), F.pad(self.weight, (0, extra)), self.bias)


def _mlp(sizes: list[int], activation: type[nn.Module], first: type[nn.Linear] = nn.Linear) -> nn.Sequential:
    """Linear layers (the first of type `first`) with `activation` between them and none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers += [(first if i == 0 else nn.Linear)(n_in, n_out), activation()]
    return nn.Sequential(*layers[:-1])


class _Configurable(nn.Module):
    """A module that can describe itself as a JSON config its registry can rebuild."""

    kind: str  # registry key

    def _remember(self, **arguments) -> None:
        self._arguments = arguments

    def config(self) -> dict:
        """JSON-serialisable constructor arguments plus the registry `"type"`."""
        return {"type": self.kind, **copy.deepcopy(self._arguments)}


class MLPDecoder(_Configurable):
    """Fully connected decoder: latent -> hidden layers -> prod(out_shape)."""

    kind = "mlp"

    def __init__(self, latent_dim: int, out_shape, hidden=(150, 300, 600), activation: str = "elu"):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.out_shape = _int_tuple("out_shape", out_shape)
        self.hidden = _int_tuple("hidden", hidden, allow_empty=True)
        sizes = [self.latent_dim, *self.hidden, math.prod(self.out_shape)]
        self.net = _mlp(sizes, _activation(activation), LatentLinear)
        self._remember(latent_dim=self.latent_dim, out_shape=list(self.out_shape),
                       hidden=list(self.hidden), activation=activation)

    @classmethod
    def mnist(cls) -> MLPDecoder:
        """The paper's MNIST decoder: 20 -> 150 -> 300 -> 600 -> 784 with ELU."""
        return cls(20, (28, 28))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).reshape(z.shape[0], *self.out_shape)


class PCAMLPDecoder(_Configurable):
    """`mean + W z` plus an MLP residual: a decoder that starts where PCA ends.

    The residual's last layer starts at zero, and `init_from_data` (which the
    trainer calls when a run begins) sets `mean` and `W` from a PCA of the
    training data, so an mse flow against the initial decoder ends at each
    sample's PCA projection and training starts from PCA's error rather than a
    random decoder's: on nearly linear data (spectra) GFE then never trails PCA
    for lack of data. Latents are PCA scores divided by sqrt(features), which
    makes the mse energy's Hessian 2·I: well conditioned for every flow."""

    kind = "pca-mlp"

    def __init__(self, latent_dim: int, out_shape, hidden=(64, 256), activation: str = "elu"):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.out_shape = _int_tuple("out_shape", out_shape)
        self.hidden = _int_tuple("hidden", hidden)
        features = math.prod(self.out_shape)
        self.linear = LatentLinear(self.latent_dim, features)
        self.residual = _mlp([self.latent_dim, *self.hidden, features], _activation(activation), LatentLinear)
        nn.init.zeros_(self.residual[-1].weight)
        nn.init.zeros_(self.residual[-1].bias)
        self._remember(latent_dim=self.latent_dim, out_shape=list(self.out_shape),
                       hidden=list(self.hidden), activation=activation)

    def forward(self, z: Tensor) -> Tensor:
        return (self.linear(z) + self.residual(z)).reshape(z.shape[0], *self.out_shape)

    @torch.no_grad()
    def init_from_data(self, targets: Tensor, weights: Tensor | None = None) -> None:
        """Set the linear path to the PCA of `targets`, samples in the decoder's
        output space (`gfe.losses.LossSpec.inverse_link`: the data for mse, their
        clipped logits for bce, log(counts + 0.5) for poisson), weighted by the
        feature `weights` as the loss weighs them (zeros: masked features keep the
        mean). Axes are signed so that their largest entry is positive (the same
        decoder on every machine); with fewer samples than latents the columns
        beyond the data's rank stay zero."""
        flat = targets.flatten(1).double()
        mean = flat.mean(0)
        root = flat.new_ones(flat.shape[1]) if weights is None else weights.flatten().double().sqrt()
        _, _, axes = torch.linalg.svd((flat - mean) * root, full_matrices=False)
        axes = axes[: self.latent_dim]
        axes = axes * axes.gather(1, axes.abs().argmax(1, keepdim=True)).sign()
        # W = sqrt(sum w) diag(1/sqrt w) V makes the weighted mse energy's Hessian 2·I
        scale = torch.where(root > 0, root.square().sum().sqrt() / root.clamp_min(1e-300), 0.0)
        weight = torch.zeros_like(self.linear.weight, dtype=torch.float64)
        weight[:, : len(axes)] = (axes * scale).T
        self.linear.weight.copy_(weight)
        self.linear.bias.copy_(mean)


class MLPEncoder(_Configurable):
    """The autoencoder's encoder mirroring an `MLPDecoder` (hidden sizes reversed)."""

    kind = "mlp"

    def __init__(self, latent_dim: int, in_shape, hidden=(150, 300, 600), activation: str = "elu"):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.in_shape = _int_tuple("in_shape", in_shape)
        self.hidden = _int_tuple("hidden", hidden, allow_empty=True)
        sizes = [math.prod(self.in_shape), *reversed(self.hidden), self.latent_dim]
        self.net = _mlp(sizes, _activation(activation))
        self._remember(latent_dim=self.latent_dim, in_shape=list(self.in_shape),
                       hidden=list(self.hidden), activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


def upsample_conv(h: Tensor, conv: nn.Module) -> Tensor:
    """`conv(Upsample(scale_factor=2, mode="nearest")(h))` for a 3-tap, padding-1
    `conv` (1-D or 2-D), as one stride-2 transposed convolution on `h`: no
    upsampled map is built, and each output sums 2 taps per axis instead of 3
    (the same result up to float rounding, in fewer operations)."""
    taps = torch.tensor(_UPSAMPLED_TAPS, dtype=conv.weight.dtype, device=conv.weight.device)
    weight = conv.weight @ taps.T  # (out, in, ..., 4) along the last axis
    if weight.dim() == 4:  # and along the first spatial axis of a 2-D kernel
        weight = torch.einsum("ai,oxib->oxab", taps, weight)
    return _CONV_TRANSPOSE[weight.dim() - 2](h, weight.transpose(0, 1), conv.bias, stride=2, padding=1)


def _conv_layout(name: str, shape: tuple[int, ...], dims: int, n_stages: int):
    """Split a `(*spatial)` or `(C, *spatial)` shape and size the seed map.

    The decoder starts from a map of size `ceil(n / 2**n_stages)` per axis and
    doubles it `n_stages` times, then crops; the encoder's stride-2 convolutions
    bring any input back down to exactly that seed size.
    """
    if len(shape) not in (dims, dims + 1):
        axes = {1: "L", 2: "H, W"}[dims]
        raise ConfigError(
            f"{name} for a {dims}-D convolutional model must be ({axes}) or (C, {axes}); "
            f"got {shape}")
    channels = shape[0] if len(shape) > dims else 1
    spatial_shape = shape[-dims:]
    seed = tuple(-(-n // 2**n_stages) for n in spatial_shape)
    return channels, spatial_shape, seed


class _ConvDecoder(_Configurable):
    """Linear layer to a small seed map, then (upsample x2, conv) stages, a final
    conv to the data's channels, and a crop to the exact size. Each upsample and
    the conv after it run as one transposed convolution (`upsample_conv`); the
    modules stay as listed, so model files keep their layout."""

    dims: int

    def __init__(self, latent_dim: int, out_shape, channels=(64, 32, 16), activation: str = "elu"):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.out_shape = _int_tuple("out_shape", out_shape)
        self.channels = _int_tuple("channels", channels)
        act, conv = _activation(activation), _CONV[self.dims]
        data_channels, spatial, self._seed = _conv_layout(
            "out_shape", self.out_shape, self.dims, len(self.channels) - 1)
        self._crop = (Ellipsis, *(slice(0, n) for n in spatial))
        self.project = LatentLinear(self.latent_dim, self.channels[0] * math.prod(self._seed))
        layers: list[nn.Module] = [act()]
        for c_in, c_out in zip(self.channels, self.channels[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       conv(c_in, c_out, 3, padding=1), act()]
        layers.append(conv(self.channels[-1], data_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self._remember(latent_dim=self.latent_dim, out_shape=list(self.out_shape),
                       channels=list(self.channels), activation=activation)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).reshape(z.shape[0], self.channels[0], *self._seed)
        layers = iter(self.body)
        for layer in layers:
            h = upsample_conv(h, next(layers)) if isinstance(layer, nn.Upsample) else layer(h)
        return h[self._crop].reshape(z.shape[0], *self.out_shape)


class _ConvEncoder(_Configurable):
    """Mirror of `_ConvDecoder`: conv from the data's channels, stride-2 conv
    stages down to the seed size, then a linear layer to the latent."""

    dims: int

    def __init__(self, latent_dim: int, in_shape, channels=(64, 32, 16), activation: str = "elu"):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.in_shape = _int_tuple("in_shape", in_shape)
        self.channels = _int_tuple("channels", channels)
        act, conv = _activation(activation), _CONV[self.dims]
        data_channels, self._spatial, seed = _conv_layout(
            "in_shape", self.in_shape, self.dims, len(self.channels) - 1)
        self._data_channels = data_channels
        layers: list[nn.Module] = [conv(data_channels, self.channels[-1], 3, padding=1), act()]
        for c_out, c_in in reversed(list(zip(self.channels, self.channels[1:]))):
            layers += [conv(c_in, c_out, 3, stride=2, padding=1), act()]
        layers += [nn.Flatten(), nn.Linear(self.channels[0] * math.prod(seed), self.latent_dim)]
        self.net = nn.Sequential(*layers)
        self._remember(latent_dim=self.latent_dim, in_shape=list(self.in_shape),
                       channels=list(self.channels), activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(x.shape[0], self._data_channels, *self._spatial))


class Conv1dDecoder(_ConvDecoder):
    """Decoder for 1-D signals, `out_shape` (L,) or (C, L)."""

    kind, dims = "conv1d", 1


class Conv2dDecoder(_ConvDecoder):
    """Decoder for 2-D maps, `out_shape` (H, W) or (C, H, W)."""

    kind, dims = "conv2d", 2


class Conv1dEncoder(_ConvEncoder):
    """Encoder mirroring `Conv1dDecoder`."""

    kind, dims = "conv1d", 1


class Conv2dEncoder(_ConvEncoder):
    """Encoder mirroring `Conv2dDecoder`."""

    kind, dims = "conv2d", 2


@dataclass(frozen=True)
class DecoderSpec:
    """A decoder architecture: its class (whose `config()` names `name` as its
    `"type"` and whose constructor takes that config's other keys, `latent_dim` and
    `out_shape` among them) and the autoencoder baseline's mirrored `encoder` class
    (constructed with `in_shape` for `out_shape`), if it has one. A decoder class
    with a method `init_from_data(targets, weights)` is initialised from the
    training data when a training run begins (`PCAMLPDecoder`)."""

    name: str
    decoder: type[nn.Module]
    encoder: type[nn.Module] | None = None
    summary: str = ""


DECODERS: Registry[DecoderSpec] = Registry("decoder")
register_decoder = DECODERS.register  # `gfe train --decoder`, `gfe.GFE(decoder=...)`, saving and loading accept it


register_decoder(DecoderSpec("mlp", MLPDecoder, MLPEncoder, "fully connected; the paper's (hidden 150, 300, 600, ELU)"))
register_decoder(DecoderSpec("pca-mlp", PCAMLPDecoder, MLPEncoder,
                              "PCA's linear map plus an MLP residual that starts at zero; for nearly linear data"))
register_decoder(DecoderSpec("conv1d", Conv1dDecoder, Conv1dEncoder, "transposed 1-D convolutions, for spectra"))
register_decoder(DecoderSpec("conv2d", Conv2dDecoder, Conv2dEncoder, "transposed 2-D convolutions, for maps"))


def decoder_classes() -> dict[str, type[nn.Module]]:
    return {name: spec.decoder for name, spec in DECODERS.items()}


def encoder_classes() -> dict[str, type[nn.Module]]:
    return {name: spec.encoder for name, spec in DECODERS.items() if spec.encoder is not None}


def build_registered(registry: dict, config, what: str) -> nn.Module:
    """Instantiate `config["type"]` from `registry` with the config's other keys as arguments."""
    if not isinstance(config, dict) or not isinstance(config.get("type"), str):
        raise ConfigError(f"a {what} config must be a dict with a string 'type'; got {config!r}")
    arguments = dict(config)
    kind = arguments.pop("type")
    if kind not in registry:
        raise ConfigError(f"unknown {what} type {kind!r}; known types: {sorted(registry)}")
    try:
        return registry[kind](**arguments)
    except TypeError as err:  # missing or unexpected keyword arguments
        raise ConfigError(f"bad arguments for {what} type {kind!r}: {err}") from err


def build_decoder(config: dict) -> nn.Module:
    """Rebuild a decoder (with fresh weights) from its `config()`."""
    return build_registered(decoder_classes(), config, "decoder")


def build_encoder_from_config(config: dict) -> nn.Module:
    """Rebuild an encoder (with fresh weights) from its `config()`."""
    return build_registered(encoder_classes(), config, "encoder")


def build_encoder(decoder: nn.Module) -> nn.Module:
    """The autoencoder baseline's encoder, mirroring `decoder`'s architecture."""
    config = decoder.config() if hasattr(decoder, "config") else {}
    if config.get("type") not in encoder_classes():
        raise ConfigError(
            f"no mirrored encoder for {type(decoder).__name__}; known decoder types: {sorted(DECODERS)}")
    config["in_shape"] = config.pop("out_shape")
    return build_encoder_from_config(config)


def default_decoder(out_shape, latent_dim: int) -> nn.Module:
    """The decoder used when the user picks none: the paper's MLP (hidden 150, 300,
    600, ELU) on the flattened features, whatever their shape. It is the
    architecture with measured anchors and suits small 1-D and 2-D data; choose a
    convolutional decoder for large maps."""
    return MLPDecoder(latent_dim, out_shape)
