"""The `gfe` command: thin commands over the library, no logic of their own.

Every expected failure (bad data, options or files) is printed as one line
`gfe: error: ...` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_args import DATA_HELP, DEVICE_HELP, int_list, json_dict

EXAMPLES = """\
examples:
  gfe demo                                            # GFE vs autoencoder on the embedded digits
  gfe train digits --out runs/digits --epochs 3       # train a decoder, write a model directory
  gfe encode runs/digits data.npy -o latents.h5       # latents + per-sample loss, steps, status
  gfe encode runs/digits data.npy -o shards/ --shard 0/4  # one of four shards (resumable); then:
  gfe merge shards/ -o latents.h5                     # join the shards in input order
  torchrun --nproc-per-node 2 -m gfe train digits --out runs/ddp  # data-parallel training (DDP)
  gfe decode runs/digits latents.h5 -o recon.npy      # reconstructions from latents
  gfe encode runs/digits data.npy -o z.h5 --uncertainty  # latents with their covariances (z_cov, z_std)
  gfe decode runs/digits z.h5 -o recon.npy --std std.npy # reconstructions with their standard deviations
  gfe plot runs/digits --data digits --out figs       # reconstructions, training curves, latent space
  gfe info runs/digits                                # what a model or latents file holds
  gfe data ins --n 500 --out ins.h5                   # synthetic INS spectra (needs gfe[ins])
  gfe bench data-efficiency --dataset mnist=../shared/data/mnist-10k.npz --samples 100,1000

Run 'gfe COMMAND --help' for the options of each command."""

# each command's line in `gfe --help`, in that order
HELP = {
    "demo": "GFE versus the autoencoder on the embedded digits (about a minute)",
    "data": "generate datasets",
    "train": "train a decoder (GFE) or the autoencoder baseline",
    "encode": "encode data with a trained model",
    "merge": "join the shard files of a sharded encoding",
    "decode": "reconstruct data from latents",
    "plot": "figures of a trained model: reconstructions, training curves, latent space",
    "info": "show what a model directory or latents file holds",
    "bench": "benchmarks that write JSON",
}


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help=HELP["train"],
        description="Train a decoder on DATA and write a model directory (weights.safetensors, config.json, "
                    "history.csv). A checkpoint is written after every epoch; a killed run continues with --resume. "
                    "Under 'torchrun --nproc-per-node N -m gfe train ...' every batch is split across the N "
                    "processes (DDP over gloo; with --device cuda one GPU per process, over NCCL) and the result "
                    "matches one process; see docs/distributed.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_train_data(p.add_argument_group("the data and how the model sees them"))
    _add_train_model(p.add_argument_group("the model and its optimisation"))
    _add_train_flow(p.add_argument_group("the gradient flow (gfe-* methods)"))
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + "; a run resumes on any device")
    p.add_argument("--tensorboard", type=Path, metavar="DIR", default=None,
                   help="also log each epoch's losses and flow steps for TensorBoard into DIR (needs the "
                        "'tensorboard' extra); the history is always written to OUT/history.csv")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors (gfe.GFE is silent unless verbose=True instead, as "
                        "scikit-learn estimators are)")
    p.set_defaults(run=_train)


def _add_train_data(g) -> None:
    from .normalise import NORMALISATIONS

    g.add_argument("data", help=DATA_HELP)
    g.add_argument("--out", required=True, type=Path, help="model directory to write")
    g.add_argument("--key", help="array name in an .npz or dataset path in an HDF5 file")
    g.add_argument("--normalise", default="none", choices=list(NORMALISATIONS),
                   help="mean: divide each sample by its mean (over the mask of an INS spectra file), recorded "
                        "in the model so encode and decode apply and undo it (not with --loss poisson)")
    g.add_argument("--range", metavar="LO:HI[,LO:HI...]", dest="ranges",
                   help="keep only the channels in these inclusive ranges of the data's axis (a CSV header's "
                        "wavenumbers, say), or of feature indices when the data have no axis; recorded in the "
                        "model, which then encodes and plots full-width data")
    g.add_argument("--weights", metavar="FILE", type=Path,
                   help="per-feature loss weights (.npy, .csv...; one per feature, 0 masks a feature), recorded "
                        "in the model and used again when encoding")
    g.add_argument("--standardise", action="store_true",
                   help="then (after --normalise) subtract each feature's mean and divide by its standard "
                        "deviation, both over the training samples, not the validation ones (a deviation under 1e-6 "
                        "of the largest, as a constant or masked channel's, is raised to that floor); kept in the "
                        "model so encode and plot apply them and decode gives reconstructions in the data's units. "
                        "For spectra whose channels differ in scale; needs --loss mse")
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of DATA held out for validation")
    g.add_argument("--lazy", action="store_true",
                   help="keep the samples of a .npy or HDF5 DATA on disk and read each batch when it is needed "
                        "(for data larger than memory; same result, slower per batch)")


def _add_train_model(g) -> None:
    from .losses import LOSSES
    from .methods import METHODS
    from .models import DECODERS
    from .train_config import LR_SCHEDULES, ON_NONFINITE, OPTIMIZERS, TrainConfig

    g.add_argument("--method", default=TrainConfig.method, choices=list(METHODS),
                   help="gfe-*: decoder trained on gradient-flow latents (flow and solver in the name); "
                        "ae: the autoencoder baseline with a mirrored encoder")
    g.add_argument("--decoder", default="mlp", choices=list(DECODERS),
                   help="decoder architecture (the MLP is the paper's: hidden 150, 300, 600, ELU; pca-mlp starts "
                        "from a PCA of the training data, for nearly linear data such as spectra)")
    g.add_argument("--latent-dim", type=int, default=TrainConfig.latent_dim, help="size of each latent vector")
    g.add_argument("--loss", default=TrainConfig.loss, choices=list(LOSSES),
                   help="bce for data in [0, 1] (the paper's protocol, on images; gfe.GFE defaults to mse "
                        "instead, as it meets arbitrary real arrays), mse for real values, poisson for counts")
    g.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="passes over the training samples")
    g.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="samples per decoder update")
    g.add_argument("--optimizer", default=TrainConfig.optimizer, choices=list(OPTIMIZERS),
                   help="optimizer of the decoder's weights")
    g.add_argument("--lr", type=float, default=TrainConfig.lr, help="learning rate")
    g.add_argument("--lr-schedule", default=TrainConfig.lr_schedule, choices=list(LR_SCHEDULES),
                   help="cosine: lower the learning rate from --lr to 0 over the run, batch by batch, so the "
                        "decoder settles at the end instead of jittering about its minimum")
    g.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=TrainConfig.keep_best,
                   help="save the epoch of lowest validation loss (history.csv: best_epoch), not the last")
    g.add_argument("--patience", type=int, default=TrainConfig.patience, metavar="EPOCHS",
                   help="stop once the validation loss has not improved for EPOCHS epochs")
    g.add_argument("--retrain-all", action="store_true",
                   help="once validation has chosen the best epoch, train that many epochs again from the same "
                        "initial weights on the training and validation samples together (for small data: no "
                        "sample is left out of the model; the 'pca-mlp' decoder then stays at the PCA of every "
                        "sample unless training clearly beat it). Costs up to twice the training")
    g.add_argument("--seed", type=int, default=TrainConfig.seed,
                   help="seeds the initial weights, the validation split, the data order and --latent-noise")
    g.add_argument("--on-nonfinite", default=TrainConfig.on_nonfinite, choices=list(ON_NONFINITE),
                   help="when a batch's training loss is NaN or infinite: stop with an error naming the "
                        "epoch and batch, or skip that batch's update (counted in history.csv)")


def _add_train_flow(g) -> None:
    from .gradients import GRADIENTS
    from .start import START_MODES
    from .train_config import TrainConfig

    g.add_argument("--encode-options", type=json_dict, default=None,
                   help="JSON options for the flow during training, e.g. '{\"gtol\": 1e-3}'")
    g.add_argument("--gradient", default=TrainConfig.gradient, choices=list(GRADIENTS),
                   help="decoder gradient: approx holds the latents fixed (cheap; exact once the flow has "
                        "converged); adjoint (continuous adjoint) and unrolled (back-propagation through the "
                        "solver's steps) include how the latents depend on the decoder (see docs/gradients.md)")
    g.add_argument("--start", default=TrainConfig.start, choices=list(START_MODES),
                   help="where training flows begin: learned (a ridge map from samples to the latents found so "
                        "far, saved with the model as where 'gfe encode' starts; fewer decoder evaluations, measured: "
                        "docs/benchmarks.md) or zero (the reference's z0 = 0). Validation always starts at 0")
    g.add_argument("--encode-ahead", type=int, default=TrainConfig.encode_ahead, metavar="K",
                   help="encode K batches in one flow call against the decoder before the first of them, then "
                        "update it batch by batch: latents up to K-1 updates stale, but small batches encode "
                        "faster on a CPU (measured: docs/benchmarks.md). gfe-* methods with --gradient approx")
    g.add_argument("--refine-start", action="store_true",
                   help="after training, refit the saved start map on converged latents of the last 2,000 "
                        "training samples and store the inverse of the mean Hessian there as the first BFGS metric "
                        "(costs one encoding of them; later encodings then need fewer decoder evaluations, measured: "
                        "docs/benchmarks.md)")
    g.add_argument("--latent-penalty", type=float, default=TrainConfig.latent_penalty, metavar="BETA",
                   help="L2 prior BETA*|z|^2 on the latents: in the flow's energy for gfe-* (training and the "
                        "saved encoding settings), in the training loss for ae. Keeps latents bounded")
    g.add_argument("--latent-noise", type=float, default=TrainConfig.latent_noise, metavar="SIGMA",
                   help="train the decoder on latents plus Gaussian noise of this standard deviation (seeded): "
                        "a decoder smooth around its latents, whose latents a linear model reads better, for more "
                        "reconstruction error (measured: docs/spectra.md). gfe-* with --gradient approx, or ae")


def _train(args) -> None:
    import dataclasses

    from .distributed import process_device, process_group
    from .train_config import TrainConfig
    from .workflows import train_model

    options = {**vars(args), "encode_options": args.encode_options or {}}
    config = TrainConfig(**{f.name: options[f.name] for f in dataclasses.fields(TrainConfig) if f.name in options})
    device = process_device(args.device)
    with process_group(device) as replicas:
        train_model(args.data, args.out, config, key=args.key, decoder=args.decoder, val_fraction=args.val_fraction,
                    normalise=args.normalise, standardise=args.standardise, ranges=args.ranges,
                    weights=args.weights, resume=args.resume, quiet=args.quiet, tensorboard=args.tensorboard,
                    refine_start=args.refine_start, lazy=args.lazy, device=device, replicas=replicas)


def _add_encode(sub) -> None:
    p = sub.add_parser(
        "encode", help=HELP["encode"],
        description="Encode every sample of DATA by integrating the model's gradient flow from its learned start "
                    "(a ridge map from sample to latent fitted during training; --options '{\"start\": \"zero\"}' "
                    "starts from z0 = 0). Deterministic and independent of batch-mates. .h5 output holds latents, per-sample "
                    "loss, steps, decoder evaluations, status and provenance; .npz the same arrays; "
                    ".npy the latents only (the provenance beside them in NAME.npy.json). Samples are read, encoded and written a chunk (the encoder's "
                    "chunk_size, 4096 unless --options say otherwise) at a time, so .npy and HDF5 data larger "
                    "than memory can be encoded; the latents file appears only once complete.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, help="model directory written by 'gfe train'")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="latents file (.h5, .npz or .npy); with --shard, --shards or under torchrun, a folder "
                        "of shard files")
    p.add_argument("--key", help="array name in an .npz or dataset path in an HDF5 file")
    p.add_argument("--options", type=json_dict, default=None,
                   help="JSON overrides of the model's encode settings, e.g. '{\"gtol\": 1e-6}'")
    shards = p.add_mutually_exclusive_group()
    shards.add_argument("--shard", metavar="INDEX/COUNT",
                        help="encode only shard INDEX (from 0) of COUNT contiguous shards into the folder -o, "
                             "e.g. one per cluster job; join them with 'gfe merge'")
    shards.add_argument("--shards", type=int, metavar="COUNT",
                        help="split the samples into COUNT shards and encode those not yet in the folder -o "
                             "(a killed run resumes); under 'torchrun --nproc-per-node N -m gfe encode' each "
                             "process takes every N-th shard (default there: one shard per process)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--uncertainty", action="store_true",
                   help="also write each latent's uncertainty to the .h5/.npz file: z_cov (its covariance, a "
                        "Laplace approximation from the likelihood's curvature at the latent, given the decoder), "
                        "z_std (the standard deviations) and z_std_status (0 valid; 1 the flow did not converge, "
                        "2 a flat direction, 3 non-finite, 4 too few features to estimate the noise: NaN or inf "
                        "there). See docs/uncertainty.md")
    p.add_argument("--noise-std", type=float, default=None, metavar="SIGMA",
                   help="with --uncertainty and the mse loss: the data's Gaussian noise level, in the units the "
                        "loss sees (after the model's normalisation and standardisation); without it, estimated "
                        "per sample from its residual (written as noise_std)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_encode)


def _encode(args) -> None:
    from .distributed import launched_by_torchrun
    from .errors import ConfigError
    from .shards import encode_shards
    from .uncertainty import UncertaintySettings
    from .workflows import encode_file

    if args.noise_std is not None and not args.uncertainty:
        raise ConfigError("--noise-std is the noise level of --uncertainty; add --uncertainty")
    uncertainty = UncertaintySettings(args.noise_std) if args.uncertainty else None
    if args.shard is None and args.shards is None and not launched_by_torchrun():
        encode_file(args.model, args.data, args.output, key=args.key, options=args.options, quiet=args.quiet,
                    device=args.device, uncertainty=uncertainty)
    elif uncertainty is not None:
        raise ConfigError("--uncertainty is not yet written by sharded encodings; encode without --shard/--shards")
    else:
        encode_shards(args.model, args.data, args.output, shard=args.shard, count=args.shards, key=args.key,
                      options=args.options, quiet=args.quiet, device=args.device)


def _add_merge(sub) -> None:
    p = sub.add_parser(
        "merge", help=HELP["merge"],
        description="Join the shard files that 'gfe encode ... --shard/--shards' wrote into OUTDIR into one "
                    "latents file, in input order. Refuses, writing nothing, when a shard is missing or "
                    "belongs to another model, input or settings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("outdir", type=Path, help="folder written by 'gfe encode ... -o OUTDIR --shard I/N'")
    p.add_argument("-o", "--output", required=True, type=Path, help="latents file (.h5, .npz or .npy)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=lambda args: _merge(args))


def _merge(args) -> None:
    from .shards import merge_shards

    merge_shards(args.outdir, args.output, quiet=args.quiet)


def _add_decode(sub) -> None:
    p = sub.add_parser(
        "decode", help=HELP["decode"],
        description="Decode latents (a file from 'gfe encode', or any (N, latent_dim) array) into "
                    "reconstructions in data space (probabilities for bce, rates for poisson).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, help="model directory written by 'gfe train'")
    p.add_argument("latents", type=Path, help="latents file (.h5, .npz with array 'z', or .npy)")
    p.add_argument("-o", "--output", required=True, type=Path, help="reconstructions (.npy)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--std", type=Path, default=None, metavar="FILE",
                   help="also write each reconstruction's standard deviation (.npy, same shape) in the data's units: "
                        "the latents' covariances (from 'gfe encode --uncertainty') propagated through the decoder "
                        "and link to first order; reconstruction +- 2 std is a band of about 95%% for the noise-free "
                        "data, given the decoder. NaN for samples whose uncertainty is not valid")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_decode)


def _decode(args) -> None:
    from .workflows import decode_file

    decode_file(args.model, args.latents, args.output, std=args.std, quiet=args.quiet, device=args.device)


def _add_plot(sub) -> None:
    p = sub.add_parser(
        "plot", help=HELP["plot"],
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
    p.add_argument("--samples", type=int, default=50,
                   help="samples, spread evenly over DATA, encoded for the latent-space view (encoding time grows "
                        "with it)")
    p.add_argument("--show", type=int, default=8, help="samples shown with their reconstructions")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=_plot)


def _plot(args) -> None:
    from .workflows import plot_model

    plot_model(args.model, args.data, args.out, key=args.key, samples=args.samples, show=args.show,
               quiet=args.quiet, device=args.device)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help=HELP["info"],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("path", type=Path, help="model directory or latents file (.h5, .npz, or .npy with its sidecar)")
    p.set_defaults(run=lambda args: print(json.dumps(_info(args.path), indent=2)))


def _info(path: Path) -> dict:
    if path.is_dir():
        from .model_files import verified_model_files  # the config, verified, without PyTorch

        config = verified_model_files(path)[0]
        return _brief({key: config[key] for key in ("gfe_version", "decoder", "encoder", "settings", "weights_sha256")})
    from .latents import read_latents  # h5py: only for latents files

    z, meta = read_latents(path)
    return _brief({"samples": z.shape[0], "latent_dim": z.shape[1], "provenance": meta})


def _brief(value):
    """`value` with long lists of numbers (axes, grids, weights) summarised as 'N values FIRST..LAST'."""
    if isinstance(value, dict):
        return {key: _brief(item) for key, item in value.items()}
    if isinstance(value, list):
        if len(value) > 8 and all(isinstance(v, (int, float)) for v in value):
            return f"{len(value)} values {value[0]:g}..{value[-1]:g}"
        return [_brief(item) for item in value]
    return value


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help=HELP["demo"],
        description="Train GFE and an autoencoder with the same decoder on few samples of scikit-learn's "
                    "8x8 digits, print test losses and timings, and write reconstructions.png and "
                    "loss_curves.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gfe-demo"), help="folder for the plots and results.json")
    p.add_argument("--samples", type=int_list, default=[50, 200, 800],
                   help="training-set sizes to compare (comma-separated)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(run=lambda args: _demo(args))


def _demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, samples=args.samples, quiet=args.quiet)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help=HELP["data"])
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
                   help="draw Poisson counts with this expected total per spectrum (without it: noiseless)")
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


def _add_bench(sub) -> None:
    from .bench import (calibration, data_efficiency, encoding, gradients, sharded_encoding, solvers, spectra,
                        stability, startup, stream_memory)

    p = sub.add_parser("bench", help=HELP["bench"])
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for module in (data_efficiency, encoding, sharded_encoding, spectra, gradients, solvers, stream_memory,
                   calibration, stability, startup):
        module.add_parser(bench)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `gfe` parser; for arguments `argv`, only the options of the command
    they name are built (the others are listed by name), since building some
    imports PyTorch: so `gfe --help` answers in a fraction of a second
    (measured by `gfe bench startup`)."""
    command = None if argv is None else next((arg for arg in argv if not arg.startswith("-")), "")
    parser = argparse.ArgumentParser(
        prog="gfe", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Gradient Flow Encoding: an autoencoder without an encoder. Samples are encoded by "
                    "integrating a gradient flow of the reconstruction loss in latent space against a "
                    "decoder, and the decoder is trained on those latents.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adders = {"demo": _add_demo, "data": _add_data, "train": _add_train, "encode": _add_encode,
              "merge": _add_merge, "decode": _add_decode, "plot": _add_plot, "info": _add_info, "bench": _add_bench}
    for name, add in adders.items():
        if command is None or name == command:
            add(sub)
        else:
            sub.add_parser(name, help=HELP[name])
    return parser


class _Version(argparse.Action):
    """--version, looked up only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show gfe's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from .version import gfe_version

        parser.exit(message=f"gfe {gfe_version()}\n")


def main(argv: list[str] | None = None) -> int:
    from .errors import GFEError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
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
