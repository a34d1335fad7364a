"""Figures people would rather look at than read: spectra overlaid with their
reconstructions and residuals, images beside their reconstructions, training
curves and latent spaces. Each `plot_*` function writes one PNG atomically and
returns its path; the `*_figure` functions build the figure (for notebooks and
tests). Figures are made without pyplot, so importing this module leaves the
caller's matplotlib backend alone and no figure stays open."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .persist import atomic_path

SPECTRA_PER_ROW = 4
PANEL = (3.3, 2.9)  # inches: a spectrum's axes with its residual's below
# inches around and between the panels, for tick labels, titles, the x label and the legend
MARGINS = {"left": 0.8, "right": 0.2, "top": 0.4, "title": 0.35, "bottom": 0.8, "between_x": 0.7, "between_y": 0.6}
MARKERS_UP_TO = 30  # epochs; longer curves are drawn as plain lines


def _save(fig: Figure, path) -> Path:
    """Write `fig` as laid out by its layout engine or fixed layout (a tight
    bounding box would draw it once more)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def is_spectrum(feature_shape: tuple) -> bool:
    """One axis longer than 1: a spectrum, whatever size-1 (channel) axes a decoder adds."""
    return sum(n > 1 for n in feature_shape) == 1


def spectra_figure(originals: np.ndarray, reconstructions: dict[str, np.ndarray], *, n: int = 8,
                   x: np.ndarray | None = None, xlabel: str | None = None, title: str | None = None,
                   stds: dict[str, np.ndarray] | None = None) -> Figure:
    """The first `n` spectra, each in its own panel with every method's
    reconstruction drawn over it, and below it the residuals (reconstruction
    minus original), on `x` (the features' coordinates, e.g. wavenumbers,
    labelled `xlabel`; by default the feature index). Each panel has its own
    scale, as spectra differ in intensity; up to four panels a row. `stds`
    (by method) draw a band of ±2 standard deviations about a reconstruction
    (`gfe decode --std`'s: from the latent's uncertainty)."""
    n = min(n, len(originals))
    originals = np.asarray(originals[:n]).reshape(n, -1)
    reconstructions = {name: np.asarray(r[:n]).reshape(n, -1) for name, r in reconstructions.items()}
    stds = {name: np.asarray(s[:n]).reshape(n, -1) for name, s in (stds or {}).items()}
    if x is None:
        x, xlabel = np.arange(originals.shape[1]), xlabel or "feature index"
    elif len(x) != originals.shape[1]:
        raise ValueError(f"x has {len(x)} values for spectra of {originals.shape[1]}")
    columns = min(n, SPECTRA_PER_ROW)
    fig, cells = _panel_grid(math.ceil(n / columns), columns, title)
    for i, original in enumerate(originals):
        shown = {name: recon[i] for name, recon in reconstructions.items()}
        top, bottom = _spectrum_panel(fig, cells[divmod(i, columns)], x, original, shown,
                                      {name: std[i] for name, std in stds.items()})
        rms = [np.sqrt(np.mean(np.square(recon - original))) for recon in shown.values()]
        top.set_title(f"sample {i}" + (f" (RMS residual {rms[0]:.3g})" if len(rms) == 1 else ""), fontsize=9)
        if i % columns == 0:
            top.set_ylabel("value")
            bottom.set_ylabel("residual")
        if i + columns >= n:
            bottom.set_xlabel(xlabel)
    handles, labels = top.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=len(handles), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.15 / fig.get_figheight(), va="top")
    return fig


def _panel_grid(rows: int, columns: int, title: str | None):
    """A figure and its grid of `PANEL`-sized cells, laid out in inches: a layout
    engine would draw the figure twice, and a tight bounding box once more."""
    m = MARGINS
    above = m["top"] + (m["title"] if title else 0)
    width = m["left"] + m["right"] + columns * PANEL[0] + (columns - 1) * m["between_x"]
    height = above + m["bottom"] + rows * PANEL[1] + (rows - 1) * m["between_y"]
    fig = Figure(figsize=(width, height))
    return fig, fig.add_gridspec(rows, columns, left=m["left"] / width, right=1 - m["right"] / width,
                                 bottom=m["bottom"] / height, top=1 - above / height,
                                 wspace=m["between_x"] / PANEL[0], hspace=m["between_y"] / PANEL[1])


def _spectrum_panel(fig: Figure, cell, x: np.ndarray, original: np.ndarray, reconstructions: dict, stds: dict):
    """One spectrum with its reconstructions (and their ±2σ bands) over it and
    their residuals below; with few ticks, as tick labels are most of the
    drawing time. Returns both axes."""
    grid = cell.subgridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    top = fig.add_subplot(grid[0])
    bottom = fig.add_subplot(grid[1], sharex=top)
    top.plot(x, original, color="black", lw=1, label="original")
    for k, (name, recon) in enumerate(reconstructions.items()):
        top.plot(x, recon, color=f"C{k}", lw=1, label=name)
        if name in stds:
            top.fill_between(x, recon - 2 * stds[name], recon + 2 * stds[name], color=f"C{k}", alpha=0.3, lw=0,
                             label=f"{name} ± 2σ (latent uncertainty)")
        bottom.plot(x, recon - original, color=f"C{k}", lw=0.8)
    bottom.axhline(0, color="0.5", lw=0.6)
    top.tick_params(labelbottom=False)
    for ax, bins in ((top, 4), (bottom, 2)):
        ax.yaxis.set_major_locator(MaxNLocator(bins))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    bottom.xaxis.set_major_locator(MaxNLocator(5))
    return top, bottom


def _show(ax, image: np.ndarray, *, vmin, vmax) -> None:
    """Draw one 2-D sample as an image (the first channel of multi-channel data):
    grey and square for pictures, a colour map for maps of other proportions."""
    image = image if image.ndim == 2 else image.reshape(-1, *image.shape[-2:])[0]
    square = 0.5 < image.shape[0] / image.shape[1] < 2
    ax.imshow(image, cmap="gray" if square else "viridis", vmin=vmin, vmax=vmax,
              aspect="equal" if square else "auto", origin="upper" if square else "lower")
    ax.set_xticks([])
    ax.set_yticks([])


def reconstructions_figure(originals: np.ndarray, reconstructions: dict[str, np.ndarray], *, n: int = 8,
                           title: str | None = None, x: np.ndarray | None = None,
                           xlabel: str | None = None, stds: dict[str, np.ndarray] | None = None) -> Figure:
    """Spectra overlaid with their reconstructions (`spectra_figure`, on `x`, with
    `stds`' bands); images and maps in rows: the first `n` originals, then each
    method's reconstructions, on one colour scale (no bands)."""
    if is_spectrum(np.shape(originals)[1:]):
        return spectra_figure(originals, reconstructions, n=n, x=x, xlabel=xlabel, title=title, stds=stds)
    n = min(n, len(originals))
    rows = {"original": originals[:n], **{name: r[:n] for name, r in reconstructions.items()}}
    vmin = min(float(r.min()) for r in rows.values())
    vmax = max(float(r.max()) for r in rows.values())
    fig = Figure(figsize=(1.3 * n, 1.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for row, (name, samples) in zip(axes, rows.items()):
        for ax, sample in zip(row, samples):
            _show(ax, np.asarray(sample), vmin=vmin, vmax=vmax)
        row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_reconstructions(originals: np.ndarray, reconstructions: dict[str, np.ndarray], path, *,
                         n: int = 8, title: str | None = None, x: np.ndarray | None = None,
                         xlabel: str | None = None, stds: dict[str, np.ndarray] | None = None) -> Path:
    """Write `reconstructions_figure` to `path`."""
    return _save(reconstructions_figure(originals, reconstructions, n=n, title=title, x=x, xlabel=xlabel,
                                        stds=stds), path)


def plot_curves(curves: dict[str, tuple], path, *, xlabel: str, ylabel: str, title: str | None = None,
                logx: bool = False) -> Path:
    """One line with markers per entry of `curves` (`name: (x, y)`)."""
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
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


def _spans_decades(values: np.ndarray) -> bool:
    """Positive values whose largest is over ten times the smallest: a log scale shows them all."""
    values = values[np.isfinite(values)]
    return len(values) > 0 and values.min() > 0 and values.max() > 10 * values.min()


def history_figure(history: dict[str, np.ndarray], *, title: str | None = None) -> Figure:
    """Training curves from a history (columns of `history.csv`): the loss per
    epoch (training and, where it was measured, validation; on a log scale when
    it spans decades, as it often falls fast at first) beside the mean flow steps
    per sample, which show how hard the latents were to find."""
    epoch = history["epoch"]
    style = {"marker": "o", "ms": 3} if len(epoch) <= MARKERS_UP_TO else {}
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    losses, steps = fig.subplots(1, 2)
    shown = [history["train_loss"]]
    losses.plot(epoch, history["train_loss"], label="training (batch encodings)", **style)
    if np.isfinite(history.get("val_loss", np.nan)).any():
        losses.plot(epoch, history["val_loss"], label="validation", **style)
        shown.append(history["val_loss"])
    if _spans_decades(np.concatenate(shown)):
        losses.set_yscale("log")
    losses.set_ylabel("mean loss per sample")
    losses.legend()
    steps.plot(epoch, history["mean_steps"], color="C2", **style)
    steps.set_ylabel("flow steps per sample")
    steps.set_ylim(bottom=0)  # a change of a tenth of a step is not a trend
    for ax in (losses, steps):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_history(history: dict[str, np.ndarray], path, *, title: str | None = None) -> Path:
    """Write `history_figure` to `path`."""
    return _save(history_figure(history, title=title), path)


def plot_latent_space(z: np.ndarray, loss: np.ndarray, path, *, title: str | None = None) -> Path:
    """Latents on their first two principal axes, coloured by each sample's
    loss, so badly reconstructed samples and clusters stand out. One-dimensional
    latents are drawn against the loss instead."""
    z = np.asarray(z, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    positive = _spans_decades(loss)
    fig = Figure(figsize=(5.2, 4.2), layout="constrained")
    ax = fig.subplots()
    if z.shape[1] == 1:
        x, y, labels = z[:, 0], loss, ("latent", "loss")
    else:
        centred = z - z.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        share = s[:2] ** 2 / max(float((s**2).sum()), np.finfo(float).tiny)
        x, y = (centred @ vt[:2].T).T
        labels = tuple(f"principal axis {i + 1} ({100 * f:.0f}% of variance)" for i, f in enumerate(share))
    points = ax.scatter(x, y, c=loss, s=10, cmap="viridis", norm=LogNorm() if positive else None,
                        edgecolors="none")
    fig.colorbar(points, ax=ax, label="loss")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if z.shape[1] == 1 and positive:
        ax.set_yscale("log")
    ax.set_title(title or f"{len(z)} latents of dimension {z.shape[1]}", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)
