"""Encoding cost with trained decoders: how many decoder evaluations and seconds
each solver setting needs per sample, at what loss, and how close the whole
encoding loop runs to the decoder's own forward-plus-VJP rate and to the
machine's matrix-multiply bound, all measured in the same run; for model
directories also `gfe encode`'s time against `gfe.GFE.transform`'s on the same
samples (repeats interleaved).

The loss every setting is judged by is the mean per-sample loss relative to the
best one reachable (a long BFGS-metric run to a tiny gradient norm, from either
start). Settings marked "learned start" begin at the model's start map
(`gfe.start`), the others at z0 = 0. A model's samples are prepared as
`gfe encode` prepares them (its channels, normalisation, standardisation, mask).
"""

from __future__ import annotations

import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..cli_args import DATA_HELP, DEVICE_HELP
from ..data import load_dataset, open_samples
from ..devices import device_record, resolve_device, synchronize
from ..encode import encode, threads_for_rows
from ..encode_settings import EncodeSettings
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
    "AMD, BFGS metric, learned start, gtol 1e-3": {"step": "bfgs", "gtol": 1e-3, "start": "learned"},
    "AMD, BFGS metric, learned start, 10 steps": {"step": "bfgs", "max_steps": 10, "start": "learned"},
    "AMD, BFGS metric, learned start, 30 steps": {"step": "bfgs", "max_steps": 30, "start": "learned"},
}
BEST = {"step": "bfgs", "gtol": 1e-7, "max_steps": 3000}


def _protocol_decoder(dataset: str, seed: int, progress: bool, refine_start: bool):
    """The data-efficiency protocol's GFE-AMD decoder (1,000 samples, one pass)
    trained here, its loss and start map, with the start map refitted on
    converged latents of its training samples if `refine_start`
    (`Trainer.refine_start`), and the seconds that took."""
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


def _model_samples(model, dataset: str, n: int):
    """The first `n` samples of `dataset` as read from disk, and as the model in
    directory `model` sees them (`gfe encode`'s preparation), with its mask and axis."""
    from ..workflows import model_input  # here: the workflows load gfe.ins, which `gfe --help` need not

    loaded = load_model(model)
    with open_samples(dataset) as samples:
        inputs = model_input(loaded, samples, EncodeSettings.of_model(loaded))
        raw = samples.read(slice(0, n))
        x, _ = inputs.prepare(raw)
        return loaded, raw, x, inputs.mask, samples.on_disk.axis


def _cli_against_estimator(model, raw, axis, repeat: int, device: torch.device) -> dict:
    """Seconds of `gfe encode` (`workflows.encode_file`: read, prepare, encode and
    write the raw samples) and of `gfe.GFE.load(model).transform` on the same raw
    samples (which it prepares as `gfe encode` does), repeats interleaved;
    `transform_over_encode` is the ratio of medians; `latents_equal`, whether the
    two gave bit-identical latents."""
    from ..estimator import GFE  # here: scikit-learn takes seconds to import, which `gfe --help` need not
    from ..workflows import encode_file

    estimator = GFE.load(model, device=device)
    times: dict[str, list[float]] = {"gfe_encode": [], "transform": []}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "samples.npz"
        np.savez(data, x=raw, **({} if axis is None else {"axis": axis}))
        for _ in range(repeat):
            for name, call in (("gfe_encode", lambda: encode_file(model, data, Path(folder) / "z.npy", quiet=True,
                                                                       device=device)),
                               ("transform", lambda: estimator.transform(raw.reshape(len(raw), -1)))):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        equal = np.array_equal(np.load(Path(folder) / "z.npy"), estimator.transform(raw.reshape(len(raw), -1)))
    medians = {name: float(np.median(t)) for name, t in times.items()}
    return {"samples": len(raw), "latents_equal": equal, "seconds_each": times, "seconds": medians,
            "ms_per_sample": {name: 1e3 * t / len(raw) for name, t in medians.items()},
            "transform_over_encode": medians["transform"] / medians["gfe_encode"]}


def _rate(fn, repeats: int, device: torch.device, trials: int = 5) -> float:
    """Calls per second of `fn` on `device` after one warm-up call: the best of
    `trials` runs of `repeats` calls, since a shared machine only ever slows it down."""
    fn()
    best = math.inf
    for _ in range(trials):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return repeats / best


def _matmul_gflops(device: torch.device, size: int = 1024) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size**3 * _rate(lambda: a @ b, 20, device) / 1e9


def run(dataset: str, *, model=None, n: int = 10_000, batch: int = 4096, settings: dict | None = None,
        seed: int = 0, refine_start: bool = False, repeat: int = 1, padding_cost: bool = False, device="cpu",
        progress: bool = True) -> dict:
    """`model` is a model directory or a list of them (each benchmarked on the
    same samples), or None for the protocol's decoder trained here (on the CPU,
    the same one whatever `device`). Encoding runs on `device`. `repeat`
    encodes with each setting that many times (identical results) and reports
    the median time, since a shared machine's timings vary. `padding_cost`
    interleaves each encode with one without the row-block padding that makes
    encodings batch-invariant (`gfe.rows`) and reports the median time ratio."""
    at_least(1, n=n, batch=batch, repeat=repeat)
    device = resolve_device(device)
    models = [model] if model is None or isinstance(model, (str, Path)) else list(model)
    if models != [None] and refine_start:
        raise ConfigError("refine_start applies to the decoder this benchmark trains, not to a given model "
                          "(train that with 'gfe train --refine-start')")
    blocks = [_run_model(dataset, m, n=n, batch=batch, settings=SETTINGS if settings is None else settings,
                         seed=seed, refine_start=refine_start, repeat=repeat, padding_cost=padding_cost,
                         device=device, progress=progress)
              for m in models]
    return {"benchmark": "encode", "dataset": dataset, "refine_start": refine_start, "repeat": repeat, "batch": batch,
            "padding_cost": padding_cost,
            "best_options": BEST, "matmul_gflops": _matmul_gflops(device),
            "machine": {**machine(), **device_record(device)}, "models": blocks}


def _run_model(dataset: str, model, *, n, batch, settings, seed, refine_start, repeat, padding_cost, device,
               progress) -> dict:
    """One decoder's block of `run`'s result."""
    cli_against_estimator = None
    if model is None:
        decoder, loss_name, start_map, refine_seconds = _protocol_decoder(dataset, seed, progress, refine_start)
        x, weights = load_dataset(dataset).x[:n], None
    else:
        loaded, raw, x, weights, axis = _model_samples(model, dataset, n)
        decoder, start_map, refine_seconds = loaded.decoder, loaded.start, None
        loss_name = EncodeSettings.of_model(loaded).loss
        cli_against_estimator = _cli_against_estimator(model, raw, axis, repeat, device)
    decoder.eval().to(device)
    start_map = None if start_map is None else start_map.to(device)
    if start_map is None:  # a model without a start map: only the settings from z0 = 0
        settings = {name: options for name, options in settings.items() if options.get("start") != "learned"}

    def run_encode(options: dict, **extra):
        options = dict(options)
        z0 = start_map if options.pop("start", "zero") == "learned" else None
        return encode(decoder, x, loss=loss_name, chunk_size=batch, z0=z0, weights=weights, **options, **extra)

    params = sum(p.numel() for p in decoder.parameters())
    flops_per_eval = 4 * params  # forward and input-VJP: one multiply-add per weight each (for an MLP)

    xt = torch.from_numpy(x[:batch]).to(device)
    objective = Objective(decoder, Loss(loss_name))
    zeros = torch.zeros(len(xt), decoder.latent_dim, device=device)
    with threads_for_rows(len(xt)):  # the threads the encoding loop uses for such a batch
        decoder_rate = len(xt) * _rate(lambda: objective.value_and_grad(zeros, xt), 5, device)

    starts = ("zero", "learned") if start_map is not None else ("zero",)
    best_loss = min(float(run_encode({**BEST, "start": start}).loss.mean()) for start in starts)
    rows = []
    for name, options in settings.items():
        times, unpadded = [], []
        for _ in range(repeat):
            synchronize(device)
            start = time.perf_counter()
            enc = run_encode(options, progress=progress)
            synchronize(device)
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
            "mean_nfe": evals / len(x), "p95_nfe": float(np.percentile(enc.nfe.cpu().numpy(), 95)),
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
    if progress and cli_against_estimator is not None:
        ms = cli_against_estimator["ms_per_sample"]
        print(f"{'gfe encode vs GFE.transform':>44}: {ms['gfe_encode']:.2f} vs {ms['transform']:.2f} ms/sample "
              f"(ratio {cli_against_estimator['transform_over_encode']:.2f}; latents "
              f"{'bit-identical' if cli_against_estimator['latents_equal'] else 'differ'})", flush=True)
    return {
        "model": None if model is None else str(model), "decoder": decoder.config()["type"],
        "decoder_config": decoder.config(), "loss": loss_name, "refine_start_seconds": refine_seconds,
        "samples": len(x), "decoder_parameters": params, "best_loss": best_loss,
        "decoder_evals_per_second": decoder_rate, "decoder_gflops": decoder_rate * flops_per_eval / 1e9,
        "gfe_encode_against_transform": cli_against_estimator, "results": rows,
    }


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "encode", "encoding cost per sample of each solver setting, against the decoder's own rate",
        "Encode N samples with a trained decoder (--model, or the data-efficiency protocol's GFE-AMD decoder "
        "trained here on 1,000 samples) under several solver settings; report seconds, decoder evaluations per "
        "sample (mean, p95), loss relative to the best reachable, and the share of the decoder's own "
        "forward-plus-VJP rate and of the matmul bound; for each --model also the seconds of 'gfe encode' "
        "(read, prepare, encode, write) against gfe.GFE.transform's on the same samples.")
    q.add_argument("--dataset", default="mnist", help=DATA_HELP)
    q.add_argument("--model", type=Path, action="append", default=None,
                   help="model directory written by 'gfe train'; give it once per model to compare decoders "
                        "(say one trained with --decoder mlp and one with --decoder conv1d) on the same samples, "
                        "which are prepared as 'gfe encode' prepares them")
    q.add_argument("--n", type=int, default=10_000, help="samples to encode")
    q.add_argument("--batch", type=int, default=4096, help="samples per solver call")
    q.add_argument("--refine-start", action="store_true",
                   help="refit the trained decoder's start map on converged latents of its 1,000 training samples "
                        "first (as 'gfe train --refine-start' does)")
    q.add_argument("--only", default=None, metavar="TEXT",
                   help="run only the settings whose name contains TEXT, e.g. 'learned start'")
    q.add_argument("--repeat", type=int, default=1,
                   help="encode with each setting this many times (identical results) and report the median time")
    q.add_argument("--device", default="cpu", help=DEVICE_HELP + "; the decoder this benchmark trains is trained "
                                                               "on the CPU either way")
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
                 device=args.device, progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)
