"""Test loss against the number of training samples seen (DESIGN §5).

Protocol: one pass over N training samples, batch 5, RMSprop lr 5e-4, BCE; the
test loss is the mean per-pixel BCE of held-out images encoded from z0 = 0 (the
autoencoder uses its encoder). Every method sees the same samples in the same
order and starts from the same decoder weights. With `encode_ahead` > 1 the GFE
methods encode that many batches per flow call (`TrainConfig.encode_ahead`);
the decoder still takes one update per batch of 5. `repeat` trains each
setting several times, interleaving the methods, and reports the median time and
the median ratio to the autoencoder's time in the same repeat, since a shared
machine's timings vary (docs/benchmarks.md); the runs themselves are identical.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch

from ..cli_args import DATA_HELP, DEVICE_HELP, int_list, json_dict
from ..data import load_dataset
from ..devices import device_record, resolve_device, synchronize
from ..encode import encode
from ..methods import METHODS
from ..models import MLPDecoder, default_decoder
from ..samples import split
from ..start import START_MODES
from ..train import Trainer
from ..train_config import TrainConfig
from . import at_least, cli, known


def _decoder(shape: tuple[int, ...], latent_dim: int, seed: int):
    torch.manual_seed(seed)
    if shape in ((28, 28), (784,)):
        return MLPDecoder(latent_dim, shape)  # the paper's MNIST preset
    return default_decoder(shape, latent_dim)


def _steps_over_training(batch_log, windows: int = 10) -> list[dict]:
    """Mean flow steps and evaluations per sample in `windows` equal stretches of the pass."""
    log = np.array([row[1:] for row in batch_log], dtype=float)  # samples, steps, evaluations
    rows = []
    for part in np.array_split(log, min(windows, len(log))):
        seen = float(part[:, 0].sum())
        rows.append({"samples": int(seen), "mean_steps": float(part[:, 1].sum()) / seen,
                     "mean_nfe": float(part[:, 2].sum()) / seen})
    return rows


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
    encode_options: dict | None = None,
    start: str = "learned",
    encode_ahead: int = 1,
    repeat: int = 1,
    device="cpu",
    reference_amd: bool = True,
    progress: bool = True,
) -> dict:
    """Each decoder is built on the CPU (the same initial weights whatever
    `device`) and trained and tested on `device`."""
    known("methods", methods, METHODS)
    at_least(1, samples=samples, n_test=n_test, encode_ahead=encode_ahead, repeat=repeat)
    device = resolve_device(device)
    data = load_dataset(dataset)
    x_train_all, x_test = split(data.x, max(samples), n_test, seed=seed)
    results = []
    for n in samples:
        configs = {method: TrainConfig(method=method, latent_dim=latent_dim, batch_size=batch_size,
                                       optimizer="rmsprop", lr=lr, seed=seed,
                                       encode_options=(encode_options or {}) if method != "ae" else {}, start=start,
                                       encode_ahead=encode_ahead if method != "ae" else 1)
                   for method in methods}
        seconds = {method: [] for method in methods}
        trained = {}
        for _ in range(repeat):  # the same runs each time, interleaved so that load changes hit every method alike
            for method, config in configs.items():
                decoder = _decoder(tuple(data.x.shape[1:]), latent_dim, seed).to(device)
                trainer = Trainer(config, data.x.shape[1:], decoder=decoder, progress=progress)
                began = time.perf_counter()
                record = trainer.fit(x_train_all[:n])[-1]
                synchronize(device)
                seconds[method].append(time.perf_counter() - began)
                trained[method] = trainer, record
        rows = [_evaluate(method, configs[method], *trained[method], seconds[method], x_test, reference_amd,
                          device, progress)
                for method in methods]
        if "ae" in seconds:
            for row in rows:  # each repeat's pair ran back to back: their ratio is steadier than either time
                row["train_seconds_over_ae"] = float(np.median(np.divide(seconds[row["method"]], seconds["ae"])))
        results += rows
    return {
        "benchmark": "data-efficiency",
        "dataset": data.name, "n_test": n_test, "latent_dim": latent_dim, "batch_size": batch_size,
        "optimizer": "rmsprop", "lr": lr, "seed": seed, "start": start, "encode_ahead": encode_ahead,
        "repeat": repeat, "reference_amd": reference_amd,
        "machine": {**machine(), **device_record(device)},
        "results": results,
    }


def _evaluate(method, config, trainer, record, seconds, x_test, reference_amd: bool, device, progress: bool) -> dict:
    """One method's row: its training times and statistics, and the test loss of its last trained model."""
    train_seconds = float(np.median(seconds))
    began = time.perf_counter()
    test_loss = trainer.evaluate(x_test)
    synchronize(device)
    encode_seconds = time.perf_counter() - began
    row = {"method": method, "samples": record.samples, "test_loss": test_loss, "train_seconds": train_seconds,
           "train_seconds_each": seconds,
           "test_encode_seconds": encode_seconds, "train_mean_steps": record.mean_steps,
           "train_mean_nfe": record.mean_nfe, "train_loss": record.train_loss,
           "encode_options": trainer.config.flow_options(training=True) if config.is_gfe else None,
           "test_encode_options": trainer.settings()["encode"]}
    if config.is_gfe:
        row["steps_over_training"] = _steps_over_training(trainer.batch_log)
    if method == "gfe-amd" and reference_amd:  # the reference's own test encoding: AMD's gradient steps, to tau
        reference = encode(trainer.decoder, x_test, **{**trainer.settings()["encode"], "step": "flow"})
        row["test_loss_reference_amd"] = float(reference.loss.mean())
        row["test_nfe_reference_amd"] = float(reference.nfe.float().mean())
    if progress:
        print(f"{method:>13} N={record.samples:<6} test BCE {test_loss:.4f}  train {train_seconds:7.2f} s (median)  "
              f"steps/sample {record.mean_steps:6.1f}  test encode {encode_seconds:.1f} s", flush=True)
    return row


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "data-efficiency", "test loss against training samples seen (DESIGN §5)",
        "One pass over N training samples, batch 5, RMSprop lr 5e-4, BCE; test loss = mean per-pixel BCE of "
        "held-out samples encoded from z0 = 0 (the autoencoder uses its encoder).")
    q.add_argument("--dataset", default="mnist", help=DATA_HELP)
    q.add_argument("--methods", default="gfe-amd,ae", help="comma-separated training methods")
    q.add_argument("--samples", type=int_list, default=[100, 1000], help="training-set sizes")
    q.add_argument("--n-test", type=int, default=1000, help="held-out samples")
    q.add_argument("--encode-options", type=json_dict, default=None,
                   help="JSON options for the GFE methods' flows during training, e.g. '{\"max_steps\": 30}'")
    q.add_argument("--start", default="learned", choices=list(START_MODES),
                   help="where the GFE methods' training flows begin (the test encoding starts at 0 either way)")
    q.add_argument("--encode-ahead", type=int, default=1, metavar="K",
                   help="the GFE methods encode K batches per flow call (see 'gfe train --help')")
    q.add_argument("--repeat", type=int, default=1,
                   help="train each setting this many times (the runs are identical) and report the median "
                        "training time and each one, as a shared machine's timings vary; the repeats of all "
                        "methods are interleaved, and each method's median time over the autoencoder's in the "
                        "same repeat is reported when 'ae' is among the methods")
    q.add_argument("--no-reference-amd", dest="reference_amd", action="store_false",
                   help="skip re-encoding gfe-amd's test samples with the reference's AMD steps to tau = 1e4 "
                        "(about 1,000 evaluations per sample: minutes for a well-trained decoder)")
    q.add_argument("--device", default="cpu", help=DEVICE_HELP)
    cli.add_result_options(q)
    q.set_defaults(run=_command)


def _command(args) -> None:
    result = run(args.dataset, args.methods.split(","), args.samples, n_test=args.n_test,
                 encode_options=args.encode_options, start=args.start, encode_ahead=args.encode_ahead,
                 repeat=args.repeat, reference_amd=args.reference_amd, device=args.device,
                 progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)
