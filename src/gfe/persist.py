"""Model directories (safetensors weights + JSON config) and atomic file writes.

A model directory holds `weights.safetensors` and `config.json`: the decoder,
the autoencoder's encoder if any, the learned start map if any, and arrays that
prepare data for the model (e.g. per-feature statistics) if any. The config
names architectures by registry key and records the weights' SHA-256, so
loading never runs code (no pickle, no `torch.load`) and a modified or
truncated weights file is caught before use. Every file is written to a
temporary sibling and renamed into place, so a crash never leaves a
half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from .devices import resolve_device
from .errors import ConfigError, ModelFileError
from .model_files import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, verified_model_files
from .models import build_decoder, build_encoder_from_config, decoder_classes, encoder_classes
from .start import STARTS, build_start
from .version import gfe_version

ARRAYS = "arrays"  # the weights file's prefix for arrays that are no module's


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; POSIX only (Windows cannot open directories)."""
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_temporary(path: Path) -> Path:
    """A new empty file next to `path`, created as open() creates files (0o666
    less the umask; mkstemp gives 0o600), so that the file replacing `path` has
    ordinary permissions without reading the umask, which only setting it can."""
    while True:
        temporary = path.with_name(f".{path.stem}.{os.urandom(4).hex()}.tmp{path.suffix}")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return temporary


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path next to `path` for any writer (h5py, numpy...).

    On success the file is fsynced and renamed over `path`; if the block raises,
    the temporary file is removed and an existing `path` is left untouched. The
    temporary name keeps the suffix, since writers such as `np.save` append one
    otherwise.
    """
    path = Path(path)
    temporary = _new_temporary(path)
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    """Replace `path` with UTF-8 `text` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in chunks so large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _registered_config(module: nn.Module, registry: dict, what: str) -> dict:
    """The module's config, refusing modules the registry could not rebuild."""
    config = module.config() if hasattr(module, "config") else None
    if not isinstance(config, dict) or registry.get(config.get("type")) is not type(module):
        raise ConfigError(
            f"cannot save {what} {type(module).__name__}: only registered types "
            f"{sorted(registry)} can be saved, so that loading never imports code")
    return config


def save_model(directory, decoder: nn.Module, *, settings: dict, encoder: nn.Module | None = None,
               start: nn.Module | None = None, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Write `decoder` (and `encoder`, and the `start` map) with the `settings` used to train them.

    Named `arrays` (float32) go into the weights file too, so its digest covers
    them. The weights go first and the config, which holds their digest, last: a
    directory whose config is in place is complete. Returns the directory.
    """
    if not isinstance(settings, dict):
        raise ConfigError(f"settings must be a dict; got {type(settings).__name__}")
    try:
        json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"settings must be JSON-serialisable (no NaN or inf): {err}") from err
    modules = {"decoder": decoder, "encoder": encoder, "start": start}
    modules = {part: module for part, module in modules.items() if module is not None}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gfe_version": gfe_version(),
        "decoder": _registered_config(decoder, decoder_classes(), "decoder"),
        "encoder": None if encoder is None else _registered_config(encoder, encoder_classes(), "encoder"),
        "start": None if start is None else _registered_config(start, STARTS, "start"),
        "settings": settings,
    }
    tensors = {
        f"{part}.{name}": tensor.detach().to("cpu", torch.float32).contiguous()
        for part, module in modules.items()
        for name, tensor in module.state_dict().items()
    }
    tensors.update({f"{ARRAYS}.{name}": torch.tensor(np.asarray(array, dtype=np.float32))
                    for name, array in (arrays or {}).items()})
    weights = safetensors.torch.save(tensors, metadata={"format": "pt"})
    config["weights_sha256"] = hashlib.sha256(weights).hexdigest()

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / WEIGHTS_FILE, weights)
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2, allow_nan=False) + "\n")
    return directory


@dataclass(frozen=True)
class LoadedModel:
    """What `load_model` returns: float32 modules in eval mode plus the records."""

    decoder: nn.Module
    encoder: nn.Module | None
    settings: dict
    config: dict
    start: nn.Module | None = None  # the learned start map (models trained before it have none)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # `save_model`'s arrays


def _build(builder, config, what: str, path: Path) -> nn.Module:
    """The module the config describes, on the meta device: shapes without
    storage, so a config naming huge layers allocates nothing before its
    shapes are checked against the weights file."""
    try:
        with torch.device("meta"):
            return builder(config)
    except ConfigError as err:
        raise ModelFileError(f"{path} describes a {what} gfe cannot build: {err}") from err


def _load_weights(module: nn.Module, tensors: dict, what: str, path: Path) -> None:
    """Load tensors into `module`, naming every missing, extra or misshapen one."""
    expected = module.state_dict()
    problems = [f"missing {what}.{name}" for name in expected if name not in tensors]
    problems += [f"unexpected {what}.{name}" for name in tensors if name not in expected]
    problems += [
        f"{what}.{name} has shape {tuple(tensors[name].shape)}, expected {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in tensors and tensors[name].shape != tensor.shape
    ]
    if problems:
        raise ModelFileError(f"{path} does not match the architecture in {CONFIG_FILE}: " + "; ".join(problems))
    module.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, assign=True)


def load_model(directory, device="cpu") -> LoadedModel:
    """Read a model directory written by `save_model`, verifying it first, with
    its modules on `device` (`gfe.devices.resolve_device`): weights are saved
    from the CPU, so a model trained on any device loads on any other."""
    device = resolve_device(device)
    config, weights = verified_model_files(directory)
    config_path, weights_path = Path(directory) / CONFIG_FILE, Path(directory) / WEIGHTS_FILE
    try:
        tensors = safetensors.torch.load(weights)
    except safetensors.SafetensorError as err:
        raise ModelFileError(f"{weights_path} is not a readable safetensors file: {err}") from err

    decoder = _build(build_decoder, config["decoder"], "decoder", config_path)
    encoder = None if config["encoder"] is None else _build(
        build_encoder_from_config, config["encoder"], "encoder", config_path)
    start = None if config.get("start") is None else _build(build_start, config["start"], "start", config_path)
    if start is not None and (start.latent_dim, start.feature_shape) != (decoder.latent_dim, decoder.out_shape):
        raise ModelFileError(f"{config_path}: the start map's shapes do not match the decoder's")
    modules = {"decoder": decoder, "encoder": encoder, "start": start}
    modules = {part: module for part, module in modules.items() if module is not None}
    stray = [name for name in tensors if name.split(".", 1)[0] not in (*modules, ARRAYS)]
    if stray:
        raise ModelFileError(f"{weights_path} holds tensors for no configured model: {stray}")
    for what, module in modules.items():
        prefix = f"{what}."
        own = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
        _load_weights(module, own, what, weights_path)
        module.float().eval().to(device)
    arrays = {name[len(ARRAYS) + 1:]: t.numpy() for name, t in tensors.items() if name.startswith(f"{ARRAYS}.")}
    return LoadedModel(decoder=decoder, encoder=encoder, settings=config["settings"], config=config, start=start,
                       arrays=arrays)
