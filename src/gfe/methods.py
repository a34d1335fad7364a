"""The training-method registry: a method is a flow and a solver with the encode
settings it trains and evaluates with, in one record, so a method cannot exist
without its defaults. The trainer, the estimator, the command line and the
benchmarks read their lists from `METHODS`.

Training needs only nearby latents (the approximate gradient), so it encodes
loosely with a bounded step count; evaluation and stored models encode to
convergence. For AMD on the first-order flow, the per-sample BFGS metric reaches
the flow's end point in far fewer evaluations than the reference's gradient steps,
in training and in evaluation (measured: docs/benchmarks.md); exact gradients
replay the flow's path, which BFGS steps leave, so they train with
Barzilai-Borwein step sizes along it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError
from .flows import FLOWS
from .registry import Registry
from .solvers import solver_spec


@dataclass(frozen=True)
class MethodSpec:
    """`flow` and `solver` name the GFE flow (None for a method whose latents come
    from an encoder: the autoencoder baseline); `encode_options` and `eval_options` are
    the encode options it uses while training and for validation and saved models,
    under the user's own; `exact_options` replace some training options when the
    decoder's gradient is exact (`TrainConfig.gradient`), which replays the flow's path."""

    name: str
    flow: str | None
    solver: str | None
    encode_options: dict = field(default_factory=dict)
    eval_options: dict = field(default_factory=dict)
    summary: str = ""
    exact_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if (self.flow is None) != (self.solver is None):
            raise ConfigError(f"method {self.name!r}: give both a flow and a solver, or neither (an encoder)")
        if self.flow is not None:
            if self.flow not in FLOWS:
                raise ConfigError(f"method {self.name!r}: unknown flow {self.flow!r}; expected one of "
                                  f"{', '.join(FLOWS)}")
            solver_spec(self.solver)

    @property
    def is_gfe(self) -> bool:
        return self.flow is not None


METHODS: Registry[MethodSpec] = Registry("method")
register_method = METHODS.register  # `TrainConfig`, `gfe train --method` and `gfe.GFE` then accept the name
method_spec = METHODS.spec


def flow_methods() -> list[str]:
    """Names of the methods that train on gradient-flow latents."""
    return [name for name, spec in METHODS.items() if spec.is_gfe]


# With the learned start (`TrainConfig.start`) 15 AMD steps per training batch suffice;
# BFGS steps from there mostly reach gtol within 10 evaluations.
LOOSE = {"gtol": 1e-3, "max_steps": 50}
register_method(MethodSpec("gfe-amd", "first", "amd", {**LOOSE, "max_steps": 15, "step": "bfgs"},
                           {"step": "bfgs"}, "first-order flow, AMD steps (the paper's method)",
                           exact_options={"step": "spectral", "h_max": 100.0}))
register_method(MethodSpec("gfe-nesterov", "nesterov", "amd", LOOSE, {}, "Nesterov's second-order flow, AMD steps"))
register_method(MethodSpec("gfe-euler", "first", "euler", {**LOOSE, "dt": 10.0}, {"dt": 10.0},
                           "first-order flow, explicit Euler"))
register_method(MethodSpec("gfe-rk4", "first", "rk4", {**LOOSE, "dt": 10.0}, {"dt": 10.0},
                           "first-order flow, classical Runge-Kutta 4"))
register_method(MethodSpec("gfe-dopri5", "first", "dopri5", LOOSE, {}, "first-order flow, Dormand-Prince 5(4)"))
register_method(MethodSpec("ae", None, None, summary="the autoencoder baseline: the same decoder, a mirrored encoder"))
