"""Sharded, resumable encoding: split the samples of a data file into `n`
contiguous shards, encode each into its own HDF5 file, merge them in input order.

An output folder holds `manifest.json`, which says what is being encoded (the
model's weights digest, a digest of the samples, their number, the shard count
and the encode settings), and one `shard-IIIII-of-NNNNN.h5` per finished shard.
Shard files are written atomically, so a shard file that exists is complete: a
killed run, re-run with the same arguments, encodes only the missing shards. A
folder whose manifest describes another model, input or settings is refused
before anything is written.

Encodings are per sample and bit-identical in any batch (`gfe.rows`), so merged
shards equal a single-process encoding bit for bit. Shard boundaries are put on
the encoder's chunk boundaries (`chunk_size` samples, one solver call each)
whenever there are at least as many chunks as shards, so shards hold whole chunks.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .data import open_samples
from .distributed import launch_rank, process_device, split_bounds
from .errors import ConfigError, DataError
from .latents import latents_writer, read_encoding, read_scale
from .persist import atomic_write_text, load_model
from .encode_settings import EncodeSettings
from .workflows import (ModelInput, _say, encoding_provenance, model_input,
                        write_encoded)

MANIFEST = "manifest.json"
FORMAT = "gfe-shards"
FORMAT_VERSION = 1
# manifest fields that must agree for shards to belong together, and how to name them in errors
IDENTITY = {
    "format_version": "shard format version",
    "model_weights_sha256": "model (weights sha256)",
    "samples_sha256": "input samples (sha256 of the loaded array)",
    "samples": "number of samples",
    "shards": "shard count",
    "encode_settings": "encode settings",
}


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` as (i, n): shard i (from 0) of n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ConfigError(f"a shard is written INDEX/COUNT, e.g. 0/4 for the first of four; got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise ConfigError(f"shard {text}: needs COUNT >= 1 and INDEX in 0..COUNT-1 (shards are numbered "
                          f"from 0, so the shards of {max(count, 1)} are 0/{max(count, 1)} to "
                          f"{max(count, 1) - 1}/{max(count, 1)})")
    return index, count


def assigned_shards(shard: str | None = None, count: int | None = None) -> tuple[list[int], int]:
    """The shards this process encodes, and the shard count.

    `shard` ("i/n") names one shard. `count` splits the samples into that many
    shards, of which a process launched by torchrun takes every world-size-th,
    starting at its rank (and a lone process takes all). With neither, a torchrun
    launch makes one shard per process.
    """
    rank, world = launch_rank()
    if shard is not None and count is not None:
        raise ConfigError("give either --shard INDEX/COUNT (one shard) or --shards COUNT (all), not both")
    if shard is not None:
        if world > 1:
            raise ConfigError("under torchrun each process encodes the shards of its rank; "
                              "use --shards COUNT (or nothing, for one shard per process) instead of --shard")
        index, count = parse_shard(shard)
        return [index], count
    if count is None:
        count = world
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"the shard count must be a positive integer; got {count!r}")
    return list(range(rank, count, world)), count


def shard_path(outdir, index: int, count: int) -> Path:
    return Path(outdir) / f"shard-{index:05d}-of-{count:05d}.h5"


def shard_bounds(n: int, count: int, index: int, chunk_size: int) -> tuple[int, int]:
    """Samples `[start, stop)` of shard `index` of `count`: whole chunks of
    `chunk_size` when there are enough, else an even split."""
    chunks = -(-n // chunk_size)
    if chunks < count:
        return split_bounds(n, count, index)
    first, last = split_bounds(chunks, count, index)
    return first * chunk_size, min(last * chunk_size, n)


def _samples_digest(inputs: ModelInput, rows: int) -> str:
    """SHA-256 of the samples as the model gets them (covers built-in sets and
    HDF5 keys, not only files), read `rows` at a time."""
    digest = None
    for _, x, _ in inputs.chunks(rows):
        if digest is None:
            digest = hashlib.sha256(f"{x.dtype.str}{(len(inputs.samples), *x.shape[1:])}".encode())
        digest.update(np.ascontiguousarray(x).data)
    return digest.hexdigest()


def _mismatches(found: dict, expected: dict) -> list[str]:
    return [f"{label} is {found.get(key)!r} there but {expected[key]!r} here"
            for key, label in IDENTITY.items() if found.get(key) != expected[key]]


def _read_manifest(outdir: Path) -> dict | None:
    path = outdir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not a readable shard manifest: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a gfe shard manifest (format {FORMAT!r})")
    return manifest


def _claim_folder(outdir: Path, manifest: dict) -> None:
    """Write the manifest into `outdir`, or check that the one there describes the same job."""
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"{outdir} is a file; sharded encoding writes a folder of shard files "
                          "(join them with 'gfe merge')")
    existing = _read_manifest(outdir)
    if existing is None:
        outdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(outdir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return
    problems = _mismatches(existing, manifest)
    if problems:
        raise ConfigError(f"{outdir} holds shards of another encoding job ({'; '.join(problems)}); nothing "
                          "was written: choose another output folder, or delete that one to start over")


def _check_shard(path: Path, meta: dict, manifest: dict, index: int, rows: int) -> None:
    record = meta.get("shard") or {}
    problems = _mismatches(record, manifest)
    if record.get("index") != index:
        problems.append(f"it is shard {record.get('index')!r}, not {index}")
    if rows != record.get("stop", -1) - record.get("start", 0):
        problems.append(f"it holds {rows} rows, not the {record.get('stop')} - {record.get('start')} recorded")
    if problems:
        raise DataError(f"{path} does not belong to the job in {path.parent / MANIFEST}: {'; '.join(problems)}")


def encode_shards(model, data, outdir, *, shard: str | None = None, count: int | None = None, key=None,
                  options=None, quiet: bool = False, device="cpu") -> list[dict]:
    """Encode this process's shards of `data` into `outdir`, skipping finished ones.

    Returns one record per assigned shard: index, sample range, whether it was
    encoded or skipped, and the seconds spent encoding. The samples are read a
    chunk at a time (`write_encoded`), once for their digest and once to encode
    each shard, so memory does not grow with the data. The model encodes on
    `device`; under torchrun, "cuda" is each process's own GPU (`process_device`).
    """
    indices, count = assigned_shards(shard, count)
    loaded = load_model(model, process_device(device))
    settings = EncodeSettings.of_model(loaded, options)
    with open_samples(data, key) as samples:
        inputs = model_input(loaded, samples, settings)
        if count > len(samples):
            raise ConfigError(f"cannot split {len(samples)} samples into {count} shards; use at most {len(samples)}")
        chunk_size = settings.chunk_size
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model": str(model), "input": str(data),
            "model_weights_sha256": loaded.config["weights_sha256"],
            "samples_sha256": _samples_digest(inputs, chunk_size), "samples": len(samples), "shards": count,
            "encode_settings": json.loads(json.dumps(settings.record())),
        }
        outdir = Path(outdir)
        _claim_folder(outdir, manifest)
        origin = encoding_provenance(loaded, settings, inputs, data)
        return [_encode_shard(outdir, index, manifest, chunk_size, loaded, inputs, settings, origin, quiet)
                for index in indices]


def _encode_shard(outdir: Path, index: int, manifest: dict, chunk_size: int, loaded, inputs: ModelInput,
                  settings: EncodeSettings, origin: dict, quiet: bool) -> dict:
    """Encode shard `index` unless its file is already there; its record for `encode_shards`."""
    count = manifest["shards"]
    start, stop = shard_bounds(manifest["samples"], count, index, chunk_size)
    path = shard_path(outdir, index, count)
    record = {"index": index, "start": start, "stop": stop, "path": str(path)}
    if path.exists():
        encoding, meta = read_encoding(path)
        _check_shard(path, meta, manifest, index, len(encoding))
        _say(quiet, f"shard {index}/{count} (samples {start}..{stop - 1}) is already done; skipped")
        return {**record, "done": "skipped", "seconds": meta.get("encode_seconds")}
    meta = {**origin, "shard": {**manifest, "index": index, "start": start, "stop": stop}}
    summary = write_encoded(path, loaded, inputs, settings, meta, start=start, stop=stop, progress=not quiet)
    _say(quiet, f"shard {index}/{count} (samples {start}..{stop - 1}) encoded in {summary['seconds']:.1f} s: mean "
                f"loss {summary['mean_loss']:.5g}, {summary['mean_steps']:.1f} steps per sample; written to {path}")
    return {**record, "done": "encoded", "seconds": summary["seconds"]}


def merge_shards(outdir, output, *, quiet: bool = False) -> None:
    """Join the shards in `outdir` in input order into one latents file `output`,
    with the per-sample normalisation (`scale`) where the shards have one.

    Refuses, writing nothing, when a shard is missing or belongs to another job.
    """
    outdir = Path(outdir)
    manifest = _read_manifest(outdir) if outdir.is_dir() else None
    if manifest is None:
        raise DataError(f"{outdir} holds no {MANIFEST}; is it a folder written by 'gfe encode ... --shard'?")
    count = manifest["shards"]
    missing = [index for index in range(count) if not shard_path(outdir, index, count).exists()]
    if missing:
        names = ", ".join(f"{index}/{count}" for index in missing)
        raise DataError(f"{outdir} lacks shard(s) {names}; nothing was written. Encode them with 'gfe encode "
                        f"{manifest['model']} {manifest['input']} -o {outdir} --shards {count}' (finished "
                        "shards are skipped), then merge again")
    metas = []
    with latents_writer(output, manifest["samples"]) as writer:  # one shard in memory at a time
        for index in range(count):
            path = shard_path(outdir, index, count)
            encoding, meta = read_encoding(path)
            _check_shard(path, meta, manifest, index, len(encoding))
            start = metas[-1]["shard"]["stop"] if metas else 0
            if meta["shard"]["start"] != start:
                raise DataError(f"{path} starts at sample {meta['shard']['start']}, but the shards before it "
                                f"end at {start}")
            scale = read_scale(path, len(encoding))
            writer.append(encoding, None if scale is None else {"scale": scale})
            metas.append(meta)
        if metas[-1]["shard"]["stop"] != manifest["samples"]:
            raise DataError(f"the shards in {outdir} end at sample {metas[-1]['shard']['stop']}, but "
                            f"{MANIFEST} counts {manifest['samples']}")
        writer.meta = {key: value for key, value in metas[0].items() if key not in ("shard", "encode_seconds")}
        writer.meta["merged_from"] = {"folder": str(outdir), "shards": count,
                                      "seconds": [m.get("encode_seconds") for m in metas]}
    _say(quiet, f"merged {count} shards ({manifest['samples']} samples) into {output}")
