"""ODE solvers for the encoding flows. All decide step sizes, acceptance and
stopping per sample, and report per-sample steps, evaluations and status.

Each solver module registers itself (`registry.register_solver`); `SOLVERS` maps
names to their `SolverSpec`s.
"""

from .active import Results, StopRule
from .amd import AMDOptions, solve_amd  # isort: skip (registration order: AMD, the fixed grids, dopri5, baselines)
from .fixed import FixedStepOptions, solve_fixed  # isort: skip
from .adaptive import Dopri5Options, solve_dopri5  # isort: skip
from .latent_opt import AdamOptions, LBFGSOptions, solve_adam, solve_lbfgs
from .runge_kutta import runge_kutta_step
from .registry import SOLVERS, NoOptions, SolverSpec, register_solver, solver_spec
from .status import Status

__all__ = ["SOLVERS", "AMDOptions", "AdamOptions", "Dopri5Options", "FixedStepOptions", "LBFGSOptions", "NoOptions",
           "Results", "SolverSpec", "Status", "StopRule", "register_solver", "runge_kutta_step", "solve_adam",
           "solve_amd", "solve_dopri5", "solve_fixed", "solve_lbfgs", "solver_spec"]
