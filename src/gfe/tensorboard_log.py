"""Optional TensorBoard logging of training: one scalar per epoch record.

TensorBoard is an optional extra (`pip install 'gfe[tensorboard]'`); the
training history is always written as CSV whether or not it is installed.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .errors import ConfigError


class TensorBoardLog:
    """A `Trainer` callback writing each epoch's losses, flow steps, decoder
    evaluations and seconds as TensorBoard scalars under `directory`.
    Use it as a context manager so the event file is closed."""

    def __init__(self, directory):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError("TensorBoard logging needs the tensorboard package: "
                              "pip install 'gfe[tensorboard]'") from err
        self.writer = SummaryWriter(log_dir=str(Path(directory)))

    def __call__(self, trainer, record) -> None:
        for name, value in asdict(record).items():
            if name != "epoch" and value == value:  # NaN: no validation data
                self.writer.add_scalar(f"train/{name}", value, record.epoch)
        self.writer.flush()

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()
