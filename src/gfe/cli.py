"""The `gfe` command: thin commands over the library, no logic of their own.

Every expected failure (bad data, options or files) is printed as one line
`gfe: error: ...` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATA_HELP = ("data: a .npy, .npz, .h5/.hdf5 or .csv file (one sample per row or leading index), "
             "'digits' (scikit-learn's embedded 8x8 digits) or 'mnist=PATH' (a local MNIST .npz)")
EXAMPLES = """\
examples:
  gfe demo                                            # GFE vs autoencoder on the embedded digits
  gfe train digits --out runs/digits --epochs 3       # train a decoder, write a model directory
  gfe encode runs/digits data.npy -o latents.h5       # latents + per-sample loss, steps, status
  gfe decode runs/digits latents.h5 -o recon.npy      # reconstructions from latents
  gfe info runs/digits                                # what a model or latents file holds
  gfe bench data-efficiency --dataset mnist=../shared/data/mnist-10k.npz --samples 100,1000

Run 'gfe COMMAND --help' for the options of each command."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"gtol\": 1e-3}}', got {text!r}")
    return value


def _add_train(sub) -> None:
    from .train import METHODS, OPTIMIZERS

    p = sub.add_parser(
        "train", help="train a decoder (GFE) or the autoencoder baseline",
        description="Train a decoder on DATA and write a model directory (weights.safetensors, config.json, "
                    "history.csv). A checkpoint is written after every epoch; a killed run continues with --resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument("--key", help="array name in an .npz or dataset path in an HDF5 file")
    p.add_argument("--method", default="gfe-amd", choices=list(METHODS),
                   help="gfe-*: decoder trained on gradient-flow latents (flow and solver in the name); "
                        "ae: the autoencoder baseline with a mirrored encoder")
    p.add_argument("--decoder", default="mlp", choices=["mlp", "conv1d", "conv2d"],
                   help="decoder architecture (the MLP is the paper's: hidden 150, 300, 600, ELU)")
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--optimizer", default="rmsprop", choices=list(OPTIMIZERS))
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--loss", default="bce", choices=["bce", "mse", "poisson"],
                   help="bce for data in [0, 1], mse for real values, poisson for counts")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of DATA held out for validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encode-options", type=_json_dict, default=None,
                   help="JSON options for the flow during training, e.g. '{\"gtol\": 1e-3}'")
    p.add_argument("--gradient", default="approx", choices=["approx", "adjoint", "unrolled"],
                   help="decoder gradient: approx holds the latents fixed (cheap; exact once the flow has "
                        "converged); adjoint (continuous adjoint) and unrolled (back-propagation through the "
                        "solver's steps) include how the latents depend on the decoder (see docs/gradients.md)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_train)


def _train(args) -> None:
    from .workflows import train_model

    train_model(args.data, args.out, key=args.key, method=args.method, decoder=args.decoder,
                latent_dim=args.latent_dim, epochs=args.epochs, batch_size=args.batch_size,
                optimizer=args.optimizer, lr=args.lr, loss=args.loss, val_fraction=args.val_fraction,
                seed=args.seed, encode_options=args.encode_options, resume=args.resume, quiet=args.quiet,
                gradient=args.gradient)


def _add_encode(sub) -> None:
    p = sub.add_parser(
        "encode", help="encode data with a trained model",
        description="Encode every sample of DATA by integrating the model's gradient flow from z0 = 0 "
                    "(deterministic, independent of batch-mates). .h5 output holds latents, per-sample "
                    "loss, steps, decoder evaluations, status and provenance; .npz the same arrays; "
                    ".npy the latents only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, help="model directory written by 'gfe train'")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, type=Path, help="latents file (.h5, .npz or .npy)")
    p.add_argument("--key", help="array name in an .npz or dataset path in an HDF5 file")
    p.add_argument("--options", type=_json_dict, default=None,
                   help="JSON overrides of the model's encode settings, e.g. '{\"gtol\": 1e-6}'")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_encode)


def _encode(args) -> None:
    from .workflows import encode_file

    encode_file(args.model, args.data, args.output, key=args.key, options=args.options, quiet=args.quiet)


def _add_decode(sub) -> None:
    p = sub.add_parser(
        "decode", help="reconstruct data from latents",
        description="Decode latents (a file from 'gfe encode', or any (N, latent_dim) array) into "
                    "reconstructions in data space (probabilities for bce, rates for poisson).")
    p.add_argument("model", type=Path, help="model directory written by 'gfe train'")
    p.add_argument("latents", type=Path, help="latents file (.h5, .npz with array 'z', or .npy)")
    p.add_argument("-o", "--output", required=True, type=Path, help="reconstructions (.npy)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_decode)


def _decode(args) -> None:
    from .workflows import decode_file

    decode_file(args.model, args.latents, args.output, quiet=args.quiet)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show what a model directory or latents file holds")
    p.add_argument("path", type=Path, help="model directory or latents .h5 file")
    p.set_defaults(run=lambda args: print(json.dumps(_info(args.path), indent=2)))


def _info(path: Path) -> dict:
    from .latents import read_latents
    from .persist import load_model

    if path.is_dir():
        config = load_model(path).config
        return {key: config[key] for key in ("gfe_version", "decoder", "encoder", "settings", "weights_sha256")}
    z, meta = read_latents(path)
    return {"samples": z.shape[0], "latent_dim": z.shape[1], "provenance": meta}


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="GFE versus the autoencoder on the embedded digits (about a minute)",
        description="Train GFE and an autoencoder with the same decoder on few samples of scikit-learn's "
                    "8x8 digits, print test losses and timings, and write reconstructions.png and "
                    "loss_curves.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gfe-demo"), help="folder for the plots and results.json")
    p.add_argument("--samples", type=_int_list, default=[50, 200, 800],
                   help="training-set sizes to compare (comma-separated)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=lambda args: _demo(args))


def _demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, samples=args.samples, quiet=args.quiet)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks that write JSON")
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    q = bench.add_parser(
        "data-efficiency", help="test loss against training samples seen (DESIGN §5)",
        description="One pass over N training samples, batch 5, RMSprop lr 5e-4, BCE; test loss = mean "
                    "per-pixel BCE of held-out samples encoded from z0 = 0 (the autoencoder uses its encoder).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--dataset", default="mnist", help=DATA_HELP)
    q.add_argument("--methods", default="gfe-amd,ae", help="comma-separated training methods")
    q.add_argument("--samples", type=_int_list, default=[100, 1000], help="training-set sizes")
    q.add_argument("--n-test", type=int, default=1000, help="held-out samples")
    q.add_argument("--json", type=Path, default=None, help="write the results here")
    q.add_argument("--quiet", action="store_true", help="print nothing but errors")
    q.set_defaults(run=_bench_data_efficiency)
    _add_bench_gradients(bench)
    _add_bench_solvers(bench)


def _flow_bench_parser(bench, name: str, help: str, description: str, n_test: int):
    """A benchmark parser with the options the flow benchmarks share."""
    q = bench.add_parser(name, help=help, description=description,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--dataset", default="mnist", help=DATA_HELP)
    q.add_argument("--n-train", type=int, default=1000, help="training samples (one pass)")
    q.add_argument("--n-test", type=int, default=n_test, help="held-out samples")
    q.add_argument("--json", type=Path, default=None, help="write the results here")
    q.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return q


def _add_bench_gradients(bench) -> None:
    q = _flow_bench_parser(
        bench, "gradients", "approx versus exact (adjoint, unrolled) decoder gradients in training",
        "One pass over N training samples, batch 5, RMSprop lr 5e-4, BCE, with each decoder gradient and flow; "
        "reports test loss (mean per-pixel BCE of held-out samples) and training seconds.", n_test=1000)
    q.add_argument("--flows", default="first,nesterov", help="comma-separated flows")
    q.add_argument("--gradients", default="approx,adjoint,unrolled", help="comma-separated gradient modes")
    q.set_defaults(run=_bench_gradients)


def _bench_gradients(args) -> None:
    from .bench import gradients

    result = gradients.run(args.dataset, n_train=args.n_train, n_test=args.n_test, flows=args.flows.split(","),
                           gradients=args.gradients.split(","), progress=not args.quiet)
    _emit(result, args.json, args.quiet)


def _add_bench_solvers(bench) -> None:
    from .bench.solvers import SOLVER_SETTINGS

    q = _flow_bench_parser(
        bench, "solvers", "decoder evaluations and seconds each solver needs to reach the same test loss",
        "Train the MNIST decoder once (GFE-AMD, one pass over --n-train samples), then encode held-out samples "
        "with each solver under step budgets 5, 10, 20, ... and report the evaluations and seconds of the first "
        "budget whose mean loss is within 1%% of the best any solver reached.", n_test=200)
    q.add_argument("--solvers", default=",".join(SOLVER_SETTINGS),
                   help="comma-separated, from: " + ", ".join(SOLVER_SETTINGS))
    q.add_argument("--max-budget", type=int, default=2560, help="largest step budget tried")
    q.set_defaults(run=_bench_solvers)


def _bench_solvers(args) -> None:
    from .bench import solvers

    result = solvers.run(args.dataset, n_train=args.n_train, n_test=args.n_test, solvers=args.solvers.split(","),
                         max_budget=args.max_budget, progress=not args.quiet)
    _emit(result, args.json, args.quiet)


def _bench_data_efficiency(args) -> None:
    from .bench import data_efficiency

    result = data_efficiency.run(args.dataset, args.methods.split(","), args.samples, n_test=args.n_test,
                                 progress=not args.quiet)
    _emit(result, args.json, args.quiet)


def _emit(result: dict, path: Path | None, quiet: bool) -> None:
    from .persist import atomic_write_text

    text = json.dumps(result, indent=2)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text + "\n")
    elif not quiet:
        print(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gfe", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Gradient Flow Encoding: an autoencoder without an encoder. Samples are encoded by "
                    "integrating a gradient flow of the reconstruction loss in latent space against a "
                    "decoder, and the decoder is trained on those latents.")
    parser.add_argument("--version", action="version", version=f"gfe {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo, _add_train, _add_encode, _add_decode, _add_info, _add_bench):
        add(sub)
    return parser


def _version() -> str:
    from .persist import gfe_version

    return gfe_version()


def main(argv: list[str] | None = None) -> int:
    from .errors import GFEError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except GFEError as err:
        parser.exit(2, f"gfe: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "gfe: interrupted\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
