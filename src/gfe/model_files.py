"""A model directory's files read and verified without PyTorch: its JSON config,
checked, and its weights' bytes, checked against the digest the config records.
`gfe.persist.load_model` builds the modules from them; `gfe info` needs the
config alone, so it answers without importing PyTorch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import ModelFileError

FORMAT = "gfe-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
_REQUIRED_KEYS = ("format", "format_version", "decoder", "encoder", "settings", "weights_sha256")


def read_config(path: Path) -> dict:
    """The JSON object in a model's `config.json`, with the keys and format gfe reads."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ModelFileError(f"{path} must hold a JSON object; got {type(config).__name__}")
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    if missing:
        raise ModelFileError(f"{path} lacks the keys {missing}")
    if config["format"] != FORMAT:
        raise ModelFileError(f"{path} is not a gfe model: format is {config['format']!r}, not {FORMAT!r}")
    if config["format_version"] != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format_version {config['format_version']!r}; this gfe reads {FORMAT_VERSION}")
    if not isinstance(config["settings"], dict):
        raise ModelFileError(f"{path}: settings must be a JSON object")
    return config


def verified_model_files(directory) -> tuple[dict, bytes]:
    """`(config, weights bytes)` of a model directory, the config checked and the
    weights' SHA-256 matched against it; `ModelFileError` otherwise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFileError(f"no model directory at {directory}")
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelFileError(f"{directory} has no {path.name}; is it a gfe model directory?")
    config = read_config(config_path)
    weights = weights_path.read_bytes()  # read once: hash and parse the same bytes
    digest = hashlib.sha256(weights).hexdigest()
    if digest != config["weights_sha256"]:
        raise ModelFileError(
            f"{weights_path} does not match the sha256 digest recorded in {CONFIG_FILE} "
            f"(expected {config['weights_sha256']}, got {digest}): the file was modified or corrupted")
    return config, weights
