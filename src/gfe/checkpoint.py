"""The checkpoint format of a training run.

After every epoch a checkpoint directory is written completely (the model, the
optimizer's state and the trainer's history and running statistics) and only then
named in `latest.json` (an atomic replace), so a killed run resumes from its last
complete epoch. `latest.json` records the SHA-256 of every file of the checkpoint,
verified before resuming, so a corrupted or edited checkpoint is refused rather
than silently continued.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch

from .errors import GFEError, ModelFileError
from .persist import atomic_path, atomic_write_text, file_sha256

LATEST = "latest.json"
CHECKPOINT_FORMAT = "gfe-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILES = ("config.json", "weights.safetensors", "optimizer.safetensors", "trainer.json")


def write_checkpoint(directory, epoch: int, save_model: Callable[[Path], object], states: dict[str, dict],
                     records: dict) -> Path:
    """Write epoch `epoch`'s checkpoint into `directory` and point `latest.json` at it.

    `save_model(target)` writes the model directory; `states` are (nested) state
    dicts whose tensors go to one safetensors file; `records` is JSON. Older
    checkpoints are removed once the new one is named."""
    directory = Path(directory)
    name = f"epoch-{epoch:05d}"
    target = directory / name
    if target.exists():
        shutil.rmtree(target)
    save_model(target)
    tensors, layouts = {}, {}
    for key, state in states.items():
        part, layouts[key] = _flatten_state(state, prefix=None if key == "optimizer" else key)
        tensors.update(part)
    with atomic_path(target / "optimizer.safetensors") as tmp:
        safetensors.torch.save_file(tensors, str(tmp))
    atomic_write_text(target / "trainer.json", json.dumps({**layouts, **records}, indent=1))
    digests = {file: file_sha256(target / file) for file in CHECKPOINT_FILES}
    atomic_write_text(directory / LATEST, json.dumps({
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "checkpoint": name, "sha256": digests}))
    for old in directory.glob("epoch-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def read_checkpoint(directory, state_keys: tuple[str, ...]) -> tuple[Path, dict, dict]:
    """The last complete checkpoint in `directory`, verified: its folder (a model
    directory), the state dicts among `state_keys` that it holds, and its JSON records."""
    target = verified_checkpoint(Path(directory))
    try:
        records = json.loads((target / "trainer.json").read_text())
        tensors = safetensors.torch.load_file(str(target / "optimizer.safetensors"))
        states = {key: _unflatten_state(tensors, records.pop(key)) for key in state_keys if key in records}
    except GFEError:
        raise
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as err:
        raise ModelFileError(f"checkpoint {target} cannot be read: {err!r}") from err
    return target, states, records


def verified_checkpoint(directory: Path) -> Path:
    """The checkpoint directory `latest.json` names, after checking its format
    and the digest of every file in it."""
    latest = directory / LATEST
    if not latest.is_file():
        raise ModelFileError(f"no usable checkpoint in {directory}: {LATEST} is missing")
    try:
        record = json.loads(latest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{latest} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{latest} is not a gfe checkpoint record (format {CHECKPOINT_FORMAT!r})")
    if record.get("format_version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"{latest} has format_version {record.get('format_version')!r}; "
                             f"this gfe reads {CHECKPOINT_VERSION}")
    name, digests = record.get("checkpoint"), record.get("sha256")
    if not isinstance(name, str) or not re.fullmatch(r"epoch-\d+", name) or not isinstance(digests, dict):
        raise ModelFileError(f"{latest} must name a checkpoint epoch-N and the sha256 of its files")
    target = directory / name
    for file in CHECKPOINT_FILES:
        path = target / file
        if not path.is_file():
            raise ModelFileError(f"checkpoint {target} lacks {file}")
        if file_sha256(path) != digests.get(file):
            raise ModelFileError(f"{path} does not match the sha256 digest recorded in {latest}: "
                                 "the file was modified or corrupted")
    return target


def _flatten_state(state: dict, prefix: str | None = None) -> tuple[dict, dict]:
    """Split a (nested) state dict into tensors (for safetensors, keys under
    `prefix`) and JSON."""
    tensors = {}

    def walk(obj, path):
        if isinstance(obj, torch.Tensor):
            key = "/".join(path)
            tensors[key] = obj.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(obj, dict):
            return {"__dict__": [[k, walk(v, path + [str(k)])] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, path + [str(i)]) for i, v in enumerate(obj)]
        return obj

    return tensors, walk(state, [] if prefix is None else [prefix])


def _unflatten_state(tensors: dict, layout) -> dict:
    def walk(obj):
        if isinstance(obj, dict) and "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj["__dict__"]}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(layout)
