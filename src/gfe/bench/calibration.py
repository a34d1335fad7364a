"""Are the latents' error bars right? Coverage of the Laplace intervals (`gfe.uncertainty`)
on data drawn from a known decoder with known noise.

A random float64 MLP (latent d -> hidden tanh -> features) is the true decoder.
Latents are drawn from N(0, I), data from the decoder's likelihood: Gaussian with
noise σ (σ given to the approximation, or estimated per sample), Gaussian with the
L2 prior that is N(0, I) in the likelihood's units (penalty σ²/n), and Poisson
counts at several expected totals per sample (the decoder's log-rates shifted by
a constant), without and with that prior (penalty 1/(2n)). Each sample is encoded with the true decoder from z0 = 0 and the
interval z* ± k·std checked against the true latent: per coordinate at 68.27%
(k = 1) and 95% (k = 1.96), and jointly, (z* - z)ᵀ Σ⁻¹ (z* - z) against the
χ²_d quantiles. Samples whose uncertainty is not valid (unconverged, flat) are
counted and left out of the coverage.

With `--ins COUNTS.h5 --ins-clean CLEAN.h5` (`gfe data ins` with the same seed and
settings, with and without `--counts`), it also trains a decoder on the Poisson
counts of the first maps (mask as weights) and checks the reconstruction bands
(`gfe decode --std`'s, ±k std of the rates) of held-out maps against their
noise-free rates, the clean maps scaled to the counts' expected totals: there the
decoder is learned, so its misfit shows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..data import open_samples
from ..encode import encode
from ..encode_settings import EncodeSettings
from ..errors import ConfigError
from ..losses import Loss, link
from ..models import MLPDecoder
from ..train import Trainer
from ..train_config import TrainConfig
from ..uncertainty import Validity, as_float64, laplace, propagate
from . import at_least, cli, known
from .data_efficiency import machine

LEVELS = (0.6827, 0.95)
CASES = ("gaussian", "gaussian-estimated", "gaussian-prior", "poisson", "poisson-prior")
ENCODE = {"gtol": 1e-6, "max_steps": 5000, "tau": 1e6}  # the Newton test (gfe.uncertainty) judges convergence


def true_decoder(latent_dim: int, n_features: int, hidden: int, seed: int) -> MLPDecoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLPDecoder(latent_dim, (n_features,), hidden=(hidden,), activation="tanh").double().eval()


def shifted(decoder: MLPDecoder, shift: float) -> MLPDecoder:
    """A copy of `decoder` whose outputs are all `shift` higher (log-rates: counts scaled by e^shift)."""
    copy = MLPDecoder(decoder.latent_dim, decoder.out_shape, hidden=decoder.hidden, activation="tanh").double()
    copy.load_state_dict(decoder.state_dict())
    with torch.no_grad():
        copy.net[-1].bias += shift
    return copy.eval()


def coverage(z: torch.Tensor, z_true: torch.Tensor, latent) -> dict:
    """Empirical coverage of the per-coordinate and joint intervals over the valid samples."""
    from scipy.stats import chi2, norm  # here, not at the top: building gfe's parser must not load SciPy

    valid = latent.status == Validity.VALID
    error = (z - z_true)[valid]
    result = {"valid": int(valid.sum()), "status": latent.status_counts()}
    if not valid.any():
        return result
    d = z.shape[1]
    scores = error / latent.std[valid]
    mahalanobis = torch.einsum("bd,bde,be->b", error, torch.linalg.inv(latent.cov[valid]), error)
    for level in LEVELS:
        k = norm.ppf(0.5 + level / 2)
        result[f"coverage_{level:g}"] = float((scores.abs() <= k).double().mean())
        result[f"joint_coverage_{level:g}"] = float((mahalanobis <= chi2.ppf(level, d)).double().mean())
    result["median_std"] = float(latent.std[valid].median())
    result["rms_z_score"] = float(scores.square().mean().sqrt())
    return result


def run(*, cases=CASES, counts=(10, 100, 1000, 10000), n_samples: int = 500, latent_dim: int = 4,
        n_features: int = 64, hidden: int = 32, noise_std: float = 0.05, seed: int = 0,
        progress: bool = True) -> dict:
    known("cases", cases, CASES)
    at_least(1, n_samples=n_samples, latent_dim=latent_dim, n_features=n_features, hidden=hidden)
    if not counts or min(counts) <= 0:
        raise ConfigError(f"counts must be one or more positive numbers; got {list(counts)!r}")
    decoder = true_decoder(latent_dim, n_features, hidden, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    z_true = torch.randn(n_samples, latent_dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        mean = decoder(z_true)
    results = []
    for case in cases:
        if case.startswith("poisson"):
            typical = math.log(float(link("poisson", mean).sum(1).mean()))
            loss = Loss("poisson", "l2", 1 / (2 * n_features)) if case == "poisson-prior" else Loss("poisson")
            runs = [(f"{case}-{c:g}", shifted(decoder, math.log(c) - typical), loss, None, c) for c in counts]
        else:
            penalty = Loss("mse", "l2", noise_std**2 / n_features) if case == "gaussian-prior" else Loss("mse")
            given = None if case == "gaussian-estimated" else noise_std
            runs = [(case, decoder, penalty, given, None)]
        for name, dec, loss, given, level in runs:
            with torch.no_grad():
                out = dec(z_true)
            x = (torch.poisson(link("poisson", out), generator=gen) if loss.name == "poisson"
                 else out + noise_std * torch.randn(out.shape, generator=gen, dtype=torch.float64))
            encoding = encode(dec, x, loss=loss, **ENCODE)
            latent = laplace(dec, loss, x, encoding.z, noise_std=given)
            record = {"case": name, "loss": loss.name, "penalty_weight": loss.penalty_weight,
                      "noise_std": given if loss.name == "mse" else None, "expected_counts": level,
                      "mean_counts": float(x.sum(1).mean()) if level else None,
                      **coverage(encoding.z, z_true, latent)}
            results.append(record)
            if progress:
                print(f"{name:>20}: valid {record['valid']}/{n_samples}, coverage 68% "
                      f"{record.get('coverage_0.6827', float('nan')):.3f}, 95% "
                      f"{record.get('coverage_0.95', float('nan')):.3f}; joint 68% "
                      f"{record.get('joint_coverage_0.6827', float('nan')):.3f}, 95% "
                      f"{record.get('joint_coverage_0.95', float('nan')):.3f}", flush=True)
    return {"benchmark": "calibration", "n_samples": n_samples, "latent_dim": latent_dim, "n_features": n_features,
            "hidden": hidden, "noise_std": noise_std, "seed": seed, "encode_options": ENCODE, "levels": LEVELS,
            "machine": machine(), "results": results}


def ins_bands(counts_path, clean_path, *, n_train: int = 500, latent_dim: int = 8, epochs: int = 30,
              seed: int = 0, progress: bool = True) -> dict:
    """Coverage of the reconstruction bands of held-out INS maps (see the module's docstring)."""
    from scipy.stats import norm

    with open_samples(counts_path) as counts, open_samples(clean_path) as clean:
        x, truth = counts.read(), clean.read().astype(np.float64)
        mask = getattr(counts.on_disk, "mask", None)
        expected = getattr(counts.on_disk, "attrs", {}).get("settings", {}).get("counts")
    if x.shape != truth.shape or n_train >= len(x):
        raise ConfigError(f"the counts and clean INS files must hold the same maps, more than n_train={n_train}; "
                          f"got shapes {x.shape} and {truth.shape}")
    config = TrainConfig(method="gfe-amd", latent_dim=latent_dim, epochs=epochs, batch_size=16, optimizer="adam",
                         lr=1e-3, loss="poisson", seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = MLPDecoder(latent_dim, x.shape[1:], hidden=(128, 256))
    trainer = Trainer(config, x.shape[1:], decoder=decoder, progress=progress, weights=mask)
    trainer.fit(x[:n_train])
    settings = EncodeSettings.resolve(trainer.settings()["encode"], has_start=trainer.start_map() is not None)
    x_test, truth = x[n_train:], truth[n_train:]
    encoding = settings.flow_encode(trainer.decoder, trainer.start_map(), x_test, weights=mask)
    latent = laplace(trainer.decoder, settings.loss_function, torch.from_numpy(x_test), encoding.z, mask)
    rates = as_float64(trainer.decoder)
    fn = lambda v: link("poisson", rates(v)).flatten(1)  # noqa: E731
    with torch.no_grad():
        recon = fn(encoding.z.double()).numpy()
    std = propagate(fn, encoding.z, latent.cov).numpy()
    totals = x_test.reshape(len(x_test), -1).sum(1, dtype=np.float64)
    clean_totals = truth.reshape(len(truth), -1).sum(1)
    truth = truth.reshape(len(truth), -1) * (totals / np.where(clean_totals > 0, clean_totals, 1))[:, None]
    valid = (latent.status == Validity.VALID).numpy()
    used = np.ones(truth.shape[1], dtype=bool) if mask is None else np.asarray(mask, dtype=bool).ravel()
    error = np.abs(recon - truth)[valid][:, used]
    result = {"n_train": n_train, "n_test": len(x_test), "latent_dim": latent_dim, "epochs": epochs,
              "expected_counts": expected, "valid": int(valid.sum()), "status": latent.status_counts(),
              "relative_rms_error": float(np.sqrt(np.mean(error**2)) / np.mean(truth[valid][:, used])),
              "median_band_over_error": float(np.median(std[valid][:, used]) / np.median(error))}
    for level in LEVELS:
        result[f"band_coverage_{level:g}"] = float((error <= norm.ppf(0.5 + level / 2) * std[valid][:, used]).mean())
    if progress:
        print(f"INS reconstruction bands: valid {result['valid']}/{len(x_test)}, coverage 68% "
              f"{result['band_coverage_0.6827']:.3f}, 95% {result['band_coverage_0.95']:.3f}", flush=True)
    return result


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "calibration", "coverage of the latents' Laplace intervals on data from a known decoder",
        "Draw latents from N(0, I) and data from a known random decoder with known noise (Gaussian with sigma "
        "given, estimated, or with the matching L2 prior; Poisson counts at several expected totals per sample, without "
        "and with that prior), "
        "encode them with that decoder and report how often z* +- k std holds the true latent (68.27% and 95%, "
        "per coordinate and jointly by chi-squared). Calibrated intervals cover at the nominal rates.")
    q.add_argument("--cases", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    q.add_argument("--counts", default="10,100,1000,10000",
                   help="expected total counts per sample of the poisson case (comma-separated)")
    q.add_argument("--n-samples", type=int, default=500, help="samples per case")
    q.add_argument("--latent-dim", type=int, default=4, help="latent dimension of the true decoder")
    q.add_argument("--n-features", type=int, default=64, help="features per sample")
    q.add_argument("--noise-std", type=float, default=0.05, help="Gaussian noise level of the gaussian cases")
    q.add_argument("--seed", type=int, default=0, help="seeds the decoder, latents and noise")
    q.add_argument("--ins", type=Path, default=None, metavar="COUNTS.h5",
                   help="also check reconstruction bands on INS maps: 'gfe data ins --counts N' output ...")
    q.add_argument("--ins-clean", type=Path, default=None, metavar="CLEAN.h5",
                   help="... and the same maps without --counts (same --seed and settings): the noise-free truth")
    q.add_argument("--ins-train", type=int, default=500, help="maps of --ins the decoder is trained on (the rest "
                                                              "are held out)")
    q.add_argument("--ins-epochs", type=int, default=30, help="training epochs of the INS decoder")
    cli.add_result_options(q)
    q.set_defaults(run=_command)


def _command(args) -> None:
    counts = [float(c) for c in args.counts.split(",") if c.strip()]
    if (args.ins is None) != (args.ins_clean is None):
        raise ConfigError("--ins and --ins-clean go together: the counts and the noise-free maps")
    result = run(cases=args.cases.split(","), counts=counts, n_samples=args.n_samples, latent_dim=args.latent_dim,
                 n_features=args.n_features, noise_std=args.noise_std, seed=args.seed, progress=not args.quiet)
    if args.ins is not None:
        result["ins"] = {"counts_file": str(args.ins), "clean_file": str(args.ins_clean),
                         **ins_bands(args.ins, args.ins_clean, n_train=args.ins_train, epochs=args.ins_epochs,
                                     seed=args.seed, progress=not args.quiet)}
    cli.emit(result, args.json, args.quiet)
