"""The encoding engine: flows, solvers, stopping rules, masks, penalties and losses.

Exactness is checked against closed forms on a linear decoder `D(z) = A z + b`
with the MSE loss `E(z) = ||A z + b - x||² / n`, for which `∇E = (2/n) Aᵀ(A z + b - x)`:

* first-order flow `z' = -α∇E` is linear: `z(t) = z* + expm(-t M)(z0 - z*)`,
  `M = (2α/n) AᵀA`, `z*` the least-squares solution;
* Nesterov's flow `z'' + (3/t) z' + α∇E = 0`, `z(0) = z0`, `z'(0) = 0` decouples in
  the eigenbasis of M (eigenvalues λ) into `w(t) = w0 · 2 J1(√λ t) / (√λ t)`, and is
  also integrated with scipy's DOP853 at tight tolerance as an independent reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from scipy.special import j1
from torch import nn

import gfe
from gfe import Status
from gfe.losses import Loss, link
from gfe.objective import Objective

from conftest import LinearDecoder, make_data01, make_mlp64

FLOWS = ("first", "nesterov")
SOLVERS = ("amd", "euler", "rk4", "dopri5")
COMBOS = [(f, s) for f in FLOWS for s in SOLVERS]
COMBO_IDS = [f"{f}-{s}" for f, s in COMBOS]
STEP_RULES = ("spectral", "bfgs")  # AMD's step rules beyond the flow's own (first-order flow)
ALL_STATUS = {int(s) for s in Status}


def solver_options(flow: str, solver: str) -> dict:
    """Moderate options that keep each encode quick on the tiny MLP problems.

    The second-order flow oscillates with little damping at late times, so its
    fixed-step runs use a smaller dt."""
    if solver in ("euler", "rk4"):
        return {"dt": 0.5 if flow == "first" else 0.1}
    if solver == "dopri5":
        return {"rtol": 1e-6, "atol": 1e-8}
    return {}


# ---------------------------------------------------------------- closed forms
def first_order_exact(decoder: LinearDecoder, x, z0, t: float, alpha: float = 1.0) -> np.ndarray:
    A = decoder.A.detach().numpy()
    n = A.shape[0]
    M = 2.0 * alpha / n * A.T @ A
    z_star = decoder.least_squares(x).numpy()
    return z_star + (np.asarray(z0) - z_star) @ expm(-t * M).T


def nesterov_bessel(decoder: LinearDecoder, x, z0, t: float, alpha: float = 1.0) -> np.ndarray:
    A = decoder.A.detach().numpy()
    lam, Q = np.linalg.eigh(2.0 * alpha / A.shape[0] * A.T @ A)
    s = np.sqrt(lam) * t
    z_star = decoder.least_squares(x).numpy()
    return z_star + ((np.asarray(z0) - z_star) @ Q * (2.0 * j1(s) / s)) @ Q.T


def nesterov_dop853(decoder: LinearDecoder, x, z0, t: float, alpha: float = 1.0, t0: float = 1e-6) -> np.ndarray:
    """scipy DOP853 (rtol = atol = 1e-12) from `t0` with the series start
    `z(t0) = z0 - α∇E(z0) t0²/8`, `z'(t0) = -α∇E(z0) t0/4`."""
    A = decoder.A.detach().numpy()
    b = decoder.b.detach().numpy()
    n, d = A.shape

    def grad(z, xi):
        return 2.0 / n * A.T @ (A @ z + b - xi)

    out = []
    for xi, zi in zip(np.asarray(x), np.asarray(z0)):
        g0 = alpha * grad(zi, xi)
        y0 = np.concatenate([zi - g0 * t0**2 / 8, -g0 * t0 / 4])

        def rhs(s, y, xi=xi):
            z, v = y[:d], y[d:]
            return np.concatenate([v, -3.0 / s * v - alpha * grad(z, xi)])

        sol = solve_ivp(rhs, (t0, t), y0, method="DOP853", rtol=1e-12, atol=1e-12)
        assert sol.success
        out.append(sol.y[:d, -1])
    return np.array(out)


# ----------------------------------------------------------- order of accuracy
@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize(("solver", "low", "high"), [("euler", 0.85, 1.2), ("rk4", 3.7, 4.3)])
def test_fixed_step_order_matches_closed_form(linear_problem, flow, solver, low, high):
    decoder, x, z0 = linear_problem
    tau = 2.0
    exact = first_order_exact(decoder, x, z0, tau) if flow == "first" else nesterov_bessel(decoder, x, z0, tau)
    errors = []
    for dt in (0.1, 0.05, 0.025):
        enc = gfe.encode(decoder, x, flow=flow, solver=solver, loss="mse", z0=z0, tau=tau, gtol=0.0, dt=dt)
        assert enc.z.dtype == torch.float64
        assert (enc.status == Status.TAU_REACHED).all()
        assert (enc.steps == round(tau / dt)).all()
        assert (enc.nfe == enc.steps * (1 if solver == "euler" else 4) + 1).all()
        np.testing.assert_allclose(enc.t.numpy(), tau, rtol=1e-12)
        errors.append(np.abs(enc.z.numpy() - exact).max())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((orders > low) & (orders < high)), (errors, orders)


@pytest.mark.parametrize("flow", FLOWS)
def test_dopri5_meets_its_tolerance(linear_problem, flow):
    decoder, x, z0 = linear_problem
    tau = 2.0
    exact = first_order_exact(decoder, x, z0, tau) if flow == "first" else nesterov_bessel(decoder, x, z0, tau)
    errors, steps = [], []
    for rtol, atol in ((1e-6, 1e-8), (1e-9, 1e-11)):
        enc = gfe.encode(decoder, x, flow=flow, solver="dopri5", loss="mse", z0=z0, tau=tau, gtol=0.0,
                         rtol=rtol, atol=atol)
        assert (enc.status == Status.TAU_REACHED).all()
        np.testing.assert_allclose(enc.t.numpy(), tau, rtol=1e-12)
        error = np.abs(enc.z.numpy() - exact).max(axis=1)  # per sample
        bound = 10 * (atol + rtol * np.abs(exact).max(axis=1))
        assert np.all(error < bound), (error, bound)
        errors.append(error.max())
        steps.append(enc.steps.sum().item())
    assert errors[1] < errors[0] / 50
    assert steps[1] > steps[0]


def test_nesterov_references_agree(linear_problem):
    """The two references for the second-order flow check each other."""
    decoder, x, z0 = linear_problem
    np.testing.assert_allclose(nesterov_dop853(decoder, x, z0, 3.0), nesterov_bessel(decoder, x, z0, 3.0),
                               atol=1e-9, rtol=0)


@pytest.mark.parametrize(("solver", "options"), [("rk4", {"dt": 0.01}), ("dopri5", {"rtol": 1e-10, "atol": 1e-12})])
@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_nesterov_matches_high_accuracy_reference(linear_problem, solver, options, alpha):
    decoder, x, z0 = linear_problem
    tau = 3.0
    reference = nesterov_dop853(decoder, x, z0, tau, alpha=alpha)
    enc = gfe.encode(decoder, x, flow="nesterov", solver=solver, loss="mse", z0=z0, tau=tau, gtol=0.0,
                     alpha=alpha, **options)
    assert (enc.status == Status.TAU_REACHED).all()
    np.testing.assert_allclose(enc.z.numpy(), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_alpha_rescales_time(linear_problem, alpha):
    """The first-order flow with speed α at time τ equals the α = 1 flow at ατ."""
    decoder, x, z0 = linear_problem
    a = gfe.encode(decoder, x, solver="dopri5", loss="mse", z0=z0, tau=1.0, gtol=0, alpha=alpha, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.z.numpy(), first_order_exact(decoder, x, z0, alpha * 1.0), atol=1e-8)


# ---------------------------------------------------------- batch independence
def _z0_of(decoder, x, **start):
    """The start `encode` uses, read back from a run with no steps."""
    return gfe.encode(decoder, x, loss="bce", max_steps=0, **start).z


@pytest.mark.parametrize(("flow", "solver"), COMBOS, ids=COMBO_IDS)
def test_sample_encoding_does_not_depend_on_batch(mlp64, data01, flow, solver):
    opts = dict(flow=flow, solver=solver, loss="bce", alpha=10.0, tau=100.0, gtol=1e-4,
                max_steps=300 if flow == "first" else 150, **solver_options(flow, solver))
    z0 = _z0_of(mlp64, data01, seed=0)
    full = gfe.encode(mlp64, data01, seed=0, **opts)
    perm = torch.tensor([3, 5, 0, 1, 4, 2])
    inverse = torch.argsort(perm)
    shuffled = gfe.encode(mlp64, data01[perm], z0=z0[perm], chunk_size=2, **opts)
    for name in ("steps", "nfe", "status"):
        assert torch.equal(getattr(shuffled, name)[inverse], getattr(full, name)), name
    torch.testing.assert_close(shuffled.z[inverse], full.z, atol=1e-6, rtol=0)
    torch.testing.assert_close(shuffled.loss[inverse], full.loss, atol=1e-10, rtol=0)
    for i in (0, 3, 5):
        alone = gfe.encode(mlp64, data01[i : i + 1], z0=z0[i : i + 1], **opts)
        for name in ("steps", "nfe", "status"):
            assert torch.equal(getattr(alone, name), getattr(full, name)[i : i + 1]), (i, name)
        torch.testing.assert_close(alone.z, full.z[i : i + 1], atol=1e-6, rtol=0)
        torch.testing.assert_close(alone.t, full.t[i : i + 1], atol=1e-9, rtol=0)


@pytest.mark.parametrize("step", STEP_RULES)
def test_amd_step_rules_do_not_depend_on_batch(mlp64, data01, step):
    opts = dict(loss="bce", alpha=10.0, gtol=1e-5, max_steps=300, step=step)
    z0 = _z0_of(mlp64, data01, seed=0)
    full = gfe.encode(mlp64, data01, seed=0, **opts)
    assert (full.steps > 3).all()
    for i in (0, 3, 5):
        alone = gfe.encode(mlp64, data01[i : i + 1], z0=z0[i : i + 1], **opts)
        for name in ("steps", "nfe", "status"):
            assert torch.equal(getattr(alone, name), getattr(full, name)[i : i + 1]), (i, name)
        torch.testing.assert_close(alone.z, full.z[i : i + 1], atol=1e-6, rtol=0)


def test_batch_mates_with_different_fates_do_not_interact(mlp64, data01):
    """A sample that converges at once, one that hits the step budget and
    ordinary ones share a batch; each gets the result it gets alone."""
    z0 = _z0_of(mlp64, data01, seed=3)
    weights = torch.ones_like(data01)
    weights[1] = 0.0  # a fully masked sample has zero loss and gradient: converged at the start
    opts = dict(loss="bce", alpha=10.0, gtol=1e-4, max_steps=25, tau=1e4)
    full = gfe.encode(mlp64, data01, z0=z0, weights=weights, **opts)
    assert full.status[1] == Status.CONVERGED and full.steps[1] == 0
    assert {int(Status.CONVERGED), int(Status.STEP_BUDGET)} <= set(full.status.tolist())
    for i in range(len(data01)):
        alone = gfe.encode(mlp64, data01[i : i + 1], z0=z0[i : i + 1], weights=weights[i : i + 1], **opts)
        assert torch.equal(alone.steps, full.steps[i : i + 1]) and torch.equal(alone.status, full.status[i : i + 1])
        torch.testing.assert_close(alone.z, full.z[i : i + 1], atol=1e-12, rtol=0)


# ------------------------------------------------------------------------- AMD
@pytest.mark.parametrize("flow", FLOWS)
def test_amd_every_accepted_step_lowers_the_loss(mlp64, data01, flow):
    K = 12
    losses, zs = [], []
    for k in range(K + 1):
        enc = gfe.encode(mlp64, data01, flow=flow, solver="amd", loss="bce", seed=0, alpha=10.0,
                         tau=1e4, gtol=0.0, max_steps=k)
        assert (enc.steps == k).all(), (k, enc.steps, enc.status)
        assert (enc.status == Status.STEP_BUDGET).all()
        assert (enc.steps <= enc.nfe - 1).all()
        losses.append(enc.loss)
        zs.append(enc.z)
    losses = torch.stack(losses)  # (K + 1, N): loss after k accepted steps
    assert (losses[1:] < losses[:-1]).all(), losses
    # the loss reported is the loss at the returned latent
    objective = Objective(mlp64, Loss("bce"))
    torch.testing.assert_close(objective.value(zs[-1], data01), losses[-1], atol=1e-14, rtol=0)


@pytest.mark.parametrize("step", STEP_RULES)
def test_amd_step_rules_lower_the_loss_at_every_accepted_step(mlp64, data01, step):
    losses = []
    for k in range(8):  # BFGS steps bring a sample here to the loss's precision in 8 or 9 steps
        enc = gfe.encode(mlp64, data01, loss="bce", seed=0, alpha=10.0, gtol=0.0, max_steps=k, step=step)
        assert (enc.steps == k).all() and (enc.steps <= enc.nfe - 1).all()
        losses.append(enc.loss)
    losses = torch.stack(losses)
    assert (losses[1:] < losses[:-1]).all(), losses


def test_bfgs_steps_reach_the_minimum_in_far_fewer_evaluations(linear_problem):
    """On an ill-conditioned quadratic the learned metric approaches the inverse
    Hessian: the same least-squares solution in a fraction of the flow rule's
    evaluations."""
    well_conditioned, x, z0 = linear_problem
    decoder = LinearDecoder(well_conditioned.A.detach() * torch.tensor([1.0, 0.1, 0.03], dtype=torch.float64),
                            well_conditioned.b.detach())
    opts = dict(loss="mse", z0=z0, gtol=1e-7, tau=1e9, max_steps=20_000)
    flow = gfe.encode(decoder, x, **opts)
    bfgs = gfe.encode(decoder, x, step="bfgs", **opts)
    assert (flow.status == Status.CONVERGED).all() and (bfgs.status == Status.CONVERGED).all()
    hessian_min = float(torch.linalg.eigvalsh(2.0 / 6 * decoder.A.T @ decoder.A)[0])
    for enc in (flow, bfgs):  # ||z - z*|| <= ||∇E|| / λ_min(∇²E)
        torch.testing.assert_close(enc.z, decoder.least_squares(x), atol=2e-7 / hessian_min, rtol=0)
    assert (bfgs.nfe * 10 < flow.nfe).all(), (bfgs.nfe, flow.nfe)


def test_bfgs_from_the_inverse_hessian_takes_one_newton_step(linear_problem):
    """On a quadratic, `metric0` = the exact inverse Hessian makes the first,
    full-length step the Newton step: the least-squares solution in one step."""
    well_conditioned, x, z0 = linear_problem
    decoder = LinearDecoder(well_conditioned.A.detach() * torch.tensor([1.0, 0.1, 0.03], dtype=torch.float64),
                            well_conditioned.b.detach())
    inverse_hessian = torch.linalg.inv(2.0 / 6 * decoder.A.T @ decoder.A)
    opts = dict(loss="mse", z0=z0, gtol=1e-9, tau=1e9, max_steps=1000, step="bfgs")
    newton = gfe.encode(decoder, x, metric0=inverse_hessian, **opts)
    assert (newton.status == Status.CONVERGED).all() and (newton.steps == 1).all(), newton.steps
    torch.testing.assert_close(newton.z, decoder.least_squares(x), atol=1e-9, rtol=0)
    learned = gfe.encode(decoder, x, **opts)
    assert (learned.nfe > 3 * newton.nfe).all()


def test_the_mean_hessian_of_a_quadratic_is_exact(linear_problem):
    decoder, x, z0 = linear_problem
    hessian = Objective(decoder, Loss("mse")).mean_hessian(z0, x)
    torch.testing.assert_close(hessian, 2.0 / 6 * decoder.A.T @ decoder.A, atol=1e-9, rtol=0)


def test_a_start_metric_does_not_couple_batch_mates(mlp64, data01):
    metric = torch.tensor([[2.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 1.0]], dtype=torch.float64)
    opts = dict(loss="bce", alpha=10.0, gtol=1e-5, max_steps=300, step="bfgs", metric0=metric)
    z0 = _z0_of(mlp64, data01, seed=0)
    full = gfe.encode(mlp64, data01, z0=z0, **opts)
    for i in (0, 3, 5):
        alone = gfe.encode(mlp64, data01[i : i + 1], z0=z0[i : i + 1], **opts)
        assert torch.equal(alone.steps, full.steps[i : i + 1]) and torch.equal(alone.nfe, full.nfe[i : i + 1])
        torch.testing.assert_close(alone.z, full.z[i : i + 1], atol=1e-12, rtol=0)


@pytest.mark.parametrize(("metric", "step", "message"), [
    (torch.eye(3), "spectral", "metric0 is the BFGS rule's initial metric"),
    (torch.ones(2, 3), "bfgs", "must be a square matrix"),
    (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), "bfgs", "finite and symmetric"),
    (torch.tensor([[1.0, 0.0], [0.0, -1.0]]), "bfgs", "positive definite"),
    (torch.eye(5), "bfgs", r"metric0 has shape \(5, 5\); the latents need \(3, 3\)"),
])
def test_bad_start_metrics_are_config_errors(mlp64, data01, metric, step, message):
    with pytest.raises(gfe.ConfigError, match=message):
        gfe.encode(mlp64, data01, loss="bce", step=step, metric0=metric)


@pytest.mark.parametrize(("options", "message"), [
    ({"flow": "nesterov", "step": "bfgs"}, "step rule 'bfgs' is for the first-order flow"),
    ({"step": "newton"}, "unknown AMD step rule 'newton'"),
    ({"shrink": 1.5}, "0 < shrink < 1"),
])
def test_amd_rejects_unsupported_step_options(mlp64, data01, options, message):
    with pytest.raises(gfe.ConfigError, match=message):
        gfe.encode(mlp64, data01, loss="bce", **options)


@pytest.mark.parametrize("flow", FLOWS)
def test_amd_counts_and_monotone_to_completion(mlp64, data01, flow):
    start = gfe.encode(mlp64, data01, flow=flow, loss="bce", seed=1, max_steps=0)
    enc = gfe.encode(mlp64, data01, flow=flow, solver="amd", loss="bce", seed=1, alpha=10.0, gtol=1e-5, max_steps=2000)
    assert (enc.steps <= enc.nfe - 1).all()
    assert (enc.loss < start.loss).all()
    assert set(enc.status.tolist()) <= {int(Status.CONVERGED), int(Status.TAU_REACHED), int(Status.STALLED)}


def test_amd_options_are_used(mlp64, data01):
    """Step-size options change the path; the defaults are the reference's."""
    base = gfe.encode(mlp64, data01, loss="bce", alpha=10.0, max_steps=20, gtol=0)
    explicit = gfe.encode(mlp64, data01, loss="bce", alpha=10.0, max_steps=20, gtol=0,
                          h0=1.0, h_max=10.0, shrink=0.5, grow=1.1, max_shrinks=20, sigma=1e-5)
    assert torch.equal(base.z, explicit.z)
    other = gfe.encode(mlp64, data01, loss="bce", alpha=10.0, max_steps=20, gtol=0, h0=0.01, grow=1.01)
    assert not torch.allclose(base.z, other.z)
    assert (other.loss > base.loss).all()  # tiny, slowly growing steps make less progress


# --------------------------------------------------------------- starts, seeds
@pytest.mark.parametrize(("flow", "solver"), COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("start", ["seed", "zeros"])
def test_every_combination_runs_from_random_and_zero_start(mlp64, data01, flow, solver, start):
    begin = {"seed": 0} if start == "seed" else {}
    initial = gfe.encode(mlp64, data01, loss="bce", max_steps=0, **begin)
    enc = gfe.encode(mlp64, data01, flow=flow, solver=solver, loss="bce", alpha=10.0, tau=20.0, gtol=1e-4,
                     max_steps=200, **begin, **solver_options(flow, solver))
    assert enc.z.shape == (len(data01), mlp64.latent_dim) and enc.z.dtype == torch.float64
    assert torch.isfinite(enc.z).all() and torch.isfinite(enc.loss).all()
    assert set(enc.status.tolist()) <= ALL_STATUS - {int(Status.NON_FINITE), int(Status.STALLED)}
    assert (enc.loss < initial.loss).all()
    assert (enc.nfe >= enc.steps + 1).all()
    assert (enc.t <= 20.0 + 1e-9).all()
    again = gfe.encode(mlp64, data01, flow=flow, solver=solver, loss="bce", alpha=10.0, tau=20.0, gtol=1e-4,
                       max_steps=200, **begin, **solver_options(flow, solver))
    assert torch.equal(enc.z, again.z) and torch.equal(enc.steps, again.steps)
    summary = enc.summary()
    assert summary["samples"] == len(data01)
    assert sum(enc.status_counts().values()) == len(data01)
    assert set(enc.status_counts()) <= {s.label for s in Status}
    assert len(enc.status_labels) == len(data01)


def test_default_start_is_zero_and_seeded_start_is_reproducible(mlp64, data01):
    for flow in FLOWS:
        assert torch.equal(gfe.encode(mlp64, data01, flow=flow, max_steps=0).z, torch.zeros(6, 3, dtype=torch.float64))
    a = _z0_of(mlp64, data01, seed=5)
    b = _z0_of(mlp64, data01, seed=5)
    c = _z0_of(mlp64, data01, seed=6)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    torch.testing.assert_close(_z0_of(mlp64, data01, seed=5, init_scale=0.25), 0.25 * a)
    # the end points follow the starts
    run = dict(loss="bce", alpha=10.0, max_steps=5, gtol=0)
    e5, e5b, e6 = (gfe.encode(mlp64, data01, seed=s, **run) for s in (5, 5, 6))
    assert torch.equal(e5.z, e5b.z) and not torch.allclose(e5.z, e6.z)


def test_seeded_start_is_normal_with_init_scale():
    decoder = make_mlp64()
    x = torch.full((4000, 12), 0.5, dtype=torch.float64)
    z0 = gfe.encode(decoder, x, seed=11, init_scale=2.0, max_steps=0).z
    assert abs(float(z0.mean())) < 0.1
    assert abs(float(z0.std()) - 2.0) < 0.1


def test_encoding_runs_in_decoder_dtype(data01):
    decoder32 = make_mlp64().float()
    enc = gfe.encode(decoder32, data01, loss="bce", max_steps=5)
    assert enc.z.dtype == torch.float32 and enc.loss.dtype == torch.float32
    enc64 = gfe.encode(make_mlp64(), data01.float(), loss="bce", max_steps=5)
    assert enc64.z.dtype == torch.float64


def test_encode_accepts_numpy_and_flat_input(mlp64, data01):
    a = gfe.encode(mlp64, data01, loss="bce", max_steps=10)
    b = gfe.encode(mlp64, data01.numpy(), loss="bce", max_steps=10, z0=np.zeros((6, 3)))
    assert torch.equal(a.z, b.z)


def test_chunk_size_does_not_change_results(mlp64, data01):
    a = gfe.encode(mlp64, data01, loss="bce", alpha=10.0, seed=2, max_steps=100)
    for chunk in (1, 4):
        b = gfe.encode(mlp64, data01, loss="bce", alpha=10.0, seed=2, max_steps=100, chunk_size=chunk)
        assert torch.equal(a.steps, b.steps) and torch.equal(a.status, b.status)
        torch.testing.assert_close(a.z, b.z, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- status codes
@pytest.mark.parametrize(("flow", "solver"), COMBOS, ids=COMBO_IDS)
def test_step_budget_tau_and_convergence_statuses(mlp64, data01, flow, solver):
    opts = dict(flow=flow, solver=solver, loss="bce", alpha=10.0, **solver_options(flow, solver))
    budget = gfe.encode(mlp64, data01, max_steps=3, gtol=0.0, tau=1e4, **opts)
    assert (budget.status == Status.STEP_BUDGET).all() and (budget.steps == 3).all()
    tau = gfe.encode(mlp64, data01, tau=0.3, gtol=0.0, max_steps=10_000, **opts)
    assert (tau.status == Status.TAU_REACHED).all()
    np.testing.assert_allclose(tau.t.numpy(), 0.3, rtol=1e-9)
    done = gfe.encode(mlp64, data01, gtol=1e9, **opts)
    assert (done.status == Status.CONVERGED).all() and (done.steps == 0).all()
    assert torch.equal(done.z, torch.zeros_like(done.z))


@pytest.mark.parametrize(("flow", "solver", "options"), [
    ("first", "amd", {}), ("nesterov", "amd", {}),
    ("first", "amd", {"step": "spectral", "h_max": 1e3}), ("first", "amd", {"step": "bfgs"}),
    ("first", "rk4", {"dt": 0.2}), ("first", "dopri5", {"rtol": 1e-8, "atol": 1e-10}),
])  # (the exact second-order flow decays only polynomially: AMD's restarts make it converge)
def test_converges_to_least_squares_solution(linear_problem, flow, solver, options):
    decoder, x, z0 = linear_problem
    gtol = 1e-7
    enc = gfe.encode(decoder, x, flow=flow, solver=solver, loss="mse", z0=z0, gtol=gtol, max_steps=5000, **options)
    assert (enc.status == Status.CONVERGED).all(), enc.status
    _, grad = Objective(decoder, Loss("mse")).value_and_grad(enc.z, x)
    assert (grad.norm(dim=1) <= gtol).all()
    # ||z - z*|| <= ||∇E|| / λ_min(∇²E)
    hessian_min = float(torch.linalg.eigvalsh(2.0 / 6 * decoder.A.T @ decoder.A)[0])
    torch.testing.assert_close(enc.z, decoder.least_squares(x), atol=2 * gtol / hessian_min, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_ftol_plateau_stops_first_order_flow_only(mlp64, data01, solver):
    opts = dict(solver=solver, loss="bce", alpha=10.0, gtol=0.0, tau=1e4)
    plateau = gfe.encode(mlp64, data01, ftol=1e-3, max_steps=60, **opts, **solver_options("first", solver))
    assert (plateau.status == Status.CONVERGED).all() and (plateau.steps >= 1).all() and (plateau.steps < 60).all()
    # a huge ftol stops the first-order flow after its first step ...
    first = gfe.encode(mlp64, data01, ftol=0.5, max_steps=8, **opts, **solver_options("first", solver))
    assert (first.status == Status.CONVERGED).all() and (first.steps == 1).all()
    # ... but says nothing while momentum builds up
    momentum = gfe.encode(mlp64, data01, flow="nesterov", ftol=0.5, max_steps=8, **opts,
                          **solver_options("nesterov", solver))
    assert (momentum.status == Status.STEP_BUDGET).all() and (momentum.steps == 8).all()


def test_amd_stalls_when_no_step_lowers_the_loss(linear_problem):
    decoder, x, _ = linear_problem
    blocked = FiniteOnlyAtStart(decoder)
    for flow in FLOWS:
        enc = gfe.encode(blocked, x, flow=flow, solver="amd", loss="mse", max_shrinks=5)
        assert (enc.status == Status.STALLED).all()
        assert (enc.steps == 0).all() and (enc.nfe == 1 + 6).all()  # the start + max_shrinks + 1 tries
        assert torch.equal(enc.z, torch.zeros_like(enc.z)) and torch.isfinite(enc.loss).all()


@pytest.mark.parametrize("flow", FLOWS)
def test_dopri5_gives_up_after_max_rejects(mlp64, data01, flow):
    enc = gfe.encode(mlp64, data01, flow=flow, solver="dopri5", loss="bce", alpha=10.0, dt0=100.0, max_rejects=0)
    assert (enc.status == Status.STALLED).all() and (enc.steps == 0).all()
    assert torch.isfinite(enc.z).all()


# --------------------------------------------------------- non-finite decoders
class NaNWhere(nn.Module):
    """Wraps a decoder and returns NaN for the rows whose latent has z[0] > limit."""

    def __init__(self, inner, limit: float = 0.5):
        super().__init__()
        self.inner, self.limit = inner, limit
        self.latent_dim, self.out_shape = inner.latent_dim, inner.out_shape

    def forward(self, z):
        out = self.inner(z)
        bad = (z[:, 0] > self.limit).reshape(-1, *([1] * (out.dim() - 1)))
        return torch.where(bad, torch.nan, out)


class FiniteOnlyAtStart(nn.Module):
    """Finite only where z[0] == 0 exactly: every move off the start is NaN."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.latent_dim, self.out_shape = inner.latent_dim, inner.out_shape

    def forward(self, z):
        return torch.where(z[:, :1] == 0, self.inner(z), torch.nan)


@pytest.fixture
def nan_problem():
    """A linear decoder made NaN where z[0] > 0.5; samples 1 and 3 have their
    least-squares solutions there (z*[0] = 2, 1.5), samples 0 and 2 do not."""
    rng = np.random.default_rng(3)
    A = torch.from_numpy(rng.normal(size=(6, 3)))
    z_true = torch.tensor([[-1.0, 0.3, 0.2], [2.0, 0.1, -0.3], [-0.5, -0.2, 0.4], [1.5, 0.5, 0.5]],
                          dtype=torch.float64)
    linear = LinearDecoder(A, torch.zeros(6, dtype=torch.float64))
    return NaNWhere(linear), z_true @ A.T


@pytest.mark.parametrize(("flow", "solver"), COMBOS, ids=COMBO_IDS)
def test_non_finite_start_marks_only_that_sample(nan_problem, flow, solver):
    decoder, x = nan_problem
    z0 = torch.zeros(4, 3, dtype=torch.float64)
    z0[2, 0] = 1.0  # sample 2 starts where the decoder gives NaN
    opts = dict(flow=flow, solver=solver, loss="mse", tau=3.0, gtol=1e-6, max_steps=40,
                **({"dt": 0.05} if solver in ("euler", "rk4") else {}))
    enc = gfe.encode(decoder, x, z0=z0, **opts)
    assert enc.status[2] == Status.NON_FINITE and enc.steps[2] == 0
    assert torch.equal(enc.z[2], z0[2]) and torch.isnan(enc.loss[2])
    keep = [0, 1, 3]
    others = gfe.encode(decoder, x[keep], z0=z0[keep], **opts)
    assert torch.equal(enc.status[keep], others.status) and torch.equal(enc.steps[keep], others.steps)
    torch.testing.assert_close(enc.z[keep], others.z, atol=1e-12, rtol=0)


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_fixed_step_into_nan_region_is_non_finite(nan_problem, flow, solver):
    decoder, x = nan_problem
    opts = dict(flow=flow, solver=solver, loss="mse", tau=10.0, gtol=1e-6, max_steps=2000, dt=0.02)
    enc = gfe.encode(decoder, x, **opts)
    bad, good = [1, 3], [0, 2]
    assert (enc.status[bad] == Status.NON_FINITE).all() and (enc.steps[bad] > 0).all()
    assert torch.isfinite(enc.z).all() and torch.isfinite(enc.loss).all()  # the last finite state is kept
    assert (enc.z[bad, 0] <= 0.5).all()
    assert set(enc.status[good].tolist()) <= {int(Status.CONVERGED), int(Status.TAU_REACHED)}
    alone = gfe.encode(decoder, x[good], **opts)
    assert torch.equal(enc.steps[good], alone.steps)
    torch.testing.assert_close(enc.z[good], alone.z, atol=1e-12, rtol=0)


@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("solver", ["amd", "dopri5"])
def test_adaptive_solvers_back_off_from_nan_region(nan_problem, flow, solver):
    """Adaptive solvers treat a non-finite trial as a rejected step: the sample
    stays in the finite region, is not reported as finished, and does not
    disturb its batch-mates."""
    decoder, x = nan_problem
    opts = dict(flow=flow, solver=solver, loss="mse", tau=10.0, gtol=1e-6, max_steps=150)
    enc = gfe.encode(decoder, x, **opts)
    bad, good = [1, 3], [0, 2]
    assert torch.isfinite(enc.z).all() and torch.isfinite(enc.loss).all()
    assert (enc.z[bad, 0] <= 0.5).all()
    assert not set(enc.status[bad].tolist()) & {int(Status.CONVERGED), int(Status.TAU_REACHED)}
    assert set(enc.status[good].tolist()) <= {int(Status.CONVERGED), int(Status.TAU_REACHED)}
    alone = gfe.encode(decoder, x[good], **opts)
    assert torch.equal(enc.steps[good], alone.steps)
    torch.testing.assert_close(enc.z[good], alone.z, atol=1e-12, rtol=0)


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_solvers_report_non_finite_when_every_move_is_nan(linear_problem, solver):
    decoder, x, _ = linear_problem
    options = {"max_rejects": 3} if solver == "dopri5" else {"dt": 0.1}
    enc = gfe.encode(FiniteOnlyAtStart(decoder), x, solver=solver, loss="mse", **options)
    assert (enc.status == Status.NON_FINITE).all()
    assert torch.equal(enc.z, torch.zeros_like(enc.z)) and torch.isfinite(enc.loss).all()


# ----------------------------------------------------------- masks and weights
@pytest.mark.parametrize("solver", ["amd", "rk4"])
def test_masked_features_do_not_affect_the_encoding(mlp64, data01, solver):
    weights = torch.ones_like(data01)
    weights[:, :4] = 0.0
    weights[2, 4:7] = 0.0  # per-sample masks may differ
    changed = data01.clone()
    changed[weights == 0] = torch.rand(int((weights == 0).sum()), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(0))
    opts = dict(solver=solver, loss="bce", alpha=10.0, seed=0, max_steps=80, **solver_options("first", solver))
    a = gfe.encode(mlp64, data01, weights=weights, **opts)
    b = gfe.encode(mlp64, changed, weights=weights, **opts)
    assert torch.equal(a.z, b.z) and torch.equal(a.steps, b.steps) and torch.equal(a.loss, b.loss)
    unmasked = gfe.encode(mlp64, changed, **opts)
    assert not torch.allclose(a.z, unmasked.z)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("n", [1, 6])
def test_feature_shaped_weights_equal_repeated_per_sample_weights(mlp64, data01, solver, n):
    mask = torch.ones(12, dtype=torch.float64)
    mask[:3] = 0
    x = data01[:n]
    opts = dict(solver=solver, loss="bce", alpha=10.0, gtol=1e-4, max_steps=300, tau=100.0,
                **solver_options("first", solver))
    per_sample = gfe.encode(mlp64, x, weights=mask.expand_as(x).clone(), **opts)
    enc = gfe.encode(mlp64, x, weights=mask, **opts)
    torch.testing.assert_close(enc.z, per_sample.z, atol=1e-12, rtol=0)
    changed = x.clone()
    changed[:, :3] = 1.0 - changed[:, :3]
    assert torch.equal(gfe.encode(mlp64, changed, weights=mask.numpy(), **opts).z, enc.z)


def test_per_sample_weights_match_single_sample_encodings(mlp64, data01):
    rng = np.random.default_rng(4)
    weights = torch.from_numpy(rng.uniform(0.0, 2.0, size=data01.shape))
    opts = dict(loss="bce", alpha=10.0, seed=1, gtol=1e-4, max_steps=300)
    full = gfe.encode(mlp64, data01, weights=weights, **opts)
    z0 = _z0_of(mlp64, data01, seed=1)
    for i in range(len(data01)):
        opts_i = {k: v for k, v in opts.items() if k != "seed"}
        alone = gfe.encode(mlp64, data01[i : i + 1], z0=z0[i : i + 1], weights=weights[i : i + 1], **opts_i)
        assert torch.equal(alone.steps, full.steps[i : i + 1])
        torch.testing.assert_close(alone.z, full.z[i : i + 1], atol=1e-12, rtol=0)
    # weights are normalised per sample: scaling them changes nothing
    scaled = gfe.encode(mlp64, data01, weights=7.0 * weights, **opts)
    torch.testing.assert_close(scaled.z, full.z, atol=1e-9, rtol=0)
    uniform = gfe.encode(mlp64, data01, weights=torch.ones_like(data01), **opts)
    plain = gfe.encode(mlp64, data01, **opts)
    torch.testing.assert_close(uniform.z, plain.z, atol=1e-9, rtol=0)
    assert not torch.allclose(full.z, plain.z)


# ------------------------------------------------------------------- penalties
def test_penalties_change_the_encoding(mlp64, data01):
    opts = dict(loss="bce", alpha=10.0, seed=0, gtol=1e-5, max_steps=500)
    plain = gfe.encode(mlp64, data01, **opts)
    l2 = gfe.encode(mlp64, data01, penalty="l2", penalty_weight=0.05, **opts)
    l1 = gfe.encode(mlp64, data01, penalty="l1", penalty_weight=0.01, **opts)
    assert not torch.allclose(plain.z, l2.z) and not torch.allclose(plain.z, l1.z)
    assert (l2.z.norm(dim=1) < plain.z.norm(dim=1)).all()
    assert (l1.z.abs().sum(1) < plain.z.abs().sum(1)).all()
    # the reported loss includes the penalty
    for enc, pen, w in ((l2, "l2", 0.05), (l1, "l1", 0.01)):
        expected = Objective(mlp64, Loss("bce", pen, w)).value(enc.z, data01)
        torch.testing.assert_close(enc.loss, expected, atol=1e-14, rtol=0)
    # a zero weight is no penalty
    zero = gfe.encode(mlp64, data01, penalty="l2", penalty_weight=0.0, **opts)
    assert torch.equal(zero.z, plain.z)


@pytest.mark.parametrize("solver", ["amd", "rk4"])
def test_huge_l2_penalty_drives_latents_to_zero(mlp64, data01, solver):
    extra = {"dt": 1e-3} if solver == "rk4" else {}  # the penalty makes the flow stiff: λ = 2e3
    enc = gfe.encode(mlp64, data01, solver=solver, loss="bce", seed=0, init_scale=2.0, penalty="l2",
                     penalty_weight=1e3, gtol=1e-6, max_steps=2000, **extra)
    start = _z0_of(mlp64, data01, seed=0, init_scale=2.0)
    assert (start.norm(dim=1) > 0.5).all()
    assert (enc.z.norm(dim=1) < 1e-4).all()


# ---------------------------------------------------------------------- losses
def _bce(o, x):
    p = 1.0 / (1.0 + math.exp(-o))
    return -(x * math.log(p) + (1 - x) * math.log(1 - p))


def test_loss_values_equal_hand_computations():
    o = torch.tensor([[0.3, -1.2, 2.0], [0.0, 0.5, -0.7]], dtype=torch.float64)
    x = torch.tensor([[0.0, 1.0, 0.25], [0.5, 0.0, 1.0]], dtype=torch.float64)
    counts = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 5.0]], dtype=torch.float64)
    z = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    rows = range(2)
    bce = [sum(_bce(o[i, j].item(), x[i, j].item()) for j in range(3)) / 3 for i in rows]
    mse = [sum((o[i, j].item() - x[i, j].item()) ** 2 for j in range(3)) / 3 for i in rows]
    poisson = [sum(math.exp(o[i, j].item()) - counts[i, j].item() * o[i, j].item() for j in range(3)) / 3 for i in rows]
    torch.testing.assert_close(Loss("bce")(o, x, z), torch.tensor(bce, dtype=torch.float64), atol=1e-14, rtol=0)
    torch.testing.assert_close(Loss("mse")(o, x, z), torch.tensor(mse, dtype=torch.float64), atol=1e-14, rtol=0)
    torch.testing.assert_close(Loss("poisson")(o, counts, z), torch.tensor(poisson, dtype=torch.float64),
                               atol=1e-14, rtol=0)
    # weights: a weighted mean per sample, feature-shaped or one row per sample
    w = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    weighted = [(2 * (o[i, 0] - x[i, 0]) ** 2 + (o[i, 2] - x[i, 2]) ** 2).item() / 3 for i in rows]
    torch.testing.assert_close(Loss("mse")(o, x, z, w), torch.tensor(weighted, dtype=torch.float64))
    W = torch.stack([w, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)])
    rowwise = [weighted[0], ((o[1, 1] - x[1, 1]) ** 2).item()]
    torch.testing.assert_close(Loss("mse")(o, x, z, W), torch.tensor(rowwise, dtype=torch.float64))
    # penalties add λ Ω(z) per sample
    l2 = Loss("mse", "l2", 0.1)(o, x, z)
    l1 = Loss("mse", "l1", 0.1)(o, x, z)
    torch.testing.assert_close(l2, torch.tensor(mse, dtype=torch.float64) + 0.1 * torch.tensor([5.0, 0.25], dtype=torch.float64))
    torch.testing.assert_close(l1, torch.tensor(mse, dtype=torch.float64) + 0.1 * torch.tensor([3.0, 0.5], dtype=torch.float64))


def test_loss_reduces_multidimensional_features_per_sample():
    g = torch.Generator().manual_seed(0)
    o = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    x = torch.rand(3, 2, 4, generator=g, dtype=torch.float64)
    z = torch.zeros(3, 2, dtype=torch.float64)
    for name in ("bce", "mse", "poisson"):
        value = Loss(name)(o, x, z)
        assert value.shape == (3,)
        torch.testing.assert_close(value, Loss(name)(o.flatten(1), x.flatten(1), z))
        # a sample's loss does not depend on its batch-mates
        torch.testing.assert_close(Loss(name)(o[1:2], x[1:2], z[1:2]), value[1:2])


def test_link_maps_outputs_to_data_space():
    o = torch.tensor([[-2.0, 0.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(link("bce", o), 1 / (1 + torch.exp(-o)))
    torch.testing.assert_close(link("poisson", o), torch.exp(o))
    assert torch.equal(link("mse", o), o)


@pytest.mark.parametrize("loss", ["bce", "mse", "poisson"])
@pytest.mark.parametrize(("penalty", "weight"), [(None, 0.0), ("l2", 0.3), ("l1", 0.2)])
@pytest.mark.parametrize("weighted", [False, True])
def test_objective_gradient_matches_finite_differences(mlp64, data01, loss, penalty, weight, weighted):
    objective = Objective(mlp64, Loss(loss, penalty, weight))
    x = data01 * 3.0 if loss == "poisson" else data01
    w = torch.from_numpy(np.random.default_rng(2).uniform(0, 1, size=x.shape)) if weighted else None
    z = torch.from_numpy(np.random.default_rng(5).normal(size=(len(x), 3)))
    z = z + 0.1 * torch.sign(z)  # keep clear of the L1 kink at 0
    value, grad = objective.value_and_grad(z, x, w)
    torch.testing.assert_close(value, objective.value(z, x, w), atol=0, rtol=0)
    h = 1e-6
    numeric = torch.empty_like(z)
    for j in range(z.shape[1]):
        step = torch.zeros_like(z)
        step[:, j] = h  # all samples at once: each sample's energy sees only its own step
        numeric[:, j] = (objective.value(z + step, x, w) - objective.value(z - step, x, w)) / (2 * h)
    torch.testing.assert_close(grad, numeric, atol=1e-8, rtol=1e-6)


def test_objective_gradient_passes_gradcheck(mlp64, data01):
    objective = Objective(mlp64, Loss("bce", "l2", 0.1))
    z = torch.from_numpy(np.random.default_rng(0).normal(size=(6, 3))).requires_grad_(True)

    def energy(z):
        return objective.loss(objective.decoder(z), data01, z)

    assert torch.autograd.gradcheck(energy, (z,), eps=1e-6, atol=1e-7)
    # value_and_grad returns the rows of the Jacobian's diagonal blocks: ∇ of each
    # sample's own energy
    jac = torch.autograd.functional.jacobian(energy, z.detach())  # (N, N, d)
    _, grad = objective.value_and_grad(z.detach(), data01)
    torch.testing.assert_close(grad, torch.diagonal(jac, dim1=0, dim2=1).T)
    off = jac.clone()
    off[range(6), range(6)] = 0
    assert torch.equal(off, torch.zeros_like(off))


# ------------------------------------------------------- float32 batch-mates
@pytest.mark.parametrize(("flow", "step"), [("first", "flow"), ("first", "bfgs"), ("nesterov", "flow")])
def test_float32_batch_mates_do_not_change_an_encoding(flow, step):
    """In float32 too, a sample's encoding is bit-identical alone and in any part of
    the batch (row blocks, `gfe.rows`; more cases in test_batch_invariance.py)."""
    torch.manual_seed(0)
    decoder = gfe.MLPDecoder(6, (40,), hidden=(64, 128))
    x = torch.rand(14, 40)
    opts = dict(flow=flow, step=step, loss="bce", gtol=1e-4, max_steps=5000, tau=1e9)
    full = gfe.encode(decoder, x, **opts)
    assert (full.status == Status.CONVERGED).all()
    for part in (slice(0, 1), slice(5, 7), slice(2, 5), slice(3, 12)):
        alone = gfe.encode(decoder, x[part], **opts)
        assert torch.equal(alone.z, full.z[part]) and torch.equal(alone.loss, full.loss[part])
