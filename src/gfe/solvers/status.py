"""Per-sample termination codes, in the spirit of torchode's status codes."""

from enum import IntEnum


class Status(IntEnum):
    CONVERGED = 0  # gradient norm or loss decrease fell below tolerance
    TAU_REACHED = 1  # integrated to the final time tau
    STEP_BUDGET = 2  # max_steps accepted steps taken
    STALLED = 3  # AMD found no step that lowers the loss
    NON_FINITE = 4  # the loss or the state became NaN/inf; the last finite state is kept
    DIVERGED = 5  # a fixed-step flow went unstable (its energy rose); the last state before is kept

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")
