"""ODE solvers for the encoding flows. All decide step sizes, acceptance and
stopping per sample, and report per-sample steps, evaluations and status."""

from .active import Results, StopRule
from .adaptive import solve_dopri5
from .amd import AMDOptions, solve_amd
from .fixed import solve_fixed
from .status import Status

SOLVERS = ("amd", "euler", "rk4", "dopri5")

__all__ = ["SOLVERS", "AMDOptions", "Results", "Status", "StopRule", "solve_amd", "solve_dopri5", "solve_fixed"]
