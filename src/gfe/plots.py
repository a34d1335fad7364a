"""Figures people would rather look at than read: reconstructions beside
originals, and loss curves. Each function writes one PNG atomically and returns
its path; matplotlib runs headless (Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .persist import atomic_path  # noqa: E402


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _show(ax, sample: np.ndarray, *, vmin, vmax) -> None:
    """Draw one sample the natural way: a line for 1-D spectra, an image for
    2-D maps (the first channel of multi-channel data)."""
    if sample.ndim == 1:
        ax.plot(sample, lw=1)
        ax.set_ylim(vmin, vmax)
        ax.set_xticks([])
        return
    image = sample if sample.ndim == 2 else sample.reshape(-1, *sample.shape[-2:])[0]
    square = 0.5 < image.shape[0] / image.shape[1] < 2
    ax.imshow(image, cmap="gray" if square else "viridis", vmin=vmin, vmax=vmax,
              aspect="equal" if square else "auto", origin="upper" if square else "lower")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reconstructions(originals: np.ndarray, reconstructions: dict[str, np.ndarray], path, *,
                         n: int = 8, title: str | None = None) -> Path:
    """Row 1 the first `n` originals, then one row per method's reconstructions."""
    n = min(n, len(originals))
    rows = {"original": originals[:n], **{name: r[:n] for name, r in reconstructions.items()}}
    vmin = min(float(r.min()) for r in rows.values())
    vmax = max(float(r.max()) for r in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.3 * len(rows)), squeeze=False)
    for row, (name, samples) in zip(axes, rows.items()):
        for ax, sample in zip(row, samples):
            _show(ax, np.asarray(sample), vmin=vmin, vmax=vmax)
        row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_curves(curves: dict[str, tuple], path, *, xlabel: str, ylabel: str, title: str | None = None,
                logx: bool = False) -> Path:
    """One line with markers per entry of `curves` (`name: (x, y)`)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
