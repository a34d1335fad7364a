"""The `gfe` command end to end on tiny data: train, encode, decode, info, resume,
and the one-line errors users get for bad input."""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

import gfe
from gfe.cli import build_parser, main

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


def test_train_model_seeds_its_decoder_without_touching_the_global_rng(workdir, tmp_path, monkeypatch):
    """The initial weights are those of a decoder built right after
    `torch.manual_seed(seed)`, as ever, but the caller's RNG state is left alone."""
    import torch

    import gfe.workflows
    from gfe.models import MLPDecoder

    initial = {}

    class Recording(gfe.workflows.Trainer):
        def __init__(self, config, feature_shape, *, decoder, **kwargs):
            initial.update({name: t.clone() for name, t in decoder.state_dict().items()})
            super().__init__(config, feature_shape, decoder=decoder, **kwargs)

    monkeypatch.setattr(gfe.workflows, "Trainer", Recording)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    config = gfe.workflows.TrainConfig(latent_dim=2, batch_size=8, seed=5, encode_options={"max_steps": 5})
    gfe.workflows.train_model(workdir / "images.npy", tmp_path / "m", config, quiet=True)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    expected = MLPDecoder(2, (4, 4)).state_dict()
    assert initial.keys() == expected.keys()
    assert all(torch.equal(initial[name], expected[name]) for name in expected)


def subparser(*names: str) -> argparse.ArgumentParser:
    """The parser of `gfe NAME [NAME ...]`."""
    parser = build_parser()
    for name in names:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def option_help(text: str) -> dict[str, str]:
    """Each option's entry of a --help text, keyed by its first option string,
    with its line breaks and indentation collapsed to single spaces."""
    entries, current = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current is not None and line.startswith("   "):
            entries[current] += " " + line
        else:
            current = None
    return {option: " ".join(entry.split()) for option, entry in entries.items()}


@pytest.mark.parametrize("command", ["train", "encode", "decode", "plot", "info", "merge", "demo", "data ins"])
def test_help_shows_every_default(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    entries = option_help(capsys.readouterr().out)
    for action in subparser(*command.split())._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in entries[action.option_strings[0]], action.option_strings


# Where `gfe train` and `gfe.GFE` default differently on purpose, and why; both
# say so (the option's help and the estimator's docstring).
DELIBERATE = {
    "loss": "gfe train follows the paper's protocol (bce, images in [0, 1]); GFE meets arbitrary real arrays "
            "(scikit-learn's checks feed it such), so mse",
    "verbose": "a command reports progress unless --quiet; scikit-learn estimators are silent unless asked",
}


def test_train_defaults_agree_with_the_estimator():
    """Every parameter `gfe train` shares with `gfe.GFE` has the same default,
    unless the difference is in DELIBERATE and documented on both sides."""
    from gfe.models import DECODERS

    options = {action.dest: action for action in subparser("train")._actions}
    cli = {name: action.default for name, action in options.items()}
    cli["random_state"] = cli.pop("seed")
    cli["verbose"] = not cli.pop("quiet")
    estimator = gfe.GFE().get_params()
    # GFE's decoder=None is gfe train's "mlp": the same decoder, the paper's MLP.
    assert gfe.GFE()._build_decoder(3, (6,)).config() == DECODERS[cli.pop("decoder")].decoder(3, (6,)).config()
    shared = set(estimator) & set(cli)
    assert shared == set(estimator) - {"decoder", "feature_shape"}  # (gfe train reads the shape from the data)
    differ = {name: (cli[name], estimator[name]) for name in shared if cli[name] != estimator[name]}
    assert differ.keys() == DELIBERATE.keys(), differ
    for name in DELIBERATE:
        assert "gfe.GFE" in options["quiet" if name == "verbose" else name].help, name
        section = re.search(rf"^    {name} :.*?(?=^    \w)", gfe.GFE.__doc__, re.MULTILINE | re.DOTALL).group()
        assert "gfe train" in section, name
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
