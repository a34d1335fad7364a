"""Where gfe computes: a device named by a user ("cpu", "cuda", "cuda:1", "mps"),
checked once with a clear error, before any work starts.

Models are built on the CPU (so initial weights are the same, seed for seed, on
every device), then moved; data go to the decoder's device batch by batch;
results and saved models come back to the CPU, so files do not depend on where
they were made.
"""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """`device` as a `torch.device` this machine has; `ConfigError` otherwise (None is the CPU)."""
    try:
        resolved = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: expected cpu, cuda, cuda:N (N a GPU's number) or mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"device {device!r} asked for, but PyTorch {torch.__version__} ({build}) sees no "
                              "CUDA GPU here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} "
                              "CUDA GPU(s), numbered from 0")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r} asked for, but PyTorch sees no Apple GPU (MPS) here")
    elif resolved.type != "cpu":
        raise ConfigError(f"device {device!r} is not supported: gfe computes on cpu, cuda[:N] or mps")
    return resolved


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for one with neither)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer read next measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_record(device: torch.device) -> dict:
    """What a benchmark's JSON says about where it ran."""
    if device.type != "cuda":
        return {"device": str(device)}
    properties = torch.cuda.get_device_properties(device)
    return {"device": str(device), "gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "cuda": torch.version.cuda}
