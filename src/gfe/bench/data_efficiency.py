"""Test loss against the number of training samples seen (DESIGN §5).

Protocol: one pass over N training samples, batch 5, RMSprop lr 5e-4, BCE; the
test loss is the mean per-pixel BCE of held-out images encoded from z0 = 0 (the
autoencoder uses its encoder). Every method sees the same samples in the same
order and starts from the same decoder weights.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch

from ..data import load_dataset, split
from ..models import MLPDecoder, default_decoder
from ..train import METHODS, TrainConfig, Trainer

# Training encodes loosely (the approximate gradient only needs nearby latents);
# evaluation encodes to the solver's defaults.
TRAIN_ENCODE = {"gtol": 1e-3, "h_max": 100.0, "grow": 1.5}


def _decoder(shape: tuple[int, ...], latent_dim: int, seed: int):
    torch.manual_seed(seed)
    if shape in ((28, 28), (784,)):
        return MLPDecoder(latent_dim, shape)  # the paper's MNIST preset
    return default_decoder(shape, latent_dim)


def machine() -> dict:
    """Where a benchmark ran, stored with its numbers."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}


def run(
    dataset: str,
    methods: list[str],
    samples: list[int],
    *,
    n_test: int = 1000,
    latent_dim: int = 20,
    batch_size: int = 5,
    lr: float = 5e-4,
    seed: int = 0,
    train_encode: dict | None = None,
    progress: bool = True,
) -> dict:
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    data = load_dataset(dataset)
    x_train_all, x_test = split(data.x, max(samples), n_test, seed=seed)
    train_encode = TRAIN_ENCODE if train_encode is None else train_encode
    results = []
    for n in samples:
        for method in methods:
            config = TrainConfig(method=method, latent_dim=latent_dim, batch_size=batch_size,
                                 optimizer="rmsprop", lr=lr, seed=seed,
                                 encode_options=train_encode if method != "ae" else {})
            decoder = _decoder(tuple(data.x.shape[1:]), latent_dim, seed)
            trainer = Trainer(config, data.x.shape[1:], decoder=decoder, progress=progress)
            start = time.perf_counter()
            record = trainer.fit(x_train_all[:n])[-1]
            train_seconds = time.perf_counter() - start
            start = time.perf_counter()
            test_loss = trainer.evaluate(x_test)
            encode_seconds = time.perf_counter() - start
            row = {"method": method, "samples": n, "test_loss": test_loss, "train_seconds": train_seconds,
                   "test_encode_seconds": encode_seconds, "train_mean_steps": record.mean_steps,
                   "train_mean_nfe": record.mean_nfe, "train_loss": record.train_loss}
            results.append(row)
            if progress:
                print(f"{method:>13} N={n:<6} test BCE {test_loss:.4f}  train {train_seconds:7.2f} s  "
                      f"steps/sample {record.mean_steps:6.1f}  test encode {encode_seconds:.1f} s", flush=True)
    return {
        "benchmark": "data-efficiency",
        "dataset": data.name, "n_test": n_test, "latent_dim": latent_dim, "batch_size": batch_size,
        "optimizer": "rmsprop", "lr": lr, "seed": seed, "train_encode_options": train_encode,
        "machine": machine(),
        "results": results,
    }
