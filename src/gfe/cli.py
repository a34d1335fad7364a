"""The `gfe` command: thin commands over the library, no logic of their own.

Every expected failure (bad data, options or files) is printed as one line
`gfe: error: ...` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DATA_HELP = ("data: a .npy, .npz, .h5/.hdf5 or .csv file (one sample per row or leading index; an HDF5 file "
             "with a 'spectra' dataset is read as INS spectra, with its grid and mask), "
             "'digits' (scikit-learn's embedded 8x8 digits) or 'mnist=PATH' (a local MNIST .npz)")
EXAMPLES = """\
examples:
  gfe demo                                            # GFE vs autoencoder on the embedded digits
  gfe train digits --out runs/digits --epochs 3       # train a decoder, write a model directory
  gfe encode runs/digits data.npy -o latents.h5       # latents + per-sample loss, steps, status
  gfe encode runs/digits data.npy -o shards/ --shard 0/4  # one of four shards (resumable); then:
  gfe merge shards/ -o latents.h5                     # join the shards in input order
  torchrun --nproc-per-node 2 -m gfe train digits --out runs/ddp  # data-parallel training (DDP)
  gfe decode runs/digits latents.h5 -o recon.npy      # reconstructions from latents
  gfe plot runs/digits --data digits --out figs       # reconstructions, training curves, latent space
  gfe info runs/digits                                # what a model or latents file holds
  gfe data ins --n 500 --out ins.h5                   # synthetic INS spectra (needs gfe[ins])
  gfe bench data-efficiency --dataset mnist=../shared/data/mnist-10k.npz --samples 100,1000

Run 'gfe COMMAND --help' for the options of each command."""


def _int_list(text: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(f"expected integers >= {minimum}, got {text!r}")
    return values


def _seed_list(text: str) -> list[int]:
    return _int_list(text, minimum=0)


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"gtol\": 1e-3}}', got {text!r}")
    return value


def _add_train(sub) -> None:
    from .start import START_MODES
    from .gradients import GRADIENTS
    from .losses import LOSSES
    from .methods import METHODS
    from .models import DECODERS
    from .normalise import NORMALISATIONS
    from .train_config import ON_NONFINITE, OPTIMIZERS

    p = sub.add_parser(
        "train", help="train a decoder (GFE) or the autoencoder baseline",
        description="Train a decoder on DATA and write a model directory (weights.safetensors, config.json, "
                    "history.csv). A checkpoint is written after every epoch; a killed run continues with --resume. "
                    "Under 'torchrun --nproc-per-node N -m gfe train ...' every batch is split across the N "
                    "processes (DDP over gloo) and the result matches one process; see docs/distributed.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument("--key", help="array name in an .npz or dataset path in an HDF5 file")
    p.add_argument("--method", default="gfe-amd", choices=list(METHODS),
                   help="gfe-*: decoder trained on gradient-flow latents (flow and solver in the name); "
                        "ae: the autoencoder baseline with a mirrored encoder")
    p.add_argument("--decoder", default="mlp", choices=list(DECODERS),
                   help="decoder architecture (the MLP is the paper's: hidden 150, 300, 600, ELU)")
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--optimizer", default="rmsprop", choices=list(OPTIMIZERS))
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--loss", default="bce", choices=list(LOSSES),
                   help="bce for data in [0, 1], mse for real values, poisson for counts")
    p.add_argument("--normalise", default="none", choices=list(NORMALISATIONS),
                   help="mean: divide each sample by its mean (over the mask of an INS spectra file), recorded "
                        "in the model so encode and decode apply and undo it (not with --loss poisson)")
    p.add_argument("--standardise", action="store_true",
                   help="then (after --normalise) subtract each feature's mean and divide by its standard "
                        "deviation, both over the training samples, not the validation ones (a deviation under 1e-6 "
                        "of the largest, as a constant or masked channel's, is raised to that floor); kept in the "
                        "model so encode and plot apply them and decode gives reconstructions in the data's units. "
                        "For spectra whose channels differ in scale; needs --loss mse")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of DATA held out for validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encode-options", type=_json_dict, default={},
                   help="JSON options for the flow during training, e.g. '{\"gtol\": 1e-3}'")
    p.add_argument("--on-nonfinite", default="stop", choices=list(ON_NONFINITE),
                   help="when a batch's training loss is NaN or infinite: stop with an error naming the "
                        "epoch and batch, or skip that batch's update (counted in history.csv)")
    p.add_argument("--gradient", default="approx", choices=list(GRADIENTS),
                   help="decoder gradient: approx holds the latents fixed (cheap; exact once the flow has "
                        "converged); adjoint (continuous adjoint) and unrolled (back-propagation through the "
                        "solver's steps) include how the latents depend on the decoder (see docs/gradients.md)")
    p.add_argument("--start", default="learned", choices=list(START_MODES),
                   help="where training flows begin: learned (a ridge map from samples to the latents found so "
                        "far, saved with the model as where 'gfe encode' starts; 1.6-2.5x fewer decoder evaluations on MNIST) "
                        "or zero (the reference's z0 = 0). Validation always starts at 0")
    p.add_argument("--encode-ahead", type=int, default=1, metavar="K",
                   help="encode K batches in one flow call against the decoder before the first of them, then "
                        "update it batch by batch: latents up to K-1 updates stale, but small batches encode "
                        "several times faster on a CPU (MNIST, batch 5: K=16 trains 2.7x faster for +2%% test loss, "
                        "docs/benchmarks.md). gfe-* methods with --gradient approx")
    p.add_argument("--refine-start", action="store_true",
                   help="after training, refit the saved start map on converged latents of the last 2,000 "
                        "training samples and store the inverse of the mean Hessian there as the first BFGS metric "
                        "(costs one encoding of them; later encodings then need far fewer decoder evaluations: "
                        "MNIST 15 instead of 44.5 per image to within 1%% of the best loss)")
    p.add_argument("--latent-penalty", type=float, default=0.0, metavar="BETA",
                   help="L2 prior BETA*|z|^2 on the latents: in the flow's energy for gfe-* (training and the "
                        "saved encoding settings), in the training loss for ae. Keeps latents bounded")
    p.add_argument("--latent-noise", type=float, default=0.0, metavar="SIGMA",
                   help="train the decoder on latents plus Gaussian noise of this standard deviation (seeded): "
                        "a decoder smooth around its latents. With --latent-penalty 1e-3, SIGMA 2 raised the "
                        "physics a ridge regression reads from INS-map latents at 50-300 training maps (11 of 12 "
                        "runs), for 14-26%% more reconstruction error (gfe-amd; docs/spectra.md). gfe-* with "
                        "--gradient approx, or ae")
    p.add_argument("--lazy", action="store_true",
                   help="keep the samples of a .npy or HDF5 DATA on disk and read each batch when it is needed "
                        "(for data larger than memory; same result, slower per batch)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--tensorboard", type=Path, metavar="DIR", default=None,
                   help="also log each epoch's losses and flow steps for TensorBoard into DIR (needs the "
                        "'tensorboard' extra); the history is always written to OUT/history.csv")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_train)


def _train(args) -> None:
    import dataclasses

    from .distributed import process_group
    from .train_config import TrainConfig
    from .workflows import train_model

    options = vars(args)
    config = TrainConfig(**{f.name: options[f.name] for f in dataclasses.fields(TrainConfig) if f.name in options})
    with process_group() as replicas:
        train_model(args.data, args.out, config, key=args.key, decoder=args.decoder, val_fraction=args.val_fraction,
                    normalise=args.normalise, standardise=args.standardise, resume=args.resume, quiet=args.quiet,
                    tensorboard=args.tensorboard, refine_start=args.refine_start, lazy=args.lazy, replicas=replicas)


def _add_encode(sub) -> None:
    p = sub.add_parser(
        "encode", help="encode data with a trained model",
        description="Encode every sample of DATA by integrating the model's gradient flow from its learned start "
                    "(a ridge map from sample to latent fitted during training; --options '{\"start\": \"zero\"}' "
                    "starts from z0 = 0). Deterministic and independent of batch-mates. .h5 output holds latents, per-sample "
                    "loss, steps, decoder evaluations, status and provenance; .npz the same arrays; "
                    ".npy the latents only. Samples are read, encoded and written a chunk (the encoder's "
                    "chunk_size, 4096 unless --options say otherwise) at a time, so .npy and HDF5 data larger "
                    "than memory can be encoded; the latents file appears only once complete.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, help="model directory written by 'gfe train'")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="latents file (.h5, .npz or .npy); with --shard, --shards or under torchrun, a folder "
                        "of shard files")
    p.add_argument("--key", help="array name in an .npz or dataset path in an HDF5 file")
    p.add_argument("--options", type=_json_dict, default=None,
                   help="JSON overrides of the model's encode settings, e.g. '{\"gtol\": 1e-6}'")
    shards = p.add_mutually_exclusive_group()
    shards.add_argument("--shard", metavar="INDEX/COUNT",
                        help="encode only shard INDEX (from 0) of COUNT contiguous shards into the folder -o, "
                             "e.g. one per cluster job; join them with 'gfe merge'")
    shards.add_argument("--shards", type=int, metavar="COUNT",
                        help="split the samples into COUNT shards and encode those not yet in the folder -o "
                             "(a killed run resumes); under 'torchrun --nproc-per-node N -m gfe encode' each "
                             "process takes every N-th shard (default there: one shard per process)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_encode)


def _encode(args) -> None:
    from .distributed import launched_by_torchrun
    from .shards import encode_shards
    from .workflows import encode_file

    if args.shard is None and args.shards is None and not launched_by_torchrun():
        encode_file(args.model, args.data, args.output, key=args.key, options=args.options, quiet=args.quiet)
    else:
        encode_shards(args.model, args.data, args.output, shard=args.shard, count=args.shards, key=args.key,
                      options=args.options, quiet=args.quiet)


def _add_merge(sub) -> None:
    p = sub.add_parser(
        "merge", help="join the shard files of a sharded encoding",
        description="Join the shard files that 'gfe encode ... --shard/--shards' wrote into OUTDIR into one "
                    "latents file, in input order. Refuses, writing nothing, when a shard is missing or "
                    "belongs to another model, input or settings.")
    p.add_argument("outdir", type=Path, help="folder written by 'gfe encode ... -o OUTDIR --shard I/N'")
    p.add_argument("-o", "--output", required=True, type=Path, help="latents file (.h5, .npz or .npy)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=lambda args: _merge(args))


def _merge(args) -> None:
    from .shards import merge_shards

    merge_shards(args.outdir, args.output, quiet=args.quiet)


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


def _add_plot(sub) -> None:
    p = sub.add_parser(
        "plot", help="figures of a trained model: reconstructions, training curves, latent space",
        description="Encode the first --show samples of DATA and --samples more spread over it with MODEL and "
                    "write into OUT: reconstructions.png (in the data's units: each spectrum overlaid with its "
                    "reconstruction and the residual below; images and 2-D maps above their reconstructions), "
                    "training.png (loss and flow steps per epoch, from the model's history) and latents.png "
                    "(the latents on their two principal axes, coloured by each sample's loss).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, help="model directory written by 'gfe train'")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--out", required=True, type=Path, help="folder for the PNG files")
    p.add_argument("--key", help="array name in an .npz or dataset path in an HDF5 file")
    p.add_argument("--samples", type=int, default=100,
                   help="samples, spread evenly over DATA, encoded for the latent-space view (encoding time grows "
                        "with it)")
    p.add_argument("--show", type=int, default=8, help="samples shown with their reconstructions")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_plot)


def _plot(args) -> None:
    from .workflows import plot_model

    plot_model(args.model, args.data, args.out, key=args.key, samples=args.samples, show=args.show,
               quiet=args.quiet)


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


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="generate datasets")
    kinds = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    q = kinds.add_parser(
        "ins", help="synthetic inelastic neutron scattering spectra (needs the extra gfe[ins])",
        description="Draw random stable Born-von Karman crystals (fcc, bcc, rocksalt, CsCl, zincblende) and "
                    "temperatures, compute powder-averaged coherent one-phonon S(|Q|, E) with Debye-Waller and "
                    "Bose factors and Gaussian resolution (Euphonic), and write HDF5: spectra, grids, the "
                    "generating parameters (labels) and provenance. Needs Euphonic (GPL-3.0): "
                    'pip install "gfe[ins]". See docs/spectra.md.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--n", type=int, required=True, help="number of spectra")
    q.add_argument("--kind", default="powder-map", choices=["powder-map", "spectrum-1d"],
                   help="powder-map: S(|Q|, E) maps; spectrum-1d: the maps integrated over |Q|")
    q.add_argument("--out", required=True, type=Path, help="HDF5 file to write (atomically)")
    q.add_argument("--seed", type=int, default=0, help="the file is the same for a seed, whatever --workers")
    q.add_argument("--counts", type=float, default=None,
                   help="draw Poisson counts with this expected total per spectrum (default: noiseless)")
    q.add_argument("--directions", type=int, default=500,
                   help="wavevector directions per |Q| bin (powder-average noise falls as 1/sqrt of it)")
    q.add_argument("--q-bins", type=int, default=64, help="|Q| bins over 0.5..8 1/angstrom (powder maps)")
    q.add_argument("--e-bins", type=int, default=64, help="energy bins over 2..50 meV")
    q.add_argument("--workers", type=int, default=1, help="worker processes")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=_data_ins)


def _data_ins(args) -> None:
    from .ins import generate

    generate(args.n, out=args.out, kind=args.kind, seed=args.seed, workers=args.workers,
             progress=not args.quiet, counts=args.counts, directions=args.directions,
             q_bins=args.q_bins, e_bins=args.e_bins)
    if not args.quiet:
        print(f"{args.n} {args.kind} spectra written to {args.out}")


def _add_result_options(q) -> None:
    """Where a benchmark's JSON goes (printed if not given), and --quiet."""
    q.add_argument("--json", type=Path, default=None, help="write the results here")
    q.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _add_bench(sub) -> None:
    from .start import START_MODES

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
    q.add_argument("--train-encode", type=_json_dict, default=None,
                   help="JSON options for the GFE methods' flows during training, e.g. '{\"max_steps\": 30}'")
    q.add_argument("--start", default="learned", choices=list(START_MODES),
                   help="where the GFE methods' training flows begin (the test encoding starts at 0 either way)")
    q.add_argument("--encode-ahead", type=int, default=1, metavar="K",
                   help="the GFE methods encode K batches per flow call (see 'gfe train --help')")
    q.add_argument("--repeat", type=int, default=1,
                   help="train each setting this many times (the runs are identical) and report the median "
                        "training time and each one, as a shared machine's timings vary")
    _add_result_options(q)
    q.set_defaults(run=_bench_data_efficiency)
    _add_bench_encode(bench)
    _add_bench_sharded_encoding(bench)
    _add_bench_spectra(bench)
    _add_bench_gradients(bench)
    _add_bench_solvers(bench)
    _add_bench_stream_memory(bench)


def _add_bench_stream_memory(bench) -> None:
    q = bench.add_parser(
        "stream-memory", help="peak memory of 'gfe encode' against the number of samples",
        description="Generate SIZES samples on disk (.npy, float32) and encode each in a fresh process, streamed "
                    "in chunks (what 'gfe encode' does) and read whole (for contrast), with a small decoder and "
                    "few steps; report each process's peak resident memory and seconds. Streamed, the peak stays "
                    "flat.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--sizes", type=_int_list, default=[10_000, 100_000], help="numbers of samples")
    q.add_argument("--features", type=int, default=256, help="features per sample")
    q.add_argument("--chunk-rows", type=int, default=4096, help="samples per chunk (the encoder's chunk_size)")
    q.add_argument("--max-steps", type=int, default=5, help="flow steps per sample (bounds the run time)")
    _add_result_options(q)
    q.set_defaults(run=_bench_stream_memory)


def _bench_stream_memory(args) -> None:
    from .bench import stream_memory

    result = stream_memory.run(args.sizes, features=args.features, chunk_rows=args.chunk_rows,
                               max_steps=args.max_steps, progress=not args.quiet)
    _emit(result, args.json, args.quiet)


def _add_bench_spectra(bench) -> None:
    q = bench.add_parser(
        "spectra", help="GFE vs autoencoder vs PCA on INS spectra: test error, physics in the latent, time",
        description="On an INS spectra file (from 'gfe data ins'), train GFE (AMD and Nesterov), the autoencoder "
                    "with the same convolutional decoder, and PCA, at equal latent size and several training "
                    "sizes; report test reconstruction MSE (per-sample mean-normalised spectra), cross-validated "
                    "ridge R^2 from test latents to the generating parameters, and training and encoding times. "
                    "Writes the plots next to --json. See docs/spectra.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--data", required=True, type=Path, help="INS spectra file with labels")
    q.add_argument("--samples", type=_int_list, default=[50, 100, 300], help="training-set sizes")
    q.add_argument("--methods", default="gfe-amd,gfe-nesterov,ae,pca", help="comma-separated methods")
    q.add_argument("--n-test", type=int, default=500,
                   help="held-out spectra (the probe's cross-validation runs on their latents; at 100 its R^2 "
                        "varies by several hundredths between folds and seeds)")
    q.add_argument("--latent-dim", type=int, default=8)
    q.add_argument("--epochs", type=int, default=20, help="passes over the training spectra")
    q.add_argument("--seeds", type=_seed_list, default=[0],
                   help="training seeds (initial weights, sample order); the summary averages them")
    q.add_argument("--latent-penalty", type=float, default=0.0, metavar="BETA",
                   help="L2 latent prior for every neural method (as 'gfe train --latent-penalty')")
    q.add_argument("--latent-noise", type=float, default=0.0, metavar="SIGMA",
                   help="noise on the decoder's training latents for every neural method "
                        "(as 'gfe train --latent-noise')")
    q.add_argument("--json", type=Path, default=None, help="write the results here (plots beside it)")
    q.add_argument("--quiet", action="store_true", help="print nothing but errors")
    q.set_defaults(run=_bench_spectra)


def _bench_spectra(args) -> None:
    from .bench import spectra

    result = spectra.run(args.data, args.samples, methods=args.methods.split(","), n_test=args.n_test,
                         latent_dim=args.latent_dim, epochs=args.epochs, seeds=args.seeds,
                         latent_penalty=args.latent_penalty, latent_noise=args.latent_noise,
                         plots=None if args.json is None else args.json.parent, progress=not args.quiet)
    _emit(result, args.json, args.quiet)


def _add_bench_encode(bench) -> None:
    q = bench.add_parser(
        "encode", help="encoding cost per sample of each solver setting, against the decoder's own rate",
        description="Encode N samples with a trained decoder (--model, or the data-efficiency protocol's GFE-AMD "
                    "decoder trained here on 1,000 samples) under several solver settings; report seconds, "
                    "decoder evaluations per sample (mean, p95), loss relative to the best reachable, and the "
                    "share of the decoder's own forward-plus-VJP rate and of the matmul bound.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    _add_result_options(q)
    q.set_defaults(run=_bench_encode)


def _bench_encode(args) -> None:
    from .bench import encoding
    from .errors import ConfigError

    settings = None
    if args.only is not None:
        settings = {name: options for name, options in encoding.SETTINGS.items() if args.only in name}
        if not settings:
            raise ConfigError(f"no encode benchmark setting's name contains {args.only!r}; the settings are: "
                              + "; ".join(encoding.SETTINGS))
    result = encoding.run(args.dataset, model=args.model, n=args.n, batch=args.batch, settings=settings,
                          refine_start=args.refine_start, repeat=args.repeat, progress=not args.quiet)
    _emit(result, args.json, args.quiet)


def _flow_bench_parser(bench, name: str, help: str, description: str, n_test: int):
    """A benchmark parser with the options the flow benchmarks share."""
    q = bench.add_parser(name, help=help, description=description,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--dataset", default="mnist", help=DATA_HELP)
    q.add_argument("--n-train", type=int, default=1000, help="training samples (one pass)")
    q.add_argument("--n-test", type=int, default=n_test, help="held-out samples")
    _add_result_options(q)
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
    from .solvers import SOLVERS

    q = _flow_bench_parser(
        bench, "solvers", "decoder evaluations and seconds each solver needs to reach the same test loss",
        "Train the MNIST decoder once (GFE-AMD, one pass over --n-train samples), then encode held-out samples "
        "with each solver under step budgets 5, 10, 20, ... and report the evaluations and seconds of the first "
        "budget whose mean loss is within 1%% of the best any solver reached.", n_test=200)
    q.add_argument("--solvers", default=",".join(SOLVER_SETTINGS),
                   help="comma-separated settings, from: " + ", ".join(SOLVER_SETTINGS)
                        + "; or any registered solver with its default options: " + ", ".join(SOLVERS))
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
                                 train_encode=args.train_encode, train_start=args.start,
                                 encode_ahead=args.encode_ahead, repeat=args.repeat, progress=not args.quiet)
    _emit(result, args.json, args.quiet)


def _add_bench_sharded_encoding(bench) -> None:
    q = bench.add_parser(
        "sharded-encoding", help="encoding speed of N processes (torchrun) against one",
        description="Train a decoder briefly, then encode SAMPLES images with one process (one thread), one "
                    "process with N threads, and N processes under torchrun (one thread each); report wall and "
                    "encoding times, speed-ups, and whether the merged shards equal the single-process latents.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--dataset", default="mnist", help=DATA_HELP)
    q.add_argument("--samples", type=int, default=2000, help="images to encode")
    q.add_argument("--train-samples", type=int, default=100, help="images for the brief training (0: random decoder)")
    q.add_argument("--max-steps", type=int, default=200, help="flow step budget per sample when encoding")
    q.add_argument("--processes", type=int, default=2, help="N")
    _add_result_options(q)
    q.set_defaults(run=_bench_sharded_encoding)


def _bench_sharded_encoding(args) -> None:
    from .bench import sharded_encoding

    result = sharded_encoding.run(args.dataset, samples=args.samples, train_samples=args.train_samples,
                                  max_steps=args.max_steps, processes=args.processes, progress=not args.quiet)
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
    for add in (_add_demo, _add_data, _add_train, _add_encode, _add_merge, _add_decode, _add_plot, _add_info,
                _add_bench):
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
