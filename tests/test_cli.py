"""The `gfe` command end to end on tiny data: train, encode, decode, info, resume,
and the one-line errors users get for bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

import gfe
from gfe.cli import main

TRAIN = ["--latent-dim", "2", "--epochs", "2", "--batch-size", "8", "--optimizer", "adam", "--lr", "0.01",
         "--encode-options", '{"max_steps": 20}', "--quiet"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A small image set on disk and a model trained on it by `gfe train`."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(40, 4, 4)).astype(np.float32)
    np.save(root / "images.npy", images)
    assert main(["train", str(root / "images.npy"), "--out", str(root / "model"), *TRAIN]) == 0
    return root


def run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse and parser.exit
        return exit_.code


def test_train_writes_a_model_directory_and_history(workdir):
    model = workdir / "model"
    assert {"weights.safetensors", "config.json", "history.csv"} <= {p.name for p in model.iterdir()}
    rows = (model / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 3  # header + 2 epochs
    config = json.loads((model / "config.json").read_text())
    assert config["settings"]["method"] == "gfe-amd" and config["decoder"]["latent_dim"] == 2


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".npy"])
def test_encode_then_decode(workdir, suffix):
    latents = workdir / f"latents{suffix}"
    assert run("encode", workdir / "model", workdir / "images.npy", "-o", latents, "--quiet") == 0
    loaded = gfe.load_model(workdir / "model")
    assert loaded.start is not None  # flows begin at the learned start map
    expected = gfe.encode(loaded.decoder, np.load(workdir / "images.npy"), z0=loaded.start,
                          **loaded.settings["encode"])
    if suffix == ".h5":
        with h5py.File(latents) as f:
            np.testing.assert_array_equal(f["z"][...], expected.z.numpy())
            np.testing.assert_array_equal(f["steps"][...], expected.steps.numpy())
            assert json.loads(f.attrs["provenance"])["input_sha256"]
    recon = workdir / f"recon{suffix}.npy"
    assert run("decode", workdir / "model", latents, "-o", recon, "--quiet") == 0
    out = np.load(recon)
    assert out.shape == (40, 4, 4) and ((out >= 0) & (out <= 1)).all()


def test_info_reports_a_model_and_a_latents_file(workdir, capsys):
    assert run("info", workdir / "model") == 0
    assert json.loads(capsys.readouterr().out)["decoder"]["type"] == "mlp"
    run("encode", workdir / "model", workdir / "images.npy", "-o", workdir / "info.h5", "--quiet")
    assert run("info", workdir / "info.h5") == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 40


def test_training_continues_with_resume_and_refuses_to_overwrite(workdir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", workdir / "images.npy", "--out", out, *TRAIN) == 0
    assert run("train", workdir / "images.npy", "--out", out, *TRAIN) == 2
    assert "already holds a training run" in capsys.readouterr().err
    args = [a if a != "2" or i != 3 else "3" for i, a in enumerate(TRAIN)]  # --epochs 3
    assert run("train", workdir / "images.npy", "--out", out, *args, "--resume") == 0
    assert len((out / "history.csv").read_text().splitlines()) == 4


@pytest.mark.parametrize("method", ["ae", "gfe-nesterov", "gfe-rk4"])
def test_other_methods_train_and_encode(workdir, tmp_path, method):
    assert run("train", workdir / "images.npy", "--out", tmp_path / "m", *TRAIN, "--method", method) == 0
    assert run("encode", tmp_path / "m", workdir / "images.npy", "-o", tmp_path / "z.npy", "--quiet") == 0
    assert np.load(tmp_path / "z.npy").shape == (40, 2)


@pytest.mark.parametrize(("argv", "message"), [
    (["encode", "{model}", "{root}/missing.npy", "-o", "{root}/z.npy"], "missing.npy"),
    (["encode", "{root}/no-model", "{root}/images.npy", "-o", "{root}/z.npy"], "no-model"),
    (["encode", "{model}", "{root}/wide.npy", "-o", "{root}/z.npy"], "shape"),
    (["encode", "{model}", "{root}/nan.npy", "-o", "{root}/z.npy"], "NaN"),
    (["encode", "{model}", "{root}/images.npy", "-o", "{root}/z.txt"], "z.txt"),
    (["decode", "{model}", "{root}/wrong-dim.npy", "-o", "{root}/r.npy"], "2"),
    (["train", "{root}/images.npy", "--out", "{root}/bad", "--latent-dim", "0"], "latent_dim"),
])
def test_bad_input_is_one_clear_line(workdir, capsys, argv, message):
    np.save(workdir / "wide.npy", np.zeros((3, 5, 5), np.float32))
    np.save(workdir / "nan.npy", np.full((3, 4, 4), np.nan, np.float32))
    np.save(workdir / "wrong-dim.npy", np.zeros((3, 7), np.float32))
    argv = [a.format(model=workdir / "model", root=workdir) for a in argv]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gfe: error: ") and message in err and "Traceback" not in err


def test_module_entry_point_and_help():
    done = subprocess.run([sys.executable, "-m", "gfe", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "train", "encode", "decode", "bench"):
        assert command in done.stdout


def test_quiet_prints_nothing_but_errors(workdir, tmp_path, capfd):
    """Every command that reports progress is silent with --quiet, on stdout and
    stderr (file descriptors, so progress bars and warnings count too)."""
    data, model = workdir / "images.npy", workdir / "model"
    capfd.readouterr()
    commands = [["train", data, "--out", tmp_path / "m", *TRAIN],
                ["encode", model, data, "-o", tmp_path / "z.h5", "--quiet"],
                ["decode", model, tmp_path / "z.h5", "-o", tmp_path / "r.npy", "--quiet"],
                ["plot", model, "--data", data, "--out", tmp_path / "figs", "--samples", "8", "--quiet"]]
    for argv in commands:
        assert run(*argv) == 0
        assert capfd.readouterr() == ("", ""), argv[0]
    # Without --quiet the same commands do report (so the test above can fail).
    assert run("encode", model, data, "-o", tmp_path / "z.h5") == 0
    out, err = capfd.readouterr()
    assert "encoded 40 samples" in out and "encoding" in err  # summary, and the progress bar
    # Errors are still printed.
    assert run("encode", model, tmp_path / "missing.npy", "-o", tmp_path / "z.h5", "--quiet") == 2
    assert "gfe: error: " in capfd.readouterr().err


def test_training_logs_to_tensorboard(workdir, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging needs the optional 'tensorboard' extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    assert run("train", workdir / "images.npy", "--out", tmp_path / "m", *TRAIN, "--tensorboard", logs) == 0
    events = EventAccumulator(str(logs)).Reload()
    assert {"train/train_loss", "train/val_loss", "train/mean_steps"} <= set(events.Tags()["scalars"])
    history = (tmp_path / "m" / "history.csv").read_text().splitlines()
    losses = [float(row.split(",")[1]) for row in history[1:]]
    assert [e.step for e in events.Scalars("train/train_loss")] == [1, 2]
    assert [e.value for e in events.Scalars("train/train_loss")] == pytest.approx(losses)


def test_tensorboard_without_the_package_is_one_clear_line(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    argv = ["train", workdir / "images.npy", "--out", tmp_path / "m", *TRAIN, "--tensorboard", tmp_path / "tb"]
    assert run(*argv) == 2
    assert "pip install 'gfe[tensorboard]'" in capsys.readouterr().err


def test_latents_file_round_trip_with_provenance(workdir, capsys):
    import torch

    from gfe.latents import read_encoding
    from gfe.persist import file_sha256

    model, data, latents = workdir / "model", workdir / "images.npy", workdir / "provenance.h5"
    assert run("encode", model, data, "-o", latents, "--quiet", "--options", '{"gtol": 1e-4}') == 0
    loaded = gfe.load_model(model)
    settings = {**loaded.settings["encode"], "gtol": 1e-4}
    expected = gfe.encode(loaded.decoder, np.load(data), z0=loaded.start, **settings)
    encoding, meta = read_encoding(latents)
    for name in ("z", "loss", "steps", "nfe", "status", "t"):
        assert torch.equal(getattr(encoding, name), getattr(expected, name)), name
    assert meta["model_weights_sha256"] == loaded.config["weights_sha256"]
    assert meta["encode_settings"] == {"start": "learned", **settings}
    assert meta["gfe_version"] == gfe.__version__ and meta["torch_version"] == torch.__version__
    assert meta["input"] == str(data) and meta["input_sha256"] == file_sha256(data)
    capsys.readouterr()
    assert run("info", latents) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["samples"], info["latent_dim"]) == (40, 2) and info["provenance"] == meta


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_decoding_latents_of_another_model_is_refused(workdir, tmp_path, capsys, suffix):
    other = tmp_path / "other"
    assert run("train", workdir / "images.npy", "--out", other, *TRAIN, "--seed", "1") == 0
    run("encode", workdir / "model", workdir / "images.npy", "-o", tmp_path / f"z{suffix}", "--quiet")
    assert run("decode", other, tmp_path / f"z{suffix}", "-o", tmp_path / "r.npy", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("gfe: error: ") and "was encoded with another model" in err
    assert not (tmp_path / "r.npy").exists()


def test_npz_latents_carry_provenance_without_pickle(workdir, tmp_path):
    from gfe.latents import read_latents

    run("encode", workdir / "model", workdir / "images.npy", "-o", tmp_path / "z.npz", "--quiet")
    with np.load(tmp_path / "z.npz", allow_pickle=False) as archive:
        assert {"z", "loss", "steps", "nfe", "status", "t", "provenance"} <= set(archive.files)
    _, meta = read_latents(tmp_path / "z.npz")
    assert meta["model_weights_sha256"] == gfe.load_model(workdir / "model").config["weights_sha256"]


def test_train_keeps_the_best_epoch_and_stops_early(workdir, tmp_path):
    args = [a if a != "2" or i != 3 else "6" for i, a in enumerate(TRAIN)]  # --epochs 6
    out = tmp_path / "run"
    assert run("train", workdir / "images.npy", "--out", out, *args, "--patience", "1", "--lr-schedule", "cosine",
               "--val-fraction", "0.25") == 0
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    best = int(rows[-1]["best_epoch"])
    assert len(rows) == best + 1 or len(rows) == 6
    config = json.loads((out / "config.json").read_text())["settings"]["train_config"]
    assert config["keep_best"] is True and config["patience"] == 1 and config["lr_schedule"] == "cosine"
    assert run("train", workdir / "images.npy", "--out", tmp_path / "last", *TRAIN, "--no-keep-best") == 0
    assert json.loads((tmp_path / "last" / "config.json").read_text())["settings"]["train_config"]["keep_best"] is False
    assert run("train", workdir / "images.npy", "--out", tmp_path / "bad", *TRAIN, "--patience", "2",
               "--val-fraction", "0") == 2
