"""How far do latents move under small input noise? GFE (from its learned start and
from zero, with and without a latent prior) against the autoencoder and PCA.

Protocol: each model is trained as the data-efficiency benchmark trains (one pass
over N samples, batch 5, RMSprop lr 5e-4, BCE, the MNIST MLP; latent_dim 20), PCA
with as many components. Held-out samples are encoded clean and with Gaussian
noise of standard deviation `noise` added (clipped to [0, 1]). The shift of a
latent is `|z(x + ε) - z(x)|` over the latent cloud's RMS radius
`sqrt(mean |z - z̄|²)` of the clean latents, so methods with latents of other
scales compare. Reconstruction error (mean squared, in the data's units) and the
mean per-pixel BCE say what each model gives for its stability. For GFE the shift
is also measured in the latent's own Laplace standard deviations
(`sqrt(Δzᵀ Σ⁻¹ Δz)`, over samples whose uncertainty is valid).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import load_dataset
from ..encode_settings import EncodeSettings
from ..losses import Loss, link
from ..samples import split
from ..train import Trainer
from ..train_config import TrainConfig
from ..uncertainty import Validity, laplace
from . import at_least, cli
from .data_efficiency import _decoder, machine


def latent_radius(z: np.ndarray) -> float:
    """The RMS distance of latents from their mean: the scale shifts are measured on."""
    return float(np.sqrt(np.mean(np.sum(np.square(z - z.mean(0)), axis=1))))


def shift_statistics(z: np.ndarray, z_noisy: np.ndarray) -> dict:
    radius = latent_radius(z)
    shift = np.linalg.norm(z_noisy - z, axis=1) / radius
    return {"latent_radius": radius, "median_shift": float(np.median(shift)),
            "p90_shift": float(np.quantile(shift, 0.9))}


def _errors(x: np.ndarray, recon: np.ndarray) -> dict:
    flat, r = x.reshape(len(x), -1).astype(np.float64), recon.reshape(len(x), -1).astype(np.float64)
    clipped = np.clip(r, 1e-7, 1 - 1e-7)
    bce = -(flat * np.log(clipped) + (1 - flat) * np.log(1 - clipped)).mean()
    return {"test_mse": float(np.square(flat - r).mean()), "test_bce": float(bce)}


def _gfe_rows(name: str, trainer: Trainer, x: np.ndarray, x_noisy: np.ndarray, start: str) -> dict:
    settings = EncodeSettings.resolve(trainer.settings()["encode"], {"start": start},
                                      has_start=trainer.start_map() is not None)
    decoder, start_map = trainer.decoder.eval(), trainer.start_map()
    clean = settings.flow_encode(decoder, start_map, x)
    noisy = settings.flow_encode(decoder, start_map, x_noisy)
    z, z_noisy = clean.z.numpy(), noisy.z.numpy()
    with torch.no_grad():
        recon = link("bce", decoder(clean.z)).numpy()
    latent = laplace(decoder, settings.loss_function, torch.from_numpy(x), clean.z)
    valid = latent.status == Validity.VALID
    delta = (noisy.z - clean.z).double()[valid]
    in_std = torch.einsum("bd,bde,be->b", delta, torch.linalg.inv(latent.cov[valid]), delta).sqrt()
    return {"method": name, **shift_statistics(z, z_noisy), **_errors(x, recon),
            "uncertainty_valid": int(valid.sum()),
            "median_shift_in_std": float(in_std.median()) if valid.any() else None,
            "median_std_over_radius": float(latent.std[valid].median()) / latent_radius(z) if valid.any() else None}


def run(dataset: str = "mnist", *, n_train: int = 1000, n_test: int = 500, noise: float = 0.02,
        penalties=(1e-5, 1e-4), latent_dim: int = 20, seed: int = 0, progress: bool = True) -> dict:
    at_least(1, n_train=n_train, n_test=n_test, latent_dim=latent_dim)
    from sklearn.decomposition import PCA  # here, not at the top: building gfe's parser must not load it

    data = load_dataset(dataset)
    x_train, x_test = split(data.x, n_train, n_test, seed=seed)
    rng = np.random.default_rng(seed)
    x_noisy = np.clip(x_test + noise * rng.standard_normal(x_test.shape), 0, 1).astype(x_test.dtype)
    shape = tuple(data.x.shape[1:])
    rows = []

    def train(method: str, penalty: float = 0.0) -> Trainer:
        config = TrainConfig(method=method, latent_dim=latent_dim, batch_size=5, optimizer="rmsprop", lr=5e-4,
                             seed=seed, latent_penalty=penalty)
        trainer = Trainer(config, shape, decoder=_decoder(shape, latent_dim, seed), progress=progress)
        trainer.fit(x_train)
        return trainer

    plain = train("gfe-amd")
    rows += [_gfe_rows("gfe-amd (learned start)", plain, x_test, x_noisy, "learned"),
             _gfe_rows("gfe-amd (zero start)", plain, x_test, x_noisy, "zero")]
    for penalty in penalties:
        rows.append({**_gfe_rows(f"gfe-amd, latent penalty {penalty:g}", train("gfe-amd", penalty), x_test, x_noisy,
                                 "learned"), "latent_penalty": penalty})
    ae = train("ae")
    with torch.no_grad():
        z, z_noisy = (ae.latents(torch.from_numpy(a), training=False)[0] for a in (x_test, x_noisy))
        recon = link("bce", ae.decoder(z)).numpy()
    rows.append({"method": "ae", **shift_statistics(z.numpy(), z_noisy.numpy()), **_errors(x_test, recon)})
    pca = PCA(latent_dim, random_state=seed).fit(x_train.reshape(n_train, -1))
    z, z_noisy = (pca.transform(a.reshape(len(a), -1)) for a in (x_test, x_noisy))
    rows.append({"method": "pca", **shift_statistics(z, z_noisy), **_errors(x_test, pca.inverse_transform(z))})
    if progress:
        for row in rows:
            print(f"{row['method']:>32}: median shift {row['median_shift']:.4f} of the latent radius (p90 "
                  f"{row['p90_shift']:.4f}), test MSE {row['test_mse']:.4f}, BCE {row['test_bce']:.4f}", flush=True)
    return {"benchmark": "stability", "dataset": data.name, "n_train": n_train, "n_test": n_test, "noise": noise,
            "latent_dim": latent_dim, "seed": seed, "loss": Loss("bce").name, "machine": machine(), "results": rows}


def add_parser(bench) -> None:
    q = cli.parser(
        bench, "stability", "how far latents move under small input noise: GFE vs autoencoder vs PCA",
        "Train GFE-AMD (also with latent penalties), the autoencoder (one pass over N samples each, as "
        "data-efficiency does) and PCA; encode held-out samples clean and with Gaussian noise; report the latents' "
        "median shift relative to the latent cloud's radius beside each model's reconstruction error; for GFE "
        "also the shift in the latents' own Laplace standard deviations.")
    q.add_argument("--dataset", default="mnist", help="data (see 'gfe train --help'), values in [0, 1]")
    q.add_argument("--n-train", type=int, default=1000, help="training samples (one pass)")
    q.add_argument("--n-test", type=int, default=500, help="held-out samples encoded clean and noisy")
    q.add_argument("--noise", type=float, default=0.02, help="standard deviation of the Gaussian input noise")
    q.add_argument("--penalties", default="1e-5,1e-4", help="latent penalties (L2) of the extra GFE models")
    q.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and the noise")
    cli.add_result_options(q)
    q.set_defaults(run=_command)


def _command(args) -> None:
    penalties = [float(p) for p in args.penalties.split(",") if p.strip()]
    result = run(args.dataset, n_train=args.n_train, n_test=args.n_test, noise=args.noise, penalties=penalties,
                 seed=args.seed, progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)
