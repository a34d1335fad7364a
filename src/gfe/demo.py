"""`gfe demo`: GFE against the autoencoder on scikit-learn's embedded 8x8 digits.

Both methods train the same decoder from the same initial weights on the same
samples in the same order; GFE finds each latent by its gradient flow, the
autoencoder by a mirrored encoder. The table shows held-out loss for a few
training-set sizes (the regime GFE is for is the small one), and the figures
show reconstructions and validation loss per epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .data import load_dataset
from .losses import link
from .models import MLPDecoder
from .persist import atomic_write_text
from .plots import plot_curves, plot_reconstructions
from .samples import split
from .train import TrainConfig, Trainer

METHODS = ("gfe-amd", "ae")
LATENT_DIM = 8
HIDDEN = (64, 128)
N_TEST = 400
EPOCHS = 15


def _train(method: str, x_train, x_val, seed: int) -> Trainer:
    # x_val is the test set here: it reports each epoch, it does not choose one (keep_best=False)
    config = TrainConfig(method=method, latent_dim=LATENT_DIM, epochs=EPOCHS, batch_size=16, optimizer="adam",
                         lr=2e-3, seed=seed, keep_best=False)
    torch.manual_seed(seed)
    decoder = MLPDecoder(LATENT_DIM, x_train.shape[1:], hidden=HIDDEN)
    trainer = Trainer(config, x_train.shape[1:], decoder=decoder, progress=False)
    trainer.fit(x_train, x_val)
    return trainer


def _reconstruct(trainer: Trainer, x: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(x)
    with torch.enable_grad():
        z, _, _ = trainer.latents(xt, training=False)
    with torch.no_grad():
        return link(trainer.config.loss, trainer.decoder(z)).numpy()


def run_demo(out="gfe-demo", *, samples=(50, 200, 800), seed: int = 0, quiet: bool = False) -> dict:
    """Train both methods for each training-set size, print a table, write
    `results.json`, `reconstructions.png` and `loss_curves.png` to `out`."""
    out = Path(out)
    data = load_dataset("digits")
    x_pool, x_test = split(data.x, len(data.x) - N_TEST, N_TEST, seed=seed)
    rows, trainers = [], {}
    if not quiet:
        print(f"digits: {len(x_pool)} training candidates, {N_TEST} held out; decoder {LATENT_DIM}-"
              f"{'-'.join(map(str, HIDDEN))}-64 (ELU), {EPOCHS} epochs, batch 16, Adam", flush=True)
        print(f"{'method':>8} {'samples':>8} {'test BCE':>9} {'train s':>8} {'flow steps':>10}", flush=True)
    for n in samples:
        for method in METHODS:
            start = time.perf_counter()
            trainer = _train(method, x_pool[:n], x_test, seed)
            seconds = time.perf_counter() - start
            record = trainer.history[-1]
            rows.append({"method": method, "samples": n, "test_bce": record.val_loss, "train_seconds": seconds,
                         "flow_steps_per_sample": record.mean_steps})
            trainers[method, n] = trainer
            if not quiet:
                print(f"{method:>8} {n:>8} {record.val_loss:>9.4f} {seconds:>8.1f} {record.mean_steps:>10.1f}",
                      flush=True)
    largest = max(samples)
    smallest = min(samples)
    shown = x_test[:10]
    recon = {f"{m} (N={n})": _reconstruct(trainers[m, n], shown) for n in (smallest, largest) for m in METHODS}
    figures = [
        plot_reconstructions(shown, recon, out / "reconstructions.png",
                             title="held-out digits and their reconstructions"),
        plot_curves({f"{m} (N={n})": ([r.epoch for r in trainers[m, n].history],
                                      [r.val_loss for r in trainers[m, n].history])
                     for n in (smallest, largest) for m in METHODS},
                    out / "loss_curves.png", xlabel="epoch", ylabel="held-out BCE per pixel",
                    title="validation loss during training"),
    ]
    result = {"dataset": "digits", "n_test": N_TEST, "epochs": EPOCHS, "latent_dim": LATENT_DIM, "rows": rows}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    if not quiet:
        print(f"wrote {', '.join(str(p) for p in figures)} and {out / 'results.json'}")
    return result
