"""ODE solvers for the encoding flows. All decide step sizes, acceptance and
stopping per sample, and report per-sample steps, evaluations and status."""

from .active import Results, StopRule
from .adaptive import solve_dopri5
from .amd import AMDOptions, solve_amd
from .fixed import solve_fixed
from .latent_opt import AdamOptions, LBFGSOptions, solve_adam, solve_lbfgs
from .status import Status

SOLVERS = ("amd", "euler", "rk4", "dopri5", "adam", "lbfgs")

__all__ = ["SOLVERS", "AMDOptions", "AdamOptions", "LBFGSOptions", "solve_adam", "solve_lbfgs", "Results", "Status", "StopRule", "solve_amd", "solve_dopri5", "solve_fixed"]
