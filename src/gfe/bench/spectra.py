"""GFE versus the autoencoder versus PCA on spectra, at equal latent size: generated
INS maps with their generating parameters, or any measured spectra file with a
table of reference values (e.g. concentrations measured alongside).

Protocol: the channels are selected (`ranges`), spectra are normalised per sample
(by default to unit mean over the mask) and optionally standardised per feature
with the training spectra's statistics; a fixed random test set is held out; for
each training size N and training seed every neural method trains the same
decoder (same initial weights, same sample order, the same `latent_penalty` and
`latent_noise`) for `epochs` passes on the training spectra less a validation
share (`val_fraction`, as `gfe train --val-fraction`; none by default), keeping the epoch of lowest
validation loss as `gfe train` does (for a decoder initialised from data, e.g.
PCA, its start unless an epoch beats it clearly: `gfe.train.Trainer.fit`), and
with `retrain_all` training that many epochs again on all the training spectra
(`gfe train --retrain-all`); PCA fits all the training spectra. We report the test reconstruction MSE (masked
pixels excluded), the cross-validated R² of a ridge regression from latents to
each reference quantity (the test spectra's generating parameters, or the
reference table's values at its rows), and wall times for training and encoding;
`summary` averages the seeds.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cli_args import DATA_HELP, int_list, seed_list
from ..encode_settings import EncodeSettings
from ..errors import ConfigError, DataError
from ..models import DECODERS, Conv1dDecoder, Conv2dDecoder
from ..normalise import NORMALISATIONS, Standardisation, normalise
from ..samples import split, validate_data
from ..train import Trainer
from ..train_config import LR_SCHEDULES, TrainConfig
from . import at_least, cli, known
from .data_efficiency import machine

METHODS = ("gfe-amd", "gfe-nesterov", "ae", "pca")
CATEGORICAL_LABELS = ("family",)  # an index, not a quantity: left out of the ridge probe
PROBE_ALPHAS = np.logspace(-3, 4, 15)
PROBE_FOLDS = 5
PROBE_NEIGHBOURS = 10


def probe_r2(z: np.ndarray, labels: np.ndarray, names, *, folds: int = PROBE_FOLDS, seed: int = 0,
             model: str = "ridge") -> dict[str, float]:
    """Cross-validated R² per label of a regression from standardised latents.
    "ridge" (the benchmark's probe: how linearly the latents hold the physics)
    chooses its penalty inside each training fold (leave-one-out over a log
    grid): a fixed one lets a few far-out latents swing the fit, which says more
    about the penalty than about what the latents hold. "knn" (10 nearest
    neighbours) asks whether the latents hold it at all, linearly or not."""
    from sklearn.linear_model import RidgeCV  # scikit-learn takes seconds to import: not for `gfe --help`
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, len(z))
    cv = np.random.default_rng(seed).permutation(len(z)) % folds  # fixed, shuffled folds
    splits = [(np.flatnonzero(cv != k), np.flatnonzero(cv == k)) for k in range(folds)]
    scores = {}
    for name, y in zip(names, labels.T):
        if name in CATEGORICAL_LABELS or np.ptp(y) == 0:
            continue
        regressor = (RidgeCV(alphas=PROBE_ALPHAS) if model == "ridge"
                     else KNeighborsRegressor(n_neighbors=min(PROBE_NEIGHBOURS, len(splits[0][0]))))
        scores[name] = float(np.mean(cross_val_score(make_pipeline(StandardScaler(), regressor), z, y, cv=splits,
                                                     scoring="r2")))
    return scores


def _masked_mse(recon: np.ndarray, x: np.ndarray, mask) -> float:
    w = np.ones(x.shape[1:]) if mask is None else mask.astype(float)
    return float(np.mean(((recon - x) ** 2 * w).reshape(len(x), -1).sum(1) / w.sum()))


def _neural(method, x_train, x_test, x_probe, mask, *, decoder, latent_dim, epochs, batch_size, lr, lr_schedule,
            seed, latent_penalty, latent_noise, val_fraction, retrain_all):
    """Train `method` on `x_train` (a `val_fraction` of it validating, split as `gfe
    train` splits); the test latents, reconstructions and probe latents, encoded as
    `gfe encode` encodes with the saved model (from its start map)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if decoder == "conv":
            model = (Conv2dDecoder if x_train.ndim == 3 else Conv1dDecoder)(latent_dim, x_train.shape[1:],
                                                                           channels=(32, 16, 8))
        else:
            model = DECODERS[decoder].decoder(latent_dim, x_train.shape[1:])
    config = TrainConfig(method=method, latent_dim=latent_dim, epochs=epochs, batch_size=batch_size,
                         optimizer="adam", lr=lr, lr_schedule=lr_schedule, loss="mse", seed=seed,
                         latent_penalty=latent_penalty, latent_noise=latent_noise, retrain_all=retrain_all)
    trainer = Trainer(config, x_train.shape[1:], decoder=model, progress=False, weights=mask)
    n_val = int(round(val_fraction * len(x_train)))
    x_fit, x_val = split(x_train, len(x_train) - n_val, n_val, seed=seed)
    start = time.perf_counter()
    trainer.fit(x_fit, x_val if n_val else None)
    if retrain_all:
        trainer = trainer.retrained(x_fit, x_val)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    latents = _latents_of(trainer, mask)
    z = latents(x_test)
    encode_seconds = time.perf_counter() - start
    with torch.no_grad():
        recon = trainer.decoder(z).numpy()
    return z.detach().numpy(), recon, latents(x_probe).detach().numpy(), train_seconds, encode_seconds


def _latents_of(trainer: Trainer, mask):
    """The trained model's latents as `gfe encode` gives them from the saved model: the flow
    from its start map (solved and its settings resolved once), or the autoencoder's encoder."""
    if not trainer.config.is_gfe:
        def from_encoder(x):
            with torch.no_grad():
                return trainer.latents(torch.from_numpy(x), training=False)[0]

        return from_encoder
    start_map = trainer.start_map()
    settings = EncodeSettings.resolve(trainer.settings()["encode"], has_start=start_map is not None)
    return lambda x: settings.flow_encode(trainer.decoder, start_map, x, weights=mask).z


def _pca(x_train, x_test, x_probe, *, latent_dim):
    from sklearn.decomposition import PCA

    flat = x_train.reshape(len(x_train), -1)
    start = time.perf_counter()
    pca = PCA(n_components=min(latent_dim, *flat.shape), svd_solver="full").fit(flat)  # exact, reproducible
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    z = pca.transform(x_test.reshape(len(x_test), -1))
    encode_seconds = time.perf_counter() - start
    recon = pca.inverse_transform(z).reshape(x_test.shape)
    return z, recon, pca.transform(x_probe.reshape(len(x_probe), -1)), train_seconds, encode_seconds


@dataclass(frozen=True)
class _Spectra:
    """The benchmark's data: samples (channels selected, normalised per sample), the
    loss mask, the fixed test rows and the training pool, and the rows and values
    the probe reads latents against."""

    x: np.ndarray
    mask: np.ndarray | None
    test: np.ndarray
    pool: np.ndarray
    probe_rows: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    description: str


def _load(data, *, key, references, ranges, normalise_kind: str, n_test: int, n_train: int) -> _Spectra:
    """Spectra from any file gfe reads, with the generating parameters of an INS file
    (probed on the test latents) or a `references` table (probed at its rows)."""
    from ..channels import Channels
    from ..data import open_samples

    with open_samples(data, key) as samples:
        dataset = samples.on_disk
        channels = Channels.choose(dataset, ranges)
        mask = channels.loss_weights(getattr(dataset, "mask", None))
        x, _ = normalise(validate_data(channels.select(samples.read())), normalise_kind, mask)
    if n_train + n_test > len(x):
        raise DataError(f"{data} holds {len(x)} spectra; {n_train} training and {n_test} test spectra were asked for")
    order = np.random.default_rng(0).permutation(len(x))
    test, pool = order[:n_test], order[n_test:]
    if references is not None:
        rows, labels, names = read_references(references, len(x))
    elif getattr(dataset, "labels", None) is not None:
        rows, labels, names = test, dataset.labels[test], dataset.label_names
    else:
        raise DataError(f"{data} has no labels; give reference values for the latent probe (references=...)")
    return _Spectra(x, mask, test, pool, rows, labels, tuple(names), channels.describe() or "all channels")


def read_references(path, n_samples: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A CSV of reference values: a header naming a `row` column (the spectrum each
    reference belongs to, counted from 0) and one column per quantity."""
    table = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64, encoding="utf-8")
    names = table.dtype.names or ()
    if "row" not in names or len(names) < 2:
        raise DataError(f"{path} must have a header with a 'row' column (the spectrum's row, from 0) and at least "
                        f"one column of reference values; got columns {list(names)}")
    table = np.atleast_1d(table)
    rows = table["row"]
    values = np.column_stack([table[name] for name in names if name != "row"])
    if not (np.isfinite(rows).all() and np.array_equal(rows, np.round(rows)) and 0 <= rows.min()
            and rows.max() < n_samples and np.isfinite(values).all()):
        raise DataError(f"{path}: rows must be whole numbers from 0 to {n_samples - 1} and every value finite")
    return rows.astype(np.int64), values, tuple(name for name in names if name != "row")


def run(data, samples: list[int], *, key=None, references=None, ranges=None, normalise_kind: str = "mean",
        standardise: bool = False, decoder: str = "conv", methods=METHODS, n_test: int = 500, latent_dim: int = 8,
        epochs: int = 20, batch_size: int = 5, lr: float = 1e-3, lr_schedule: str = "constant", seeds=(0,),
        latent_penalty: float = 0.0, latent_noise: float = 0.0, val_fraction: float = 0.0,
        retrain_all: bool = False, plots=None, progress: bool = True) -> dict:
    """Run the benchmark on the spectra in `data`; write PNGs into `plots` if given.

    The test set is drawn once (seed 0); `seeds` seed the neural methods' training.
    `ranges` select channels (as `gfe train --range`); `standardise` scales each
    feature by the training spectra's mean and standard deviation (errors are then
    in those units); `decoder` is "conv" (the convolutional decoder of the data's
    dimension) or a registered decoder name. `val_fraction` of each training set
    validates the neural methods (0: none; they keep their last epoch);
    `retrain_all` retrains them on every training spectrum (`gfe train --retrain-all`)."""
    known("methods", methods, METHODS)
    known("decoder", [decoder], ["conv", *DECODERS])
    at_least(1, samples=samples, latent_dim=latent_dim, epochs=epochs)
    at_least(0, seeds=seeds)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1); got {val_fraction}")
    if retrain_all and not val_fraction:
        raise ConfigError("retrain_all retrains the epochs validation chose: give a validation share (val_fraction)")
    at_least(2 * PROBE_FOLDS, n_test=n_test)  # R² needs two or more test spectra in each of the probe's folds
    spectra = _load(data, key=key, references=references, ranges=ranges, normalise_kind=normalise_kind,
                    n_test=n_test, n_train=max(samples))
    results, shown = [], {}
    for n, seed, method in itertools.product(samples, seeds, methods):
        x = _standardised(spectra.x, spectra.pool[:n]) if standardise else spectra.x
        x_train, x_test, x_probe = x[spectra.pool[:n]], x[spectra.test], x[spectra.probe_rows]
        if method == "pca":
            z, recon, z_probe, train_s, encode_s = _pca(x_train, x_test, x_probe, latent_dim=latent_dim)
        else:
            z, recon, z_probe, train_s, encode_s = _neural(
                method, x_train, x_test, x_probe, spectra.mask, decoder=decoder, latent_dim=latent_dim,
                epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, seed=seed,
                latent_penalty=latent_penalty, latent_noise=latent_noise, val_fraction=val_fraction,
                retrain_all=retrain_all)
        r2 = probe_r2(z_probe, spectra.labels, spectra.names)
        knn = probe_r2(z_probe, spectra.labels, spectra.names, model="knn")
        row = {"method": method, "samples": n, "seed": seed, "test_mse": _masked_mse(recon, x_test, spectra.mask),
               "probe_r2_mean": float(np.mean(list(r2.values()))), "probe_r2": r2,
               "probe_knn_r2_mean": float(np.mean(list(knn.values()))), "probe_knn_r2": knn,
               "train_seconds": train_s, "test_encode_seconds": encode_s}
        results.append(row)
        if n == max(samples) and seed == seeds[0]:
            shown[method] = recon
        if progress:
            print(f"{method:>13} N={n:<5} seed {seed}  test MSE {row['test_mse']:.4f}  probe R² "
                  f"{row['probe_r2_mean']:.3f} (kNN {row['probe_knn_r2_mean']:.3f})  train {train_s:7.2f} s  "
                  f"encode {encode_s:6.2f} s", flush=True)
    summary = _summary(results)
    if plots is not None:
        x_test = (_standardised(spectra.x, spectra.pool[:max(samples)]) if standardise else spectra.x)[spectra.test]
        _plot(summary, methods, x_test, shown, Path(plots), max(samples))
    scaled = "standardised per feature on the training spectra" if standardise else "unscaled features"
    return {
        "benchmark": "spectra", "data": str(data), "channels": spectra.description, "shape": list(spectra.x.shape[1:]),
        "n_test": n_test, "latent_dim": latent_dim, "epochs": epochs, "batch_size": batch_size, "decoder": decoder,
        "optimizer": "adam", "lr": lr, "lr_schedule": lr_schedule, "loss": f"mse; spectra normalised per sample: {normalise_kind}; {scaled}",
        "seeds": list(seeds), "latent_penalty": latent_penalty, "latent_noise": latent_noise,
        "val_fraction": val_fraction, "retrain_all": retrain_all,
        "references": None if references is None else str(references),
        "probe": f"{PROBE_FOLDS}-fold CV ridge (standardised latents, penalty chosen inside each fold by RidgeCV) "
                 f"on the latents of {'the reference rows' if references is not None else 'the test spectra'}; "
                 f"mean over continuous labels. probe_knn: the same folds with {PROBE_NEIGHBOURS}-nearest-neighbour "
                 "regression (nonlinear)",
        "machine": machine(),
        "results": results, "summary": summary,
    }


def _standardised(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`x` standardised per feature with the statistics of `rows`, as `gfe train --standardise` does."""
    return Standardisation.fit([x[rows]]).apply(x)


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "spectra", "GFE vs autoencoder vs PCA on spectra: test error, what the latent holds, time",
        "On an INS spectra file (from 'gfe data ins') or any spectra file with --references, train GFE (AMD and "
        "Nesterov), the autoencoder with the same decoder, and PCA, at equal latent size and several training "
        "sizes; report test reconstruction MSE, cross-validated ridge R^2 from latents to the generating "
        "parameters or reference values, and training and encoding times. Writes the plots next to --json. See "
        "docs/spectra.md and docs/benchmarks.md.")
    q.add_argument("--data", required=True, type=Path, help="spectra: an INS file with labels, or " + DATA_HELP)
    q.add_argument("--key", help="array name in an .npz or dataset path in an HDF5 file")
    q.add_argument("--references", type=Path, default=None,
                   help="CSV of reference values for the probe: a header with a 'row' column (the spectrum's row "
                        "in DATA, from 0) and one column per quantity")
    q.add_argument("--range", dest="ranges", default=None, metavar="LO:HI",
                   help="keep only these channels, as 'gfe train --range' (axis values, else feature indices)")
    q.add_argument("--normalise", default="mean", choices=list(NORMALISATIONS),
                   help="per-sample normalisation, as 'gfe train --normalise'")
    q.add_argument("--standardise", action="store_true",
                   help="scale each feature by the training spectra's mean and standard deviation")
    q.add_argument("--decoder", default="conv",
                   help="'conv' (the convolutional decoder of the data's dimension, channels 32, 16, 8) or a "
                        "registered decoder name (gfe.models.DECODERS)")
    q.add_argument("--samples", type=int_list, default=[50, 100, 300], help="training-set sizes")
    q.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    q.add_argument("--n-test", type=int, default=500,
                   help="held-out spectra, at least 10 (the probe's cross-validation runs on their latents; with "
                        "few, its R^2 varies between folds and seeds; measured: docs/spectra.md)")
    q.add_argument("--latent-dim", type=int, default=8)
    q.add_argument("--epochs", type=int, default=20, help="passes over the training spectra")
    q.add_argument("--lr-schedule", default="constant", choices=list(LR_SCHEDULES),
                   help="the neural methods' learning-rate schedule, as 'gfe train --lr-schedule'")
    q.add_argument("--val-fraction", type=float, default=0.0,
                   help="share of each training set that validates the neural methods, as 'gfe train "
                        "--val-fraction': they keep their best validation epoch (a PCA-initialised decoder its "
                        "start unless training clearly beats it); PCA fits every training spectrum. Default 0: "
                        "no validation, the last epoch")
    q.add_argument("--retrain-all", action="store_true",
                   help="then retrain the neural methods for their best epoch's number of epochs on every "
                        "training spectrum, as 'gfe train --retrain-all'")
    q.add_argument("--seeds", type=seed_list, default=[0],
                   help="training seeds (initial weights, sample order); the summary averages them")
    q.add_argument("--latent-penalty", type=float, default=0.0, metavar="BETA",
                   help="L2 latent prior for every neural method (as 'gfe train --latent-penalty')")
    q.add_argument("--latent-noise", type=float, default=0.0, metavar="SIGMA",
                   help="noise on the decoder's training latents for every neural method "
                        "(as 'gfe train --latent-noise')")
    cli.add_result_options(q, json_help="write the results here (plots beside it)")
    q.set_defaults(run=_command)


def _command(args) -> None:
    result = run(args.data, args.samples, key=args.key, references=args.references, ranges=args.ranges,
                 normalise_kind=args.normalise, standardise=args.standardise, decoder=args.decoder,
                 lr_schedule=args.lr_schedule,
                 methods=args.methods.split(","), n_test=args.n_test,
                 latent_dim=args.latent_dim, epochs=args.epochs, seeds=args.seeds,
                 latent_penalty=args.latent_penalty, latent_noise=args.latent_noise, val_fraction=args.val_fraction,
                 retrain_all=args.retrain_all, plots=None if args.json is None else args.json.parent, progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)


def _summary(results: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of each method and training size."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        groups.setdefault((row["method"], row["samples"]), []).append(row)
    summary = []
    for (method, n), rows in groups.items():
        entry = {"method": method, "samples": n, "seeds": len(rows)}
        for key in ("test_mse", "probe_r2_mean", "probe_knn_r2_mean", "train_seconds"):
            values = [r[key] for r in rows]
            entry[key], entry[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        for key in ("probe_r2", "probe_knn_r2"):
            entry[key] = {name: float(np.mean([r[key][name] for r in rows])) for name in rows[0][key]}
        summary.append(entry)
    return summary


def _plot(summary, methods, x_test, shown, folder: Path, n_max: int) -> None:
    from ..plots import plot_curves, plot_reconstructions  # imports matplotlib

    folder.mkdir(parents=True, exist_ok=True)
    for key, label, name in (("test_mse", "test MSE (normalised spectra)", "spectra_error.png"),
                             ("probe_r2_mean", "probe R² (ridge, CV)", "spectra_probe_r2.png"),
                             ("probe_knn_r2_mean", "probe R² (10 nearest neighbours, CV)",
                              "spectra_probe_knn_r2.png")):
        curves = {m: ([r["samples"] for r in summary if r["method"] == m],
                      [r[key] for r in summary if r["method"] == m]) for m in methods}
        plot_curves(curves, folder / name, xlabel="training spectra", ylabel=label, logx=True)
    plot_reconstructions(x_test, shown, folder / "spectra_reconstructions.png", n=6,
                         title=f"test spectra and reconstructions (N = {n_max})")
