"""Does the approximate gradient lose accuracy? Test loss and training time of the
approx, adjoint and unrolled decoder gradients, with the first-order and Nesterov flows.

Protocol (DESIGN §5, issue 3): one pass over N training samples, batch 5, RMSprop
lr 5e-4, BCE, the MNIST MLP decoder, AMD with the data-efficiency benchmark's
training settings; test loss = mean per-pixel BCE of held-out samples encoded from
z0 = 0 with the solver's defaults. Every run sees the same samples in the same order
and starts from the same weights.
"""

from __future__ import annotations

import time

from ..data import load_dataset
from ..samples import split
from ..train import TrainConfig, Trainer
from . import at_least, cli, known
from .data_efficiency import _decoder, machine

FLOW_METHODS = {"first": "gfe-amd", "nesterov": "gfe-nesterov"}
GRADIENT_MODES = ("approx", "adjoint", "unrolled")


def run(dataset: str = "mnist", *, n_train: int = 1000, n_test: int = 1000, flows=("first", "nesterov"),
        gradients=GRADIENT_MODES, latent_dim: int = 20, batch_size: int = 5, lr: float = 5e-4, seed: int = 0,
        encode_options: dict | None = None, progress: bool = True) -> dict:
    known("flows", flows, FLOW_METHODS)
    known("gradients", gradients, GRADIENT_MODES)
    at_least(1, n_train=n_train, n_test=n_test)
    data = load_dataset(dataset)
    x_train, x_test = split(data.x, n_train, n_test, seed=seed)
    encode_options = {} if encode_options is None else encode_options
    results = []
    for flow in flows:
        for gradient in gradients:
            config = TrainConfig(method=FLOW_METHODS[flow], latent_dim=latent_dim, batch_size=batch_size,
                                 optimizer="rmsprop", lr=lr, seed=seed, encode_options=encode_options,
                                 gradient=gradient)
            trainer = Trainer(config, data.x.shape[1:], decoder=_decoder(data.x.shape[1:], latent_dim, seed),
                              progress=progress)
            start = time.perf_counter()
            record = trainer.fit(x_train)[-1]
            train_seconds = time.perf_counter() - start
            test_loss = trainer.evaluate(x_test)
            results.append({"flow": flow, "gradient": gradient, "test_loss": test_loss,
                            "train_seconds": train_seconds, "train_loss": record.train_loss,
                            "train_mean_steps": record.mean_steps, "train_mean_nfe": record.mean_nfe})
            if progress:
                print(f"{flow:>8} {gradient:>8}: test BCE {test_loss:.4f}  train {train_seconds:7.1f} s  "
                      f"steps/sample {record.mean_steps:6.1f}", flush=True)
    return {"benchmark": "gradients", "dataset": data.name, "n_train": n_train, "n_test": n_test,
            "latent_dim": latent_dim, "batch_size": batch_size, "optimizer": "rmsprop", "lr": lr, "seed": seed,
            "encode_options": encode_options, "machine": machine(), "results": results}


def add_parser(bench) -> None:
    q = cli.flow_parser(
        bench, "gradients", "approx versus exact (adjoint, unrolled) decoder gradients in training",
        "One pass over N training samples, batch 5, RMSprop lr 5e-4, BCE, with each decoder gradient and flow; "
        "reports test loss (mean per-pixel BCE of held-out samples) and training seconds.", n_test=1000)
    q.add_argument("--flows", default="first,nesterov", help="comma-separated flows")
    q.add_argument("--gradients", default="approx,adjoint,unrolled", help="comma-separated gradient modes")
    q.set_defaults(run=_command)


def _command(args) -> None:
    result = run(args.dataset, n_train=args.n_train, n_test=args.n_test, flows=args.flows.split(","),
                 gradients=args.gradients.split(","), progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)
