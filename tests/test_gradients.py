"""Exact decoder gradients: unrolled against finite differences, adjoint converging to
unrolled at the order of its tableau, approx against exact, bad input, and training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_data01, make_mlp64

from gfe import ConfigError, decoder_gradients, encode
from gfe.losses import Loss
from gfe.models import MLPDecoder
from gfe.train import TrainConfig, Trainer

MNIST = Path("/work/shared/data/mnist-10k.npz")


@pytest.fixture(scope="module")
def tiny():
    """A 2 -> 6 -> 5 tanh decoder in float64 and four samples it cannot fit exactly."""
    decoder = make_mlp64(seed=3, latent=2, out_shape=(5,), hidden=(6,))
    return decoder, make_data01(decoder, n_own=2, n_other=2)


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


def summed_loss(decoder, x, options) -> float:
    enc = encode(decoder, x, **options)
    with torch.no_grad():
        return float(Loss("bce")(decoder(enc.z), x, enc.z).sum())


def directional_fd(decoder, x, options, direction, eps=1e-6) -> float:
    """Central difference of L(θ) along `direction` (a flat vector over the parameters)."""
    params = list(decoder.parameters())
    base = [p.detach().clone() for p in params]

    def shifted(sign):
        offset = 0
        with torch.no_grad():
            for p, b in zip(params, base):
                p.copy_(b + sign * eps * direction[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        return summed_loss(decoder, x, options)

    try:
        return (shifted(1) - shifted(-1)) / (2 * eps)
    finally:
        with torch.no_grad():
            for p, b in zip(params, base):
                p.copy_(b)


CASES = {
    "first-euler": dict(solver="euler", dt=0.5, tau=8.0, alpha=5.0),
    "first-rk4": dict(solver="rk4", dt=1.0, tau=8.0, alpha=5.0),
    "nesterov-euler": dict(flow="nesterov", solver="euler", dt=0.5, tau=8.0, alpha=5.0),
    "first-amd": dict(solver="amd", max_steps=15),
    "nesterov-amd": dict(flow="nesterov", solver="amd", max_steps=25),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unrolled_matches_finite_differences(tiny, case):
    decoder, x = tiny
    options = CASES[case]
    grad = flat(decoder_gradients(decoder, x, gradient="unrolled", **options))
    approx = flat(decoder_gradients(decoder, x, gradient="approx", **options))
    rng = np.random.default_rng(0)
    for _ in range(2):
        direction = torch.from_numpy(rng.normal(size=grad.numel()))
        exact = float(grad @ direction)
        fd = directional_fd(decoder, x, options, direction)
        assert abs(exact - fd) <= 1e-6 * abs(fd)
        assert abs(float(approx @ direction) - fd) > 1e-3 * abs(fd)  # the flow has not converged


def test_nesterov_amd_restarts_are_replayed(tiny):
    """The Nesterov+AMD case above must actually contain momentum restarts."""
    from gfe.gradients import Trajectory
    from gfe.encode import FlowEncoder

    decoder, x = tiny
    encoder = FlowEncoder(decoder, **CASES["nesterov-amd"])
    log = Trajectory()
    encoder.solve(x, torch.zeros(len(x), 2, dtype=x.dtype), None, log)
    assert any(event[0] == "restart" for event in log.events)


@pytest.mark.parametrize(("solver", "dts", "order"),
                         [("euler", (0.4, 0.2, 0.1), 1), ("rk4", (1.0, 0.5, 0.25), 4), ("amd", (0.4, 0.2, 0.1), 1)])
@pytest.mark.parametrize("flow", ["first", "nesterov"])
def test_adjoint_converges_to_unrolled_at_the_order_of_the_solver(tiny, solver, dts, order, flow):
    decoder, x = tiny
    errors = []
    for dt in dts:
        step = {"h0": dt, "h_max": dt} if solver == "amd" else {"dt": dt}  # AMD: every step at most dt
        options = dict(flow=flow, solver=solver, tau=4.0, alpha=2.0, **step)
        unrolled = flat(decoder_gradients(decoder, x, gradient="unrolled", **options))
        adjoint = flat(decoder_gradients(decoder, x, gradient="adjoint", **options))
        errors.append(float((adjoint - unrolled).norm() / unrolled.norm()))
    rates = [np.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert errors[-1] < 1e-2
    assert all(order - 0.3 < r < order + 1.0 for r in rates), (errors, rates)  # rates approach from above


@pytest.mark.parametrize("flow", ["first", "nesterov"])
def test_approx_equals_exact_at_convergence(flow):
    decoder = make_mlp64(seed=3, latent=2, out_shape=(5,), hidden=(6,))
    x = make_data01(decoder, n_own=0, n_other=3)  # not fitted exactly: the gradients do not vanish
    options = dict(flow=flow, solver="amd", gtol=1e-10, tau=1e7, h_max=100.0, max_steps=5000)
    assert encode(decoder, x, **options).status_labels == ["converged"] * 3
    approx = flat(decoder_gradients(decoder, x, gradient="approx", **options))
    for mode in ("adjoint", "unrolled"):
        exact = flat(decoder_gradients(decoder, x, gradient=mode, **options))
        assert float((exact - approx).norm()) <= 1e-5 * float(approx.norm())


def test_dopri5_gradients_are_exact_and_consistent(tiny):
    decoder, x = tiny
    options = dict(solver="dopri5", tau=8.0, alpha=5.0)
    unrolled = flat(decoder_gradients(decoder, x, gradient="unrolled", **options))
    adjoint = flat(decoder_gradients(decoder, x, gradient="adjoint", **options))
    assert float((adjoint - unrolled).norm()) < 1e-3 * float(unrolled.norm())


def test_gradient_errors_name_the_mode_and_reason(tiny):
    decoder, x = tiny
    with pytest.raises(ConfigError, match="unknown gradient 'exact'"):
        decoder_gradients(decoder, x, gradient="exact")
    with pytest.raises(ConfigError, match="gradient='unrolled'.*solver 'adam'"):
        decoder_gradients(decoder, x, gradient="unrolled", solver="adam")
    with pytest.raises(ConfigError, match="autoencoder has no flow"):
        TrainConfig(method="ae", gradient="adjoint")
    with pytest.raises(ConfigError, match="gradient='adjoint'.*solver 'adam'"):
        TrainConfig(method="gfe-amd", gradient="adjoint", encode_options={"solver": "adam"})


class _OnceTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class OnceDifferentiableDecoder(torch.nn.Module):
    latent_dim, out_shape = 2, (5,)

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(2, 6).double()
        self.outer = torch.nn.Linear(6, 5).double()

    def forward(self, z):
        return self.outer(_OnceTanh.apply(self.inner(z)))


def test_decoder_without_double_backward_gets_a_clear_error(tiny):
    _, x = tiny
    decoder = OnceDifferentiableDecoder()
    assert len(decoder_gradients(decoder, x, gradient="approx", max_steps=3)) == 4
    with pytest.raises(ConfigError, match="gradient='adjoint' needs Hessian-vector products.*differentiate twice"):
        decoder_gradients(decoder, x, gradient="adjoint", max_steps=3)


@pytest.mark.parametrize("gradient", ["adjoint", "unrolled"])
def test_exact_gradient_training_on_mnist_sized_data(gradient):
    if MNIST.exists():
        x = np.load(MNIST)["images"][:20].astype(np.float32) / 255
    else:
        x = np.random.default_rng(0).uniform(size=(20, 28, 28)).astype(np.float32)
    torch.manual_seed(0)
    decoder = MLPDecoder(4, (28, 28), hidden=(32,))
    options = {"max_steps": 10, "gtol": 1e-4}
    config = TrainConfig(method="gfe-nesterov" if gradient == "unrolled" else "gfe-amd", latent_dim=4, epochs=2,
                         batch_size=5, optimizer="adam", lr=1e-2, encode_options=options, eval_options=options,
                         gradient=gradient)
    trainer = Trainer(config, (28, 28), decoder=decoder, progress=False)
    before = trainer.evaluate(x)
    history = trainer.fit(x)
    assert all(np.isfinite(r.train_loss) for r in history)
    assert history[-1].mean_steps > 0
    assert trainer.evaluate(x) < before
