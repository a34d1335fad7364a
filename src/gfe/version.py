"""The installed gfe's version, apart from the modules that need PyTorch, so
that `gfe --version` answers without importing it."""

from __future__ import annotations


def gfe_version() -> str:
    from importlib import metadata  # tens of milliseconds to import: only when asked

    try:
        return metadata.version("gfe")
    except metadata.PackageNotFoundError:
        return "unknown"
