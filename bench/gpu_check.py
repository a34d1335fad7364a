"""One run on a lent GPU machine: versions, the GPU tests, and the encode and
data-efficiency benchmarks on the GPU beside their CPU counterparts, plus how
far a GPU encoding depends on batch-mates and repeats bit for bit.

Run from the repository root (the package is not installed there):

    PYTHONPATH=src python3 bench/gpu_check.py --data .gpu/mnist-10k.npz --out "$OUT"

It writes at most 8 files into --out: gpu_check.log (every step's output),
summary.json (each step's status and seconds, the ratios), encode-DEVICE.json,
data-efficiency-DEVICE.json (for the GPU and the CPU), invariance.json and, with
--spectra, encode-spectra-DEVICE.json (the GPU only). A
step that fails or runs out of its time is recorded and the next one runs;
all steps together stay within --budget seconds (the CPU benchmarks run last).
Dry-run it without a GPU with --device cpu (the GPU tests are then skipped).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import gfe
from gfe.data import load_dataset
from gfe.devices import resolve_device
from gfe.samples import split
from gfe.train import TrainConfig, Trainer

GPU_TESTS = ["tests/test_devices.py",
             "tests/test_distributed.py::test_two_gpus_train_like_one"]


def step(log, summary: dict, name: str, command: list[str], limit: float, deadline: float) -> None:
    """Run `command` for at most `limit` seconds and not past `deadline`, appending
    its output to the log and its status to `summary`."""
    timeout = min(limit, deadline - time.monotonic())
    if timeout < 10:
        summary[name] = {"status": "skipped: the time budget is spent"}
        return
    log.write(f"\n===== {name}: {' '.join(command)} (limit {timeout:.0f} s)\n")
    log.flush()
    began = time.monotonic()
    try:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout:.0f} s"
    summary[name] = {"status": status, "seconds": round(time.monotonic() - began, 1)}
    log.write(f"===== {name}: {status}\n")
    log.flush()


def invariance(data: str, device: torch.device, n: int) -> dict:
    """Encode `n` test images with a decoder trained here (on the CPU, 500 images):
    on `device` in one batch, again (repeat), shuffled, and the first 16 alone,
    and on the CPU; the largest latent differences between them."""
    images = load_dataset(data).x
    x_train, x_test = split(images, 500, n, seed=0)
    torch.manual_seed(0)
    trainer = Trainer(TrainConfig(latent_dim=20, encode_ahead=16), images.shape[1:], progress=False)
    trainer.fit(x_train)
    options = trainer.settings()["encode"]

    def encoded(on: torch.device, x: np.ndarray) -> np.ndarray:
        decoder, start = trainer.decoder.to(on).eval(), trainer.start_map().to(on)
        return gfe.encode(decoder, x, z0=start, **options).z.cpu().numpy()

    full = encoded(device, x_test)
    order = np.random.default_rng(0).permutation(n)
    shuffled = np.empty_like(full)
    shuffled[order] = encoded(device, x_test[order])
    alone = np.concatenate([encoded(device, x_test[i:i + 1]) for i in range(16)])

    def gap(a, b) -> dict:
        return {"max_abs": float(np.abs(a - b).max()), "rows_bitwise_equal": int((a == b).all(1).sum()),
                "rows": len(a)}

    return {"device": str(device), "samples": n, "encode_options": options,
            "repeat_vs_first": gap(encoded(device, x_test), full), "shuffled_vs_batch": gap(shuffled, full),
            "alone_vs_batch": gap(alone, full[:16]), "cpu_vs_device": gap(encoded(torch.device("cpu"), x_test), full)}


def ratios(out: Path, device: str) -> dict:
    """CPU time over device time per encode setting and per training method."""
    found = {}
    for bench, key, seconds in (("encode", "setting", "ms_per_sample"), ("data-efficiency", "method", "train_seconds")):
        paths = [out / f"{bench}-{d}.json" for d in ("cpu", device)]
        if all(p.is_file() for p in paths):
            cpu, dev = (json.loads(p.read_text())["results"] for p in paths)
            found[bench] = {a[key]: {"cpu": a[seconds], device: b[seconds], "cpu_over_device": a[seconds] / b[seconds]}
                            for a, b in zip(cpu, dev)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the MNIST file, e.g. .gpu/mnist-10k.npz")
    parser.add_argument("--out", required=True, type=Path, help="folder for the (at most 8) result files")
    parser.add_argument("--device", default="cuda", help="cpu for a dry run without a GPU")
    parser.add_argument("--encode-n", type=int, default=1000, help="images each encode setting encodes")
    parser.add_argument("--samples", default="1000", help="data-efficiency training sizes")
    parser.add_argument("--invariance-n", type=int, default=256, help="images of the invariance check")
    parser.add_argument("--spectra", help="a spectra file (.npy) to encode with each --spectra-model")
    parser.add_argument("--spectra-model", action="append", default=[],
                        help="a model trained on such spectra (gfe train), benchmarked with 'bench encode'")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all steps; later ones are skipped")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(args.device))
    mnist = f"mnist={args.data}"
    summary: dict = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                     "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    bench = [sys.executable, "-m", "gfe", "bench"]

    def benchmarks(on: str) -> None:
        step(log, summary, f"encode {on}",
             [*bench, "encode", "--dataset", mnist, "--n", str(args.encode_n), "--batch", "4096", "--only",
              "learned start", "--device", on, "--quiet", "--json", str(args.out / f"encode-{on}.json")], 120, deadline)
        step(log, summary, f"data-efficiency {on}",
             [*bench, "data-efficiency", "--dataset", mnist, "--samples", args.samples, "--methods", "gfe-amd,ae",
              "--encode-ahead", "16", "--n-test", "500", "--no-reference-amd", "--device", on, "--quiet", "--json",
              str(args.out / f"data-efficiency-{on}.json")], 120, deadline)

    with open(args.out / "gpu_check.log", "w") as log:
        if torch.cuda.is_available():
            step(log, summary, "nvidia-smi", ["nvidia-smi"], 30, deadline)
        log.write(json.dumps(summary) + "\n")
        step(log, summary, "gpu tests", [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-rs",
                                         "-q", *GPU_TESTS], 150, deadline)
        benchmarks(device)
        if args.spectra and args.spectra_model:  # on the device only: files back are few (8)
            models = [a for m in args.spectra_model for a in ("--model", m)]
            step(log, summary, f"encode spectra {device}",
                 [*bench, "encode", "--dataset", args.spectra, *models, "--n", "400", "--only", "learned start",
                  "--repeat", "3", "--device", device, "--quiet", "--json",
                  str(args.out / f"encode-spectra-{device}.json")], 150, deadline)
        began = time.monotonic()
        try:
            found = invariance(args.data, torch.device(device), args.invariance_n)
            (args.out / "invariance.json").write_text(json.dumps(found, indent=2) + "\n")
            summary["invariance"] = {"status": "ok", "seconds": round(time.monotonic() - began, 1)}
        except Exception as err:  # recorded, so that the summary is still written
            summary["invariance"] = {"status": f"failed: {err!r}"}
        if device != "cpu":  # the CPU counterparts, last: the GPU's numbers come first
            benchmarks("cpu")
        summary["ratios"] = ratios(args.out, device)
        log.write(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
