"""A solver, a loss, a decoder and a training method registered from outside the
package, one call each, work everywhere: training (library and command line),
encoding, exact gradients, decoding, saving and loading, and `gfe bench solvers`."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import gfe
from gfe.cli import main
from gfe.errors import ConfigError
from gfe.losses import LOSSES, LossSpec, register_loss
from gfe.methods import METHODS, MethodSpec, register_method
from gfe.models import DECODERS, DecoderSpec, register_decoder
from gfe.persist import load_model
from gfe.solvers import SOLVERS, SolverSpec, register_solver
from gfe.solvers.active import begin, commit, integrate
from gfe.train import Trainer
from gfe.train_config import TrainConfig


@dataclass(frozen=True)
class DescentOptions:
    lr: float = 0.5


def solve_descent(objective, flow, x, weights, y0, rule, options, trajectory=None):
    """Plain gradient descent with a fixed step: explicit Euler on the first-order flow."""
    active = begin(objective, flow, x, weights, y0, trajectory)

    def step(active):
        h = torch.full_like(active.t, options.lr)
        y = active.y + h.to(active.y.dtype)[:, None] * flow.field(active.t, active.y, active.grad)
        loss, grad = objective.value_and_grad(flow.latent(y), active.x, active.w)
        active.nfe = active.nfe + 1
        finite = torch.isfinite(loss) & torch.isfinite(grad).all(1)
        commit(active, finite, y, loss, grad, h)
        active.nonfinite = ~finite

    return integrate(active, flow, rule, step)


class LinearDecoder(nn.Module):
    """A decoder a user might write: latent -> features, one affine map."""

    def __init__(self, latent_dim, out_shape):
        super().__init__()
        self.latent_dim, self.out_shape = int(latent_dim), tuple(out_shape)
        self.linear = nn.Linear(self.latent_dim, int(np.prod(self.out_shape)))

    def forward(self, z):
        return self.linear(z).reshape(len(z), *self.out_shape)

    def config(self):
        return {"type": "toy-linear", "latent_dim": self.latent_dim, "out_shape": list(self.out_shape)}


@pytest.fixture
def toys():
    """Register the toys for one test, then remove them, so other tests see the built-ins only."""
    register_solver(SolverSpec("toy-descent", solve_descent, DescentOptions, tableau=lambda: (((0.0,),), (1.0,), (0.0,))))
    register_loss(LossSpec("toy-logcosh", lambda out, x: torch.log(torch.cosh(out - x))))
    register_decoder(DecoderSpec("toy-linear", LinearDecoder))
    register_method(MethodSpec("gfe-toy", "first", "toy-descent", {"max_steps": 20, "lr": 0.5}, {"lr": 0.5}))
    yield
    for registry, name in ((SOLVERS, "toy-descent"), (LOSSES, "toy-logcosh"), (DECODERS, "toy-linear"),
                           (METHODS, "gfe-toy")):
        registry.pop(name)


def _digits():
    from sklearn.datasets import load_digits

    return (load_digits().images[:60] / 16.0).astype(np.float32)


def test_registered_toys_train_encode_save_and_load(toys, tmp_path, capsys):
    data = tmp_path / "digits.npy"
    np.save(data, _digits())
    model = tmp_path / "model"
    assert main(["train", str(data), "--out", str(model), "--method", "gfe-toy", "--decoder", "toy-linear",
                 "--loss", "toy-logcosh", "--latent-dim", "3", "--epochs", "2", "--quiet"]) == 0
    loaded = load_model(model)
    assert isinstance(loaded.decoder, LinearDecoder)
    assert loaded.settings["encode"]["solver"] == "toy-descent" and loaded.settings["encode"]["loss"] == "toy-logcosh"

    assert main(["encode", str(model), str(data), "-o", str(tmp_path / "z.h5"), "--quiet"]) == 0
    assert main(["decode", str(model), str(tmp_path / "z.h5"), "-o", str(tmp_path / "r.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "r.npy").shape == (60, 8, 8)

    # the library's one entry point, and the solver's steps lower the loss
    enc = gfe.encode(loaded.decoder, _digits()[:5], solver="toy-descent", loss="toy-logcosh", lr=0.5, max_steps=50)
    start = gfe.encode(loaded.decoder, _digits()[:5], solver="toy-descent", loss="toy-logcosh", max_steps=0)
    assert enc.z.shape == (5, 3) and bool((enc.loss < start.loss).all())
    with pytest.raises(ConfigError, match="solver 'toy-descent' has no option\\(s\\) dt; it accepts lr"):
        gfe.encode(loaded.decoder, _digits()[:5], solver="toy-descent", dt=1.0)


def test_a_registered_solver_with_a_tableau_gets_exact_gradients(toys):
    """Its tableau makes the toy solver replayable: unrolled gradients match finite differences."""
    x = torch.from_numpy(_digits()[:4]).double()
    decoder = LinearDecoder(2, (8, 8)).double()
    options = dict(solver="toy-descent", loss="toy-logcosh", lr=0.5, max_steps=6, gtol=0.0)
    grads = gfe.decoder_gradients(decoder, x, gradient="unrolled", **options)
    weight = decoder.linear.weight
    direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-6

    def total(shift):
        with torch.no_grad():
            weight.add_(shift)
            value = float(gfe.encode(decoder, x, **options).loss.sum())
            weight.sub_(shift)
        return value

    fd = (total(eps * direction) - total(-eps * direction)) / (2 * eps)
    assert float((grads[0] * direction).sum()) == pytest.approx(fd, rel=1e-6)
    trainer = Trainer(TrainConfig(method="gfe-toy", latent_dim=2, loss="toy-logcosh", gradient="unrolled"), (8, 8),
                      decoder=LinearDecoder(2, (8, 8)), progress=False)
    assert trainer.fit(_digits()[:10])[-1].train_loss > 0


def test_a_registered_solver_is_benchmarked(toys, tmp_path):
    out = tmp_path / "solvers.json"
    assert main(["bench", "solvers", "--dataset", "digits", "--n-train", "20", "--n-test", "10",
                 "--solvers", "toy-descent,amd", "--max-budget", "10", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert [r["solver"] for r in result["results"]] == ["toy-descent", "amd"]
    assert all(run["mean_nfe"] > 0 for r in result["results"] for run in r["sweep"])


def test_registration_refuses_a_clash_and_unknown_names():
    with pytest.raises(ConfigError, match="registered already"):
        register_solver(SolverSpec("amd", solve_descent, DescentOptions))
    with pytest.raises(ConfigError, match="unknown solver 'nope'"):
        MethodSpec("gfe-nope", "first", "nope")
    with pytest.raises(ConfigError, match="unknown flow"):
        MethodSpec("gfe-nope", "sideways", "amd")
