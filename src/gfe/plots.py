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
        for ax in row[1:]:
            ax.tick_params(labelleft=False)  # spectra share one scale, labelled once per row
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


def plot_history(history: dict[str, np.ndarray], path, *, title: str | None = None) -> Path:
    """Training curves from a history (columns of `history.csv`): the loss per
    epoch (training and, where it was measured, validation) beside the mean
    flow steps per sample, which show how hard the latents were to find."""
    epoch = history["epoch"]
    fig, (losses, steps) = plt.subplots(1, 2, figsize=(9, 3.4))
    losses.plot(epoch, history["train_loss"], marker="o", ms=3, label="training (batch encodings)")
    if np.isfinite(history.get("val_loss", np.nan)).any():
        losses.plot(epoch, history["val_loss"], marker="o", ms=3, label="validation")
    losses.set_ylabel("mean loss per sample")
    losses.legend()
    steps.plot(epoch, history["mean_steps"], marker="o", ms=3, color="C2")
    steps.set_ylabel("flow steps per sample")
    for ax in (losses, steps):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_latent_space(z: np.ndarray, loss: np.ndarray, path, *, title: str | None = None) -> Path:
    """Latents on their first two principal axes, coloured by each sample's
    loss, so badly reconstructed samples and clusters stand out. One-dimensional
    latents are drawn against the loss instead."""
    z = np.asarray(z, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    positive = loss.min() > 0 and loss.max() > 10 * loss.min()
    norm = matplotlib.colors.LogNorm() if positive else None
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    if z.shape[1] == 1:
        x, y, labels = z[:, 0], loss, ("latent", "loss")
    else:
        centred = z - z.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        share = s[:2] ** 2 / max(float((s**2).sum()), np.finfo(float).tiny)
        x, y = (centred @ vt[:2].T).T
        labels = tuple(f"principal axis {i + 1} ({100 * f:.0f}% of variance)" for i, f in enumerate(share))
    points = ax.scatter(x, y, c=loss, s=10, cmap="viridis", norm=norm, edgecolors="none")
    fig.colorbar(points, ax=ax, label="loss")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if z.shape[1] == 1 and positive:
        ax.set_yscale("log")
    ax.set_title(title or f"{len(z)} latents of dimension {z.shape[1]}", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)
