"""Decoders, mirrored encoders and the config registry."""

import json

import pytest
import torch
from torch import nn

from gfe.errors import ConfigError
from gfe.models import (
    ACTIVATIONS,
    DECODERS,
    Conv1dDecoder,
    Conv2dDecoder,
    MLPDecoder,
    MLPEncoder,
    build_decoder,
    build_encoder,
    build_encoder_from_config,
    default_decoder,
)

LATENT = 3
CASES = [
    (MLPDecoder, (10,)),
    (MLPDecoder, (6, 5)),
    (MLPDecoder, (1, 12)),
    (Conv1dDecoder, (4,)),
    (Conv1dDecoder, (8,)),
    (Conv1dDecoder, (100,)),
    (Conv1dDecoder, (2, 64)),
    (Conv2dDecoder, (4, 4)),
    (Conv2dDecoder, (8, 8)),
    (Conv2dDecoder, (30, 50)),
    (Conv2dDecoder, (3, 28, 28)),
]
IDS = [f"{cls.kind}-{'x'.join(map(str, shape))}" for cls, shape in CASES]


def small(cls, shape, **kwargs):
    width = {"hidden": (7, 9)} if cls is MLPDecoder else {"channels": (6, 4, 3)}
    return cls(LATENT, shape, **width, **kwargs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(("cls", "shape"), CASES, ids=IDS)
def test_decoder_and_mirrored_encoder_shapes(cls, shape):
    decoder = small(cls, shape)
    assert decoder.latent_dim == LATENT and decoder.out_shape == shape
    out = decoder(torch.randn(5, LATENT))
    assert out.shape == (5, *shape) and out.dtype == torch.float32
    encoder = build_encoder(decoder)
    assert encoder(out).shape == (5, LATENT)
    assert decoder(torch.randn(0, LATENT)).shape == (0, *shape)


@pytest.mark.parametrize(("cls", "shape"), CASES, ids=IDS)
def test_each_output_depends_only_on_its_own_latent(cls, shape):
    decoder = small(cls, shape)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in decoder.modules())
    z = torch.randn(6, LATENT)
    together = decoder(z)
    for i in range(len(z)):
        torch.testing.assert_close(decoder(z[i:i + 1])[0], together[i], atol=1e-6, rtol=0)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize(("cls", "shape"), [(MLPDecoder, (5,)), (Conv1dDecoder, (8,)), (Conv2dDecoder, (4, 6))])
def test_registry_rebuilds_from_json_config(cls, shape, activation):
    decoder = small(cls, shape, activation=activation)
    config = json.loads(json.dumps(decoder.config()))
    assert config == decoder.config() and config["type"] in DECODERS
    rebuilt = build_decoder(config)
    assert type(rebuilt) is cls and rebuilt.config() == config
    rebuilt.load_state_dict(decoder.state_dict())
    z = torch.randn(2, LATENT)
    torch.testing.assert_close(rebuilt(z), decoder(z))

    encoder = build_encoder(decoder)
    again = build_encoder_from_config(json.loads(json.dumps(encoder.config())))
    assert again.config() == encoder.config()
    assert [p.shape for p in again.parameters()] == [p.shape for p in encoder.parameters()]


def test_mnist_preset_and_its_encoder_mirror_the_paper():
    decoder = MLPDecoder.mnist()
    linears = [m for m in decoder.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 150), (150, 300), (300, 600), (600, 784)]
    assert sum(isinstance(m, nn.ELU) for m in decoder.modules()) == 3
    assert decoder.out_shape == (28, 28)
    encoder = build_encoder(decoder)
    assert isinstance(encoder, MLPEncoder)
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 600), (600, 300), (300, 150), (150, 20)]


def test_default_decoder_is_the_mlp():
    decoder = default_decoder((8, 8), 4)
    assert isinstance(decoder, MLPDecoder) and decoder.hidden == (150, 300, 600)
    assert decoder(torch.zeros(1, 4)).shape == (1, 8, 8)


@pytest.mark.parametrize(("config", "message"), [
    ({"type": "transformer", "latent_dim": 2, "out_shape": [4]}, r"unknown decoder type 'transformer'.*conv1d.*mlp"),
    ({"type": "torch.nn.Linear"}, "unknown decoder type"),
    ({"latent_dim": 2}, "string 'type'"),
    ({"type": "mlp", "latent_dim": 2, "out_shape": [4], "bogus": 1}, "bad arguments for decoder type 'mlp'"),
    ({"type": "mlp", "out_shape": [4]}, "bad arguments"),
    ({"type": "mlp", "latent_dim": 0, "out_shape": [4]}, "latent_dim must be a positive integer"),
    ({"type": "mlp", "latent_dim": 2, "out_shape": [4], "activation": "gelu"}, "unknown activation 'gelu'"),
    ({"type": "mlp", "latent_dim": 2, "out_shape": []}, "out_shape must not be empty"),
    ({"type": "conv2d", "latent_dim": 2, "out_shape": [8]}, r"must be \(H, W\) or \(C, H, W\)"),
    ({"type": "conv1d", "latent_dim": 2, "out_shape": [8], "channels": "abc"}, "sequence of positive integers"),
])
def test_bad_configs_raise_config_error(config, message):
    with pytest.raises(ConfigError, match=message):
        build_decoder(config)


def test_unknown_encoder_type_and_foreign_decoder():
    with pytest.raises(ConfigError, match="unknown encoder type 'rnn'"):
        build_encoder_from_config({"type": "rnn"})
    with pytest.raises(ConfigError, match="no mirrored encoder for Linear"):
        build_encoder(nn.Linear(2, 3))


@pytest.mark.parametrize(("cls", "shape"), [(Conv1dDecoder, (2, 13)), (Conv2dDecoder, (3, 7, 10))])
def test_conv_decoder_matches_its_upsample_then_conv_layers(cls, shape):
    """The fused transposed convolution computes what the listed modules compute one by one."""
    decoder = small(cls, shape).double()
    z = torch.randn(4, LATENT, dtype=torch.float64)
    seed = decoder.project(z).reshape(len(z), decoder.channels[0], *decoder._seed)
    layered = decoder.body(seed)[decoder._crop].reshape(len(z), *shape)
    torch.testing.assert_close(decoder(z), layered, rtol=1e-12, atol=1e-12)
