"""Data-parallel training and sharded encoding across processes launched by `torchrun`.

GFE encodings are per sample, so work splits by rows: every process (a replica)
encodes its own rows of each batch with the plain decoder (DDP cannot wrap the
`autograd.grad` calls of the flow), and only the parameter update, the
decoder's forward and backward on the fixed latents, goes through PyTorch's
`DistributedDataParallel`, which averages the gradients across processes.

The process group comes from the environment `torchrun` sets (RANK, WORLD_SIZE,
MASTER_ADDR, ...), on one machine or across the nodes of a cluster. On the CPU
its backend is gloo; on GPUs (one process per GPU, `process_device`) it is
"cpu:gloo,cuda:nccl": NCCL for the gradients and gathered rows, which live on
the GPU, gloo for the few CPU totals.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .devices import resolve_device
from .errors import ConfigError


def launch_rank() -> tuple[int, int]:
    """(rank, world size) of this process as set by `torchrun`; (0, 1) when started alone."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ConfigError(f"RANK and WORLD_SIZE must be integers as torchrun sets them: {err}") from None


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by `torchrun`."""
    return launch_rank()[1] > 1


def process_device(device="cpu") -> torch.device:
    """This process's device: `device` checked (`resolve_device`), and a bare
    "cuda" under torchrun made the LOCAL_RANK-th GPU, one per process."""
    device = resolve_device(device)
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        device = resolve_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    return device


def split_bounds(n: int, parts: int, index: int) -> tuple[int, int]:
    """Rows `[start, stop)` of part `index` when `n` rows are split into `parts`
    contiguous parts whose sizes differ by at most one (the first ones larger)."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


@dataclass(frozen=True)
class Replicas:
    """The processes that train one model together, as seen from one of them.

    The default, `Replicas()`, is a single process: every hook is then the
    identity, so the trainer has one code path.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes checkpoints, models and reports, so files are never written twice."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This process's rows of a batch of `n` (possibly none, for a batch smaller than the group)."""
        return slice(*split_bounds(n, self.world_size, self.rank))

    def loss_scale(self, n: int) -> float:
        """Factor turning this process's summed loss into its share of the batch mean.

        DDP averages gradients over processes, so each one scales by
        world_size / n: the average of the shares is then the gradient of the
        mean over the whole batch of `n`, even when the shares differ in size.
        """
        return self.world_size / n

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` for the parameter update: DDP-wrapped when there are several processes.

        Wrapping broadcasts rank 0's parameters, so all replicas start equal.
        """
        if self.world_size == 1:
            return module
        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, *values: float) -> tuple[float, ...]:
        """Sums of `values` over all processes (float64, so totals do not lose precision)."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tuple(tensor.tolist())

    def gather_rows(self, mine: torch.Tensor, n: int) -> torch.Tensor:
        """A batch's `n` rows from every process, in batch order, given this
        process's share `mine` (its rows `rows(n)`); the same on every process."""
        if self.world_size == 1:
            return mine
        full = mine.new_zeros((n, *mine.shape[1:]))
        full[self.rows(n)] = mine
        dist.all_reduce(full)  # each row is non-zero on one process only: the sum is exact
        return full

    def barrier(self) -> None:
        """Wait for every process, e.g. until rank 0 has finished writing a checkpoint."""
        if self.world_size > 1:
            dist.barrier()


@contextlib.contextmanager
def process_group(device="cpu") -> Iterator[Replicas]:
    """The replicas of this launch: joins torchrun's process group for the block's
    duration (over NCCL too when this process's `device` is a GPU), or yields a
    single process when not launched by torchrun."""
    if not launched_by_torchrun():
        yield Replicas()
        return
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start several processes with "
                          "torchrun (e.g. 'torchrun --nproc-per-node 2 -m gfe train ...'), which sets them all")
    device = process_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    try:
        yield Replicas(dist.get_rank(), dist.get_world_size())
        # leave together: a rank that tears gloo down while another still writes
        # files could see its peer's sockets close under it (seen as an abort in CI)
        dist.barrier()
    finally:
        dist.destroy_process_group()
