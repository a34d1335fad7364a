"""How far a model's float32 encodings depend on batch-mates: one call against
chunk sizes, two halves (as two shards), a reordering, a subset, samples encoded
alone and one intra-op thread. Prints one line per variant and writes JSON.

    PYTHONPATH=src python3 bench/batch_invariance.py MODEL DATA.npy --json OUT.json

MODEL is a `gfe train` directory, DATA an .npy of samples shaped as it expects.
A sample differs when any of its latent, loss, steps, evaluations or status is
not bit-identical to the one call's (docs/reliability.md, "Bit-identical encodings").
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from gfe.encode import Encoding
from gfe.encode_settings import EncodeSettings
from gfe.persist import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--alone", type=int, default=20, help="how many samples to encode one at a time")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    x = np.load(args.data)
    loaded = load_model(args.model)

    def encode(samples: np.ndarray, **options) -> Encoding:
        settings = EncodeSettings.resolve(loaded.settings.get("encode", {}), options or None,
                                          has_start=loaded.start is not None)
        return settings.flow_encode(loaded.decoder, loaded.start, samples)

    began = time.perf_counter()
    reference = encode(x)
    found = {"model": args.model, "data": args.data, "samples": len(x), "threads": torch.get_num_threads(),
             "one_call_seconds": time.perf_counter() - began, "status": reference.status_counts(), "variants": {}}

    def compare(name: str, rows: np.ndarray, enc: Encoding) -> None:
        other = ((enc.z != reference.z[rows]).any(1) | (enc.loss != reference.loss[rows])
                 | (enc.steps != reference.steps[rows]) | (enc.nfe != reference.nfe[rows])
                 | (enc.status != reference.status[rows]))
        found["variants"][name] = {"samples": len(rows), "differing": int(other.sum()),
                                   "max_abs_dz": float((enc.z - reference.z[rows]).abs().max())}
        print(f"{name:>24}: {int(other.sum())} of {len(rows)} differ, max |dz| {found['variants'][name]['max_abs_dz']:.3g}",
              flush=True)

    n, every = len(x), np.arange(len(x))
    for size in (n // 2, 1000, 128, 50):
        compare(f"chunk_size {size}", every, encode(x, chunk_size=size))
    half = n // 2
    compare("two halves", every, Encoding.concat([encode(x[:half]), encode(x[half:])]))
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    compare("reordered", order, encode(x[order]))
    subset = np.sort(rng.choice(n, n // 3, replace=False))
    compare("subset (a third)", subset, encode(x[subset]))
    alone = np.arange(args.alone)
    compare(f"alone (first {args.alone})", alone, Encoding.concat([encode(x[i:i + 1]) for i in alone]))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    compare("one thread", every, encode(x))
    torch.set_num_threads(before)
    with open(args.json, "w") as fh:
        json.dump(found, fh, indent=2)


if __name__ == "__main__":
    main()
