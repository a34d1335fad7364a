"""ODE flow versus plain optimizer: decoder evaluations and seconds each solver needs to
encode test data to the same loss, on a trained decoder.

Each solver encodes the test set with step budgets 5, 10, 20, ... until it ends by
itself or reaches `max_budget`; the target is within `tolerance` (1%) of the best mean
test loss any run reached, and a solver's cost is that of its first budget that meets
the target (null where none does). Budgets cap each sample's accepted steps; costs are
the mean decoder evaluations per sample and the wall time of the whole encode.
"""

from __future__ import annotations

import time

from ..data import load_dataset
from ..encode import encode
from ..samples import split
from ..solvers import SOLVERS, Status
from ..train import Trainer
from ..train_config import TrainConfig
from . import at_least, cli, known
from .data_efficiency import _decoder, machine

SOLVER_SETTINGS = {
    "euler": {"solver": "euler", "dt": 5.0},
    "rk4": {"solver": "rk4", "dt": 10.0},
    "adaptive": {"solver": "dopri5"},
    "amd": {"solver": "amd"},
    "nesterov-amd": {"flow": "nesterov", "solver": "amd"},
    "adam": {"solver": "adam", "lr": 5e-3},
    "lbfgs": {"solver": "lbfgs"},
}
FIRST_BUDGET = 5  # step budgets tried: 5, 10, 20, ... up to max_budget


def solver_settings() -> dict[str, dict]:
    """The encode options of each benchmark setting: the named ones above, then every
    other registered solver (`gfe.solvers.SOLVERS`) with its default options."""
    return {**SOLVER_SETTINGS, **{name: {"solver": name} for name in SOLVERS if name not in SOLVER_SETTINGS}}


def trained_decoder(data, n_train: int, latent_dim: int, seed: int, progress: bool, encode_options=None):
    """The MNIST MLP trained for one pass with GFE-AMD (approximate gradient)."""
    x_train, _ = split(data.x, n_train, 0, seed=seed)
    config = TrainConfig(method="gfe-amd", latent_dim=latent_dim, batch_size=5, optimizer="rmsprop", lr=5e-4,
                         seed=seed, encode_options=encode_options or {})
    trainer = Trainer(config, data.x.shape[1:], decoder=_decoder(data.x.shape[1:], latent_dim, seed),
                      progress=progress)
    trainer.fit(x_train)
    return trainer.decoder.eval()


def _sweep(decoder, x, settings: dict, max_budget: int) -> list[dict]:
    runs, budget = [], FIRST_BUDGET
    while budget <= max_budget:
        start = time.perf_counter()
        enc = encode(decoder, x, max_steps=budget, **settings)
        seconds = time.perf_counter() - start
        runs.append({"budget": budget, "mean_loss": float(enc.loss.mean()), "mean_nfe": float(enc.nfe.float().mean()),
                     "seconds": seconds, "status": enc.status_counts()})
        if not bool((enc.status == int(Status.STEP_BUDGET)).any()):
            break  # every sample ended by itself: a larger budget changes nothing
        budget *= 2
    return runs


def run(dataset: str = "mnist", *, n_train: int = 1000, n_test: int = 200, solvers=tuple(SOLVER_SETTINGS),
        max_budget: int = 2560, tolerance: float = 0.01, latent_dim: int = 20, seed: int = 0,
        encode_options: dict | None = None, progress: bool = True) -> dict:
    available = solver_settings()
    known("solvers", solvers, list(available))
    settings = {name: available[name] for name in solvers}
    at_least(1, n_train=n_train, n_test=n_test)
    at_least(FIRST_BUDGET, max_budget=max_budget)
    data = load_dataset(dataset)
    decoder = trained_decoder(data, n_train, latent_dim, seed, progress, encode_options)
    _, x_test = split(data.x, n_train, n_test, seed=seed)
    sweeps = {}
    for name in solvers:
        sweeps[name] = _sweep(decoder, x_test, settings[name], max_budget)
        if progress:
            last = sweeps[name][-1]
            print(f"{name:>13}: best mean loss {min(r['mean_loss'] for r in sweeps[name]):.5f} "
                  f"(budget {last['budget']}, {last['mean_nfe']:.0f} evaluations/sample, {last['seconds']:.1f} s)",
                  flush=True)
    best = min(r["mean_loss"] for runs in sweeps.values() for r in runs)
    target = best * (1 + tolerance)
    results = []
    for name, runs in sweeps.items():
        hit = next((r for r in runs if r["mean_loss"] <= target), None)
        results.append({"solver": name, "settings": settings[name], "reached_target": hit is not None,
                        "mean_nfe_to_target": hit and hit["mean_nfe"], "seconds_to_target": hit and hit["seconds"],
                        "budget_to_target": hit and hit["budget"],
                        "best_mean_loss": min(r["mean_loss"] for r in runs), "sweep": runs})
    return {"benchmark": "solvers", "dataset": data.name, "n_train": n_train, "n_test": n_test,
            "latent_dim": latent_dim, "seed": seed, "tolerance": tolerance, "best_mean_loss": best,
            "target_mean_loss": target, "max_budget": max_budget, "machine": machine(), "results": results}


def add_parser(bench) -> None:
    q = cli.flow_parser(
        bench, "solvers", "decoder evaluations and seconds each solver needs to reach the same test loss",
        "Train the MNIST decoder once (GFE-AMD, one pass over --n-train samples), then encode held-out samples "
        "with each solver under step budgets 5, 10, 20, ... and report the evaluations and seconds of the first "
        "budget whose mean loss is within 1%% of the best any solver reached.", n_test=200)
    q.add_argument("--solvers", default=",".join(SOLVER_SETTINGS),
                   help="comma-separated settings, from: " + ", ".join(SOLVER_SETTINGS)
                        + "; or any registered solver (gfe.solvers.SOLVERS) with its default options")
    q.add_argument("--max-budget", type=int, default=2560, help="largest step budget tried")
    q.set_defaults(run=_command)


def _command(args) -> None:
    result = run(args.dataset, n_train=args.n_train, n_test=args.n_test, solvers=args.solvers.split(","),
                 max_budget=args.max_budget, progress=not args.quiet)
    cli.emit(result, args.json, args.quiet)
