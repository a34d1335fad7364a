"""Vector fields of the two gradient flows, on a state `y` of shape (B, state_dim).

* First order: `dz/dt = -α ∇E(z)`; the state is `z`.
* Second order (Nesterov's ODE, Su, Boyd & Candès 2016): `z'' + (3/t) z' + α ∇E = 0`,
  as the first-order system `y = (z, v)`: `z' = v`, `v' = -(3/t) v - α ∇E`. At `t = 0`
  (where `v = 0`) the damping term has the limit `(3/t) v -> -3α∇E/4`, so `v'(0) = -α∇E/4`.

Each flow also defines `descent_step`, the explicit step the AMD solver tries: a
gradient step for the first-order flow, and a semi-implicit Euler step (damping
taken at the new time) for the second-order flow, which is well defined at `t = 0`.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

FLOWS = ("first", "nesterov")


class FirstOrderFlow:
    name = "first"

    def __init__(self, latent_dim: int, alpha: float = 1.0):
        self.latent_dim = latent_dim
        self.alpha = alpha
        self.state_dim = latent_dim

    def initial_state(self, z0: torch.Tensor) -> torch.Tensor:
        return z0.clone()

    def latent(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def velocity(self, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def field(self, t: torch.Tensor, y: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return -self.alpha * grad

    def descent_step(self, y, grad, s, h) -> torch.Tensor:
        return y - (h * self.alpha)[:, None] * grad

    def restart(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def lyapunov(self, y: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """A quantity that never increases along the exact flow: the energy itself."""
        return energy


class NesterovFlow:
    name = "nesterov"

    def __init__(self, latent_dim: int, alpha: float = 1.0):
        self.latent_dim = latent_dim
        self.alpha = alpha
        self.state_dim = 2 * latent_dim

    def initial_state(self, z0: torch.Tensor) -> torch.Tensor:
        return torch.cat([z0, torch.zeros_like(z0)], dim=1)

    def latent(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, : self.latent_dim]

    def velocity(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, self.latent_dim :]

    def field(self, t: torch.Tensor, y: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        v = self.velocity(y)
        t = t.to(y.dtype)[:, None].expand_as(v)
        at_start = t == 0
        damping = torch.where(at_start, 0.0, 3.0 / torch.where(at_start, 1.0, t)) * v
        force = torch.where(at_start, 0.25, 1.0) * self.alpha * grad
        return torch.cat([v, -damping - force], dim=1)

    def descent_step(self, y, grad, s, h) -> torch.Tensor:
        """Semi-implicit Euler from clock `s` (time since the last restart)."""
        z, v = self.latent(y), self.velocity(y)
        h_, s_ = h[:, None], s[:, None]
        v_new = (v - h_ * self.alpha * grad) * (s_ + h_) / (s_ + 4.0 * h_)
        return torch.cat([z + h_ * v_new, v_new], dim=1)

    def restart(self, y: torch.Tensor) -> torch.Tensor:
        """Drop the momentum: the next step starts like the flow at `t = 0`."""
        return torch.cat([self.latent(y), torch.zeros_like(self.velocity(y))], dim=1)

    def lyapunov(self, y: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """`E + |v|²/(2α)`, which never increases along the exact flow: its rate is `-(3/t)|v|²/α`."""
        return energy + self.velocity(y).square().sum(1) / (2 * self.alpha)


def make_flow(name: str, latent_dim: int, alpha: float = 1.0):
    if not alpha > 0:
        raise ConfigError(f"alpha (the flow's speed) must be > 0, got {alpha}")
    if name == "first":
        return FirstOrderFlow(latent_dim, alpha)
    if name == "nesterov":
        return NesterovFlow(latent_dim, alpha)
    raise ConfigError(f"unknown flow {name!r}; expected one of {', '.join(FLOWS)}")
