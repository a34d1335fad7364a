"""Encoding cost with a trained decoder: how many decoder evaluations and seconds
each solver setting needs per sample, at what loss, and how close the whole
encoding loop runs to the decoder's own forward-plus-VJP rate and to the
machine's matrix-multiply bound, all measured in the same run.

The loss every setting is judged by is the mean per-sample loss relative to the
best one reachable (a long BFGS-metric run to a tiny gradient norm, from either
start). Settings marked "learned start" begin at the model's start map
(`gfe.start`), the others at z0 = 0.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import numpy as np
import torch

from ..cli_args import DATA_HELP
from ..data import load_dataset
from ..encode import encode
from ..errors import ConfigError
from ..losses import Loss
from ..models import MLPDecoder
from ..objective import Objective
from ..persist import load_model
from ..rows import padding
from ..samples import split
from ..train import TrainConfig, Trainer
from . import at_least, cli
from .data_efficiency import machine

SETTINGS = {
    "reference AMD (flow steps, to tau)": {"step": "flow"},
    "AMD, spectral steps": {"step": "spectral", "h_max": 1000.0, "tau": math.inf, "gtol": 1e-4},
    "AMD, BFGS metric (model default)": {"step": "bfgs"},
    "AMD, BFGS metric, gtol 3e-4": {"step": "bfgs", "gtol": 3e-4},
    "Nesterov + AMD": {"flow": "nesterov", "tau": math.inf, "gtol": 1e-4},
    "AMD, BFGS metric, learned start": {"step": "bfgs", "start": "learned"},
    "AMD, BFGS metric, learned start, gtol 3e-4": {"step": "bfgs", "gtol": 3e-4, "start": "learned"},
    "AMD, BFGS metric, learned start, gtol 5e-4": {"step": "bfgs", "gtol": 5e-4, "start": "learned"},
    "AMD, BFGS metric, learned start, 30 steps": {"step": "bfgs", "max_steps": 30, "start": "learned"},
}
BEST = {"step": "bfgs", "gtol": 1e-7, "max_steps": 3000}


def _decoder(model, dataset: str, seed: int, progress: bool, refine_start: bool = False):
    """A trained decoder, its loss and start map: the model directory given, or
    the data-efficiency protocol's GFE-AMD decoder (1,000 samples, one pass)
    trained here, with its start map refitted on converged latents of its
    training samples if `refine_start` (`Trainer.refine_start`)."""
    if model is not None:
        loaded = load_model(model)
        return loaded.decoder, loaded.settings.get("encode", {}).get("loss", "bce"), loaded.start, None
    data = load_dataset(dataset)
    x_train, _ = split(data.x, 1000, 0, seed=seed)
    torch.manual_seed(seed)
    trainer = Trainer(TrainConfig(latent_dim=20, batch_size=5, seed=seed), data.x.shape[1:],
                      decoder=MLPDecoder(20, data.x.shape[1:]), progress=progress)
    trainer.fit(x_train)
    start = time.perf_counter()
    if refine_start:
        trainer.refine_start(x_train)
    return trainer.decoder, "bce", trainer.start_map(), time.perf_counter() - start if refine_start else None


def _rate(fn, repeats: int, trials: int = 5) -> float:
    """Calls per second of `fn` after one warm-up call: the best of `trials`
    runs of `repeats` calls, since a shared machine only ever slows it down."""
    fn()
    best = math.inf
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, time.perf_counter() - start)
    return repeats / best


def _matmul_gflops(size: int = 1024) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 * _rate(lambda: a @ b, 20) / 1e9


def run(dataset: str, *, model=None, n: int = 10_000, batch: int = 4096, settings: dict | None = None,
        seed: int = 0, refine_start: bool = False, repeat: int = 1, padding_cost: bool = False,
        progress: bool = True) -> dict:
    """`repeat` encodes with each setting that many times (identical results) and
    reports the median time, since a shared machine's timings vary. `padding_cost`
    interleaves each encode with one without the row-block padding that makes
    encodings batch-invariant (`gfe.rows`) and reports the median time ratio."""
    at_least(1, n=n, batch=batch, repeat=repeat)
    if model is not None and refine_start:
        raise ConfigError("refine_start applies to the decoder this benchmark trains, not to a given model "
                          "(train that with 'gfe train --refine-start')")
    data = load_dataset(dataset)
    decoder, loss_name, start_map, refine_seconds = _decoder(model, dataset, seed, progress, refine_start)
    decoder.eval()
    x = data.x[:n]
    settings = SETTINGS if settings is None else settings
    if start_map is None:  # a model without a start map: only the settings from z0 = 0
        settings = {name: options for name, options in settings.items() if options.get("start") != "learned"}

    def run_encode(options: dict, **extra):
        options = dict(options)
        z0 = start_map if options.pop("start", "zero") == "learned" else None
        return encode(decoder, x, loss=loss_name, chunk_size=batch, z0=z0, **options, **extra)

    params = sum(p.numel() for p in decoder.parameters())
    flops_per_eval = 4 * params  # forward and input-VJP: one multiply-add per weight each

    xt = torch.from_numpy(x[:batch])
    objective = Objective(decoder, Loss(loss_name))
    zeros = torch.zeros(len(xt), decoder.latent_dim)
    decoder_rate = len(xt) * _rate(lambda: objective.value_and_grad(zeros, xt), 5)
    matmul = _matmul_gflops()

    starts = ("zero", "learned") if start_map is not None else ("zero",)
    best_loss = min(float(run_encode({**BEST, "start": start}).loss.mean()) for start in starts)
    rows = []
    for name, options in settings.items():
        times, unpadded = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            enc = run_encode(options, progress=progress)
            times.append(time.perf_counter() - start)
            if padding_cost:
                with padding(False):
                    start = time.perf_counter()
                    run_encode(options, progress=progress)
                    unpadded.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        evals = float(enc.nfe.sum())
        rows.append({
            "setting": name, "options": options, "samples": len(x), "seconds": seconds, "seconds_each": times,
            "ms_per_sample": 1e3 * seconds / len(x), "samples_per_second": len(x) / seconds,
            "mean_loss": float(enc.loss.mean()), "loss_over_best": float(enc.loss.mean()) / best_loss - 1,
            "mean_nfe": evals / len(x), "p95_nfe": float(np.percentile(enc.nfe.numpy(), 95)),
            "mean_steps": float(enc.steps.float().mean()), "status": enc.status_counts(),
            "evals_per_second": evals / seconds, "of_decoder_rate": evals / seconds / decoder_rate,
            "gflops": evals * flops_per_eval / seconds / 1e9,
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })
        if padding_cost:
            rows[-1].update(unpadded_seconds_each=unpadded, padded_over_unpadded=seconds / float(np.median(unpadded)))
        if progress:
            r = rows[-1]
            print(f"{name:>44}: loss {r['mean_loss']:.5f} ({100 * r['loss_over_best']:+.2f}% of best), "
                  f"{r['mean_nfe']:7.1f} evals/sample (p95 {r['p95_nfe']:.0f}), {r['ms_per_sample']:.2f} ms/sample, "
                  f"{100 * r['of_decoder_rate']:.0f}% of the decoder's rate"
                  + (f", {r['padded_over_unpadded']:.3f}× the unpadded time" if padding_cost else ""), flush=True)
    return {
        "benchmark": "encode", "dataset": data.name, "model": None if model is None else str(model),
        "refine_start": refine_start, "refine_start_seconds": refine_seconds, "repeat": repeat,
        "padding_cost": padding_cost,
        "samples": len(x), "batch": batch, "decoder_parameters": params, "best_loss": best_loss,
        "best_options": BEST, "decoder_evals_per_second": decoder_rate,
        "decoder_gflops": decoder_rate * flops_per_eval / 1e9, "matmul_gflops": matmul,
        "machine": machine(),
        "results": rows,
    }


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "encode", "encoding cost per sample of each solver setting, against the decoder's own rate",
        "Encode N samples with a trained decoder (--model, or the data-efficiency protocol's GFE-AMD decoder "
        "trained here on 1,000 samples) under several solver settings; report seconds, decoder evaluations per "
        "sample (mean, p95), loss relative to the best reachable, and the share of the decoder's own "
        "forward-plus-VJP rate and of the matmul bound.")
    q.add_argument("--dataset", default="mnist", help=DATA_HELP)
    q.add_argument("--model", type=Path, default=None, help="model directory written by 'gfe train'")
    q.add_argument("--n", type=int, default=10_000, help="samples to encode")
    q.add_argument("--batch", type=int, default=4096, help="samples per solver call")
    q.add_argument("--refine-start", action="store_true",
                   help="refit the trained decoder's start map on converged latents of its 1,000 training samples "
                        "first (as 'gfe train --refine-start' does)")
    q.add_argument("--only", default=None, metavar="TEXT",
                   help="run only the settings whose name contains TEXT, e.g. 'learned start'")
    q.add_argument("--repeat", type=int, default=1,
                   help="encode with each setting this many times (identical results) and report the median time")
    q.add_argument("--padding-cost", action="store_true",
                   help="also time each encode without the row-block padding that makes encodings bit-identical "
                        "in any batch (gfe.rows), interleaved, and report the median time ratio")
    cli.add_result_options(q)
    q.set_defaults(run=_command)


def _command(args) -> None:
    settings = None
    if args.only is not None:
        settings = {name: options for name, options in SETTINGS.items() if args.only in name}
        if not settings:
            raise ConfigError(f"no encode benchmark setting's name contains {args.only!r}; the settings are: "
                              + "; ".join(SETTINGS))
    result = run(args.dataset, model=args.model, n=args.n, batch=args.batch, settings=settings,
                 refine_start=args.refine_start, repeat=args.repeat, padding_cost=args.padding_cost,
                 progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)
