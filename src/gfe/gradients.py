"""Decoder gradients of `L(θ) = Σ_m E(x_m, z*_m(θ); θ)`, where `z*` is the flow's encoding
and `E` the flow's energy (loss plus latent penalty), three ways (DESIGN §2.3):

* ``approx``: `z*` held fixed, `∂_θ E(z*)`; the paper's cheap default, exact once the
  flow has converged (`∇_z E(z*) = 0`).
* ``unrolled``: back-propagation through the solver's accepted steps (the discrete
  adjoint): exact for the map the solver computed.
* ``adjoint``: the continuous adjoint. From `a(τ) = ∂E/∂y(τ)` the system
  `a' = -(∂f/∂y)ᵀ a`, `G' = -aᵀ ∂f/∂θ` (for the first-order flow `a' = αHa`) is integrated
  backwards over each accepted step with the step's own Runge-Kutta tableau (for AMD's
  descent steps: their own semi-implicit Euler scheme run backwards, with the Hessian
  at the step's end), and `∇_θ L = ∂_θ E(z(τ)) + G(0)`. It converges to the unrolled
  gradient as steps shrink, at the order of the tableau.

Memory: the forward solve *stores* the trajectory compactly: for each accepted step the
state before and after it (two rows of `state_dim` numbers, no autograd graph), and the
rows whose momentum was restarted. The backward sweep walks these steps in reverse and
*recomputes* each step (its Runge-Kutta stages, with a graph for that one step only),
so memory is `2 · Σ_m steps_m · state_dim` numbers plus one step's graph, never a graph
of the whole trajectory. Hessian-vector products are double backward through the
decoder, batched over all samples that share a solver iteration.

Samples take different steps: events are recorded per solver iteration for the rows
that accepted a step then, so replaying iteration by iteration in reverse handles
every sample's own step sequence, batched.
"""

from __future__ import annotations

import torch
from torch import nn

from .encode import Encoding, FlowEncoder, _as_batch, _start, as_weights
from .errors import ConfigError
from .solvers import SOLVERS, SolverSpec, runge_kutta_step

GRADIENTS = ("approx", "adjoint", "unrolled")


def check_gradient(gradient: str, spec: SolverSpec, options) -> None:
    """Raise `ConfigError` unless `gradient` can be computed for the solver `spec` with `options`."""
    if gradient not in GRADIENTS:
        raise ConfigError(f"unknown gradient {gradient!r}; expected one of {', '.join(GRADIENTS)}")
    if gradient == "approx":
        return
    if not spec.replayable:
        replayable = [name for name, other in SOLVERS.items() if other.replayable]
        raise ConfigError(
            f"gradient={gradient!r} differentiates through the flow's ODE steps, but solver {spec.name!r} is a "
            f"plain optimizer with no ODE; use one of the solvers {', '.join(replayable)} or gradient='approx'")
    why = spec.replay_error(options)
    if why is not None:
        raise ConfigError(f"gradient={gradient!r} replays the solver's steps along the flow, but {why}")


class Trajectory:
    """What a forward solve did, in order: accepted steps and momentum restarts."""

    def __init__(self):
        self.events: list[tuple] = []

    def step(self, rows, h, y_before, y_after) -> None:
        if rows.numel():
            self.events.append(("step", rows, h, y_before, y_after))

    def restart(self, rows) -> None:
        if rows.numel():
            self.events.append(("restart", rows))

    def with_clocks(self, n: int, like: torch.Tensor):
        """The events with each step's flow time at its start (the time since the
        sample's last momentum restart, which is the time for solvers that never restart)."""
        clock = torch.zeros(n, dtype=torch.float64, device=like.device)
        for event in self.events:
            if event[0] == "restart":
                clock[event[1]] = 0.0
                yield event, None
            else:
                rows, h = event[1], event[2]
                start = clock[rows]
                clock[rows] = start + h
                yield event, start


def flow_gradients(encoder: FlowEncoder, x: torch.Tensor, z0: torch.Tensor, weights=None,
                   gradient: str = "adjoint") -> tuple[Encoding, list[torch.Tensor]]:
    """Encode the validated batch `x` from `z0` with `encoder` and return the encoding
    and the gradient of the summed energy `Σ_m E_m` in the order of `decoder.parameters()`.

    The whole batch is one solver call (no chunks), since the backward sweep needs
    the steps of every sample.
    """
    check_gradient(gradient, encoder.spec, encoder.options)
    if weights is not None and weights.dim() < x.dim():
        weights = weights.expand_as(x)
    log = Trajectory() if gradient != "approx" else None
    res = encoder.solve(x, z0, weights, log)
    encoding = encoder.encoding(res)
    params = list(encoder.decoder.parameters())
    sweep = _Sweep(encoder, params, x, weights, gradient)
    try:
        grads, a = sweep.terminal(res.y)
        if gradient != "approx":
            for event, clock in reversed(list(log.with_clocks(len(x), x))):
                sweep.backward(event, clock, a, grads)
    except RuntimeError as err:
        raise ConfigError(
            f"gradient={gradient!r} needs Hessian-vector products (double backward through the decoder), "
            f"which failed: {err}. Use a twice-differentiable decoder without in-place operations or "
            f"once-differentiable custom functions, or gradient='approx'"
        ) from err
    return encoding, grads


class _Sweep:
    """The backward pass over recorded steps, for one batch."""

    def __init__(self, encoder: FlowEncoder, params, x, weights, gradient: str):
        self.objective, self.flow, self.params = encoder.objective, encoder.flow, params
        self.x, self.w, self.gradient = x, weights, gradient
        self.spec = encoder.spec

    def _grad_energy(self, y: torch.Tensor, rows, shift=0.0) -> torch.Tensor:
        """`∇_z E` at the latent of `y` plus `shift`, as a differentiable function of `y` and θ."""
        z = self.flow.latent(y) + shift
        w = None if self.w is None else self.w[rows]
        energy = self.objective.loss(self.objective.decoder(z), self.x[rows], z, w).sum()
        (grad,) = torch.autograd.grad(energy, z, create_graph=True)
        return grad

    def _vjp(self, output, inputs, cotangent):
        grads = torch.autograd.grad(output, inputs, grad_outputs=cotangent, allow_unused=True)
        return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]

    def terminal(self, y_final: torch.Tensor):
        """`∂_θ Σ E(z(τ))` and the adjoint's start `a(τ) = ∂E/∂y(τ)`."""
        with torch.enable_grad():
            y = y_final.detach().requires_grad_(True)
            z = self.flow.latent(y)
            energy = self.objective.loss(self.objective.decoder(z), self.x, z, self.w).sum()
            grad_y, *grads = self._vjp(energy, [y, *self.params], None)
            if self.gradient != "approx":
                self._check_double_backward(y)
        return grads, grad_y

    def _check_double_backward(self, y: torch.Tensor) -> None:
        """Some operations (once-differentiable custom functions, detaches inside the
        decoder) give a latent gradient with no dependence on the latent, and Hessian-
        vector products would silently vanish; fail loudly instead."""
        grad = self._grad_energy(y, slice(None))
        (hvp,) = torch.autograd.grad(grad.sum(), y, allow_unused=True)
        if hvp is None:
            raise RuntimeError("the latent gradient does not depend on the latent, so the decoder's backward "
                               "pass cannot be differentiated (it would differentiate twice a function that "
                               "supports it once)")

    def backward(self, event, clock, a: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """Carry the adjoint `a` (rows of the whole batch) back over one event, in place."""
        if event[0] == "restart":  # the velocity was set to zero: nothing flows back through it
            a[event[1], self.flow.latent_dim:] = 0.0
            return
        _, rows, h, y_before, y_after = event
        with torch.enable_grad():
            if self.gradient == "unrolled" or self.spec.descent_steps:
                a[rows], parts = self._step_vjp(rows, clock, h, y_before, y_after, a[rows])
            else:
                a[rows], parts = self._adjoint_rk(rows, clock, h, y_after, a[rows])
        for g, part in zip(grads, parts):
            g.add_(part)

    def _step_vjp(self, rows, s, h, y_before, y_after, a):
        """Vector-Jacobian product of the step map `y_after = Φ(y_before; θ)` (unrolled).

        For the adjoint of an AMD step, the adjoint equations are discretized by the
        step's own scheme run backwards (semi-implicit Euler for the second-order flow)
        with the Hessian and `∂_θ ∇E` taken at the step's end: a first-order scheme for
        the continuous adjoint that is stable for the large steps AMD accepts, where
        explicit Euler on the adjoint system is not.
        """
        y = y_before.detach().requires_grad_(True)
        h_ = h.to(y.dtype)
        if self.spec.descent_steps:
            at_end = 0.0 if self.gradient == "unrolled" else self.flow.latent(y_after - y_before)
            out = self.flow.descent_step(y, self._grad_energy(y, rows, at_end), s.to(y.dtype), h_)
        else:
            out = runge_kutta_step(lambda t, yi: self.flow.field(t, yi, self._grad_energy(yi, rows)), s, y, h,
                                   self.spec.tableau())
        grad_y, *parts = self._vjp(out, [y, *self.params], a)
        return grad_y, parts

    def _adjoint_rk(self, rows, s, h, y_after, a):
        """One step of the augmented system `(y, a, G)` backwards from `t = s + h` to `s`
        with the step's Runge-Kutta tableau, starting from the stored `y_after`."""
        A, b, c = self.spec.tableau()
        h_ = h.to(a.dtype)[:, None]
        t_end = s + h
        fields, pulls = [], []  # per stage: f(t, Y) and h·(∂f/∂y)ᵀ A
        parts = [torch.zeros_like(p) for p in self.params]
        for i in range(len(b)):
            y_i = y_after - h_ * sum((A[i][j] * fields[j] for j in range(i) if A[i][j]), torch.zeros_like(a))
            a_i = a + sum((A[i][j] * pulls[j] for j in range(i) if A[i][j]), torch.zeros_like(a))
            y_i = y_i.detach().requires_grad_(True)
            f = self.flow.field(t_end - c[i] * h, y_i, self._grad_energy(y_i, rows))
            pull, *param_pulls = self._vjp(f, [y_i, *self.params], h_ * a_i)
            fields.append(f.detach())
            pulls.append(pull)
            for part, pp in zip(parts, param_pulls):
                part.add_(b[i] * pp)
        a_new = a + sum((bi * pi for bi, pi in zip(b, pulls) if bi), torch.zeros_like(a))
        return a_new, parts


def decoder_gradients(decoder: nn.Module, x, *, gradient: str = "adjoint", z0=None, seed: int | None = None,
                      init_scale: float = 1.0, weights=None, **encode_options) -> list[torch.Tensor]:
    """Gradient of `L(θ) = Σ_m E(x_m, D_θ(z*_m(θ)))` with respect to `decoder.parameters()`
    (in their order), where `z*` is what `gfe.encode(decoder, x, **encode_options)` returns.

    `gradient` is "approx" (z* held fixed), "unrolled" (back-propagation through the
    solver's accepted steps) or "adjoint" (the continuous adjoint along them); see
    `gfe.gradients`. `z0`, `seed`, `init_scale`, `weights` and the other options are as
    for `gfe.encode`; the exact modes need a flow solver (amd, euler, rk4, dopri5).
    """
    encode_options.pop("chunk_size", None)  # the gradient sweep takes the batch whole
    encoder = FlowEncoder(decoder, **encode_options)
    check_gradient(gradient, encoder.spec, encoder.options)
    param = next(decoder.parameters())
    x = _as_batch(decoder, x, encoder.loss.name, param)
    weights = as_weights(weights, x, param)
    start = _start(z0, seed, init_scale, x, weights, decoder.latent_dim, param)
    _, grads = flow_gradients(encoder, x, start, weights, gradient)
    return grads
