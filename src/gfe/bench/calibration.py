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
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import chi2, norm

from ..encode import encode
from ..errors import ConfigError
from ..losses import Loss, link
from ..models import MLPDecoder
from ..uncertainty import Validity, laplace
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


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "calibration", "coverage of the latents' Laplace intervals on data from a known decoder",
        "Draw latents from N(0, I) and data from a known random decoder with known noise (Gaussian with sigma "
        "given, estimated, or with the matching L2 prior; Poisson counts at several expected totals per sample, without "
        "and with that prior), "
        "encode them with that decoder and report how often z* +- k std holds the true latent (68.27%% and 95%%, "
        "per coordinate and jointly by chi-squared). Calibrated intervals cover at the nominal rates.")
    q.add_argument("--cases", default=",".join(CASES), help="comma-separated cases: " + ", ".join(CASES))
    q.add_argument("--counts", default="10,100,1000,10000",
                   help="expected total counts per sample of the poisson case (comma-separated)")
    q.add_argument("--n-samples", type=int, default=500, help="samples per case")
    q.add_argument("--latent-dim", type=int, default=4, help="latent dimension of the true decoder")
    q.add_argument("--n-features", type=int, default=64, help="features per sample")
    q.add_argument("--noise-std", type=float, default=0.05, help="Gaussian noise level of the gaussian cases")
    q.add_argument("--seed", type=int, default=0, help="seeds the decoder, latents and noise")
    cli.add_result_options(q)
    q.set_defaults(run=_command)


def _command(args) -> None:
    counts = [float(c) for c in args.counts.split(",") if c.strip()]
    result = run(cases=args.cases.split(","), counts=counts, n_samples=args.n_samples, latent_dim=args.latent_dim,
                 n_features=args.n_features, noise_std=args.noise_std, seed=args.seed, progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)
