"""GFE versus the autoencoder versus PCA on INS spectra, at equal latent size.

Protocol: spectra are normalised per sample to unit mean (over the file's mask);
a fixed random test set is held out; for each training size N and training seed
every neural method trains the same convolutional decoder (same initial weights,
same sample order, the same `latent_penalty` and `latent_noise`) for `epochs`
passes. On the test set we report the reconstruction MSE (of normalised spectra,
masked pixels excluded), the cross-validated R² of a ridge regression from test
latents to each continuous generating parameter (how much physics the latent
holds), and wall times for training and encoding; `summary` averages the seeds.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import torch

from ..cli_args import int_list, seed_list
from ..encode import encode
from ..errors import DataError
from ..models import Conv1dDecoder, Conv2dDecoder
from ..normalise import normalise
from ..train import TrainConfig, Trainer
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


def _neural(method, x_train, x_test, mask, *, latent_dim, epochs, batch_size, lr, seed, latent_penalty,
            latent_noise):
    decoder_class = Conv2dDecoder if x_train.ndim == 3 else Conv1dDecoder
    torch.manual_seed(seed)
    decoder = decoder_class(latent_dim, x_train.shape[1:], channels=(32, 16, 8))
    config = TrainConfig(method=method, latent_dim=latent_dim, epochs=epochs, batch_size=batch_size,
                         optimizer="adam", lr=lr, loss="mse", seed=seed,
                         latent_penalty=latent_penalty, latent_noise=latent_noise)
    trainer = Trainer(config, x_train.shape[1:], decoder=decoder, progress=False, weights=mask)
    start = time.perf_counter()
    trainer.fit(x_train)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    xt = torch.from_numpy(x_test)
    if trainer.config.is_gfe:  # as `gfe encode` encodes with the saved model: from its start map
        z = encode(trainer.decoder, xt, z0=trainer.start_map(), weights=mask, **trainer.settings()["encode"]).z
    else:
        with torch.no_grad():
            z, _, _ = trainer.latents(xt, training=False)
    encode_seconds = time.perf_counter() - start
    with torch.no_grad():
        recon = trainer.decoder(z).numpy()
    return z.detach().numpy(), recon, train_seconds, encode_seconds


def _pca(x_train, x_test, *, latent_dim):
    from sklearn.decomposition import PCA

    n_components = min(latent_dim, len(x_train))
    start = time.perf_counter()
    pca = PCA(n_components=n_components).fit(x_train.reshape(len(x_train), -1))
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    z = pca.transform(x_test.reshape(len(x_test), -1))
    encode_seconds = time.perf_counter() - start
    recon = pca.inverse_transform(z).reshape(x_test.shape)
    return z, recon, train_seconds, encode_seconds


def run(data, samples: list[int], *, methods=METHODS, n_test: int = 500, latent_dim: int = 8, epochs: int = 20,
        batch_size: int = 5, lr: float = 1e-3, seeds=(0,), latent_penalty: float = 0.0, latent_noise: float = 0.0,
        plots=None, progress: bool = True) -> dict:
    """Run the benchmark on the spectra file `data`; write PNGs into `plots` if given.
    The test set is drawn once (seed 0); `seeds` seed the neural methods' training."""
    from ..ins.io import load_spectra  # here: gfe.ins loads the spectra generator, which `gfe --help` need not

    known("methods", methods, METHODS)
    at_least(1, samples=samples, latent_dim=latent_dim, epochs=epochs)
    at_least(0, seeds=seeds)
    at_least(2 * PROBE_FOLDS, n_test=n_test)  # R² needs two or more test spectra in each of the probe's folds
    spectra = load_spectra(data)
    if spectra.labels is None:
        raise DataError(f"{data} has no labels (generating parameters); the latent probe needs them")
    if max(samples) + n_test > len(spectra.x):
        raise DataError(f"{data} holds {len(spectra.x)} spectra; {max(samples)} training and {n_test} test "
                        "spectra were asked for")
    x, _ = normalise(spectra.x, "mean", spectra.mask)
    order = np.random.default_rng(0).permutation(len(x))
    test, pool = order[:n_test], order[n_test:]
    x_test, y_test = x[test], spectra.labels[test]
    results, shown = [], {}
    for n, seed, method in itertools.product(samples, seeds, methods):
        x_train = x[pool[:n]]
        if method == "pca":
            z, recon, train_s, encode_s = _pca(x_train, x_test, latent_dim=latent_dim)
        else:
            z, recon, train_s, encode_s = _neural(method, x_train, x_test, spectra.mask, latent_dim=latent_dim,
                                                  epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                                  latent_penalty=latent_penalty, latent_noise=latent_noise)
        r2 = probe_r2(z, y_test, spectra.label_names)
        knn = probe_r2(z, y_test, spectra.label_names, model="knn")
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
        _plot(summary, methods, x_test, shown, Path(plots), max(samples))
    return {
        "benchmark": "spectra", "data": str(data), "kind": spectra.kind, "shape": list(x.shape[1:]),
        "n_test": n_test, "latent_dim": latent_dim, "epochs": epochs, "batch_size": batch_size,
        "optimizer": "adam", "lr": lr, "loss": "mse on per-sample mean-normalised spectra", "seeds": list(seeds),
        "latent_penalty": latent_penalty, "latent_noise": latent_noise,
        "probe": f"{PROBE_FOLDS}-fold CV ridge (standardised latents, penalty chosen inside each fold by RidgeCV) "
                 "on the test latents; mean over continuous labels. probe_knn: the same folds with "
                 f"{PROBE_NEIGHBOURS}-nearest-neighbour regression (nonlinear)",
        "machine": machine(),
        "results": results, "summary": summary,
    }


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "spectra", "GFE vs autoencoder vs PCA on INS spectra: test error, physics in the latent, time",
        "On an INS spectra file (from 'gfe data ins'), train GFE (AMD and Nesterov), the autoencoder with the "
        "same convolutional decoder, and PCA, at equal latent size and several training sizes; report test "
        "reconstruction MSE (per-sample mean-normalised spectra), cross-validated ridge R^2 from test latents to "
        "the generating parameters, and training and encoding times. Writes the plots next to --json. See "
        "docs/spectra.md.")
    q.add_argument("--data", required=True, type=Path, help="INS spectra file with labels")
    q.add_argument("--samples", type=int_list, default=[50, 100, 300], help="training-set sizes")
    q.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    q.add_argument("--n-test", type=int, default=500,
                   help="held-out spectra, at least 10 (the probe's cross-validation runs on their latents; with "
                        "few, its R^2 varies between folds and seeds; measured: docs/spectra.md)")
    q.add_argument("--latent-dim", type=int, default=8)
    q.add_argument("--epochs", type=int, default=20, help="passes over the training spectra")
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
    result = run(args.data, args.samples, methods=args.methods.split(","), n_test=args.n_test,
                 latent_dim=args.latent_dim, epochs=args.epochs, seeds=args.seeds,
                 latent_penalty=args.latent_penalty, latent_noise=args.latent_noise,
                 plots=None if args.json is None else args.json.parent, progress=not args.quiet)
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
