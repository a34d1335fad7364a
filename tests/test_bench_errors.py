"""Bad `gfe bench` arguments end with exit status 2 and one line on stderr, no
traceback, before any data are read (but for a missing file) or anything trained."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gfe.bench import solvers, stream_memory
from gfe.cli import main
from gfe.errors import ConfigError

SPECTRA = ["spectra", "--data", "{tmp}/ins.h5"]  # refused before the file is opened: it need not exist


@pytest.mark.parametrize(("argv", "message"), [
    (["encode", "--repeat", "0"], "repeat must be at least 1, a whole number; got 0"),
    (["encode", "--n", "0"], "n must be at least 1"),
    (["encode", "--batch", "-1"], "batch must be at least 1"),
    (["encode", "--only", "no such setting"], "no encode benchmark setting's name contains 'no such setting'"),
    (["encode", "--model", "{tmp}/model", "--refine-start"], "refine_start applies to the decoder this benchmark"),
    (["data-efficiency", "--repeat", "0"], "repeat must be at least 1"),
    (["data-efficiency", "--n-test", "0"], "n_test must be at least 1"),
    (["data-efficiency", "--encode-ahead", "0"], "encode_ahead must be at least 1"),
    (["data-efficiency", "--methods", "gfe-amd,vae"], "methods must be one or more of gfe-amd, "),
    (["data-efficiency", "--dataset", "{tmp}/missing.npy"], "missing.npy"),
    ([*SPECTRA, "--n-test", "5"], "n_test must be at least 10"),
    ([*SPECTRA, "--latent-dim", "0"], "latent_dim must be at least 1"),
    ([*SPECTRA, "--epochs", "0"], "epochs must be at least 1"),
    ([*SPECTRA, "--methods", "gfe-amd,umap"], "methods must be one or more of gfe-amd, gfe-nesterov, ae, pca"),
    (["gradients", "--flows", "first,euler"], "flows must be one or more of first, nesterov; got ['first', 'euler']"),
    (["gradients", "--gradients", "approx,exact"], "gradients must be one or more of approx, adjoint, unrolled"),
    (["gradients", "--n-train", "0"], "n_train must be at least 1"),
    (["solvers", "--solvers", "amd,newton"], "solvers must be one or more of euler, "),
    (["solvers", "--max-budget", "4"], "max_budget must be at least 5"),
    (["solvers", "--n-test", "-1"], "n_test must be at least 1"),
    (["stream-memory", "--features", "0"], "features must be at least 1"),
    (["stream-memory", "--chunk-rows", "0"], "chunk_rows must be at least 1"),
    (["stream-memory", "--max-steps", "0"], "max_steps must be at least 1"),
    (["sharded-encoding", "--processes", "0"], "processes must be at least 1"),
    (["sharded-encoding", "--samples", "0"], "samples must be at least 1"),
    (["sharded-encoding", "--max-steps", "0"], "max_steps must be at least 1"),
    (["sharded-encoding", "--train-samples", "-1"], "train_samples must be at least 0"),
    (["sharded-encoding", "--samples", "1", "--processes", "2"], "samples (1) must be at least processes (2)"),
])
def test_bad_benchmark_values_are_one_clear_line(tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gfe: error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(("argv", "option"), [
    (["data-efficiency", "--samples", "0"], "--samples"),
    (["data-efficiency", "--start", "middle"], "--start"),
    (["data-efficiency", "--encode-options", "[1]"], "--encode-options"),
    (["encode", "--repeat", "two"], "--repeat"),
    ([*SPECTRA, "--seeds", "-1"], "--seeds"),
    (["stream-memory", "--sizes", "100,0"], "--sizes"),
])
def test_unparsable_benchmark_arguments_are_argparse_errors(tmp_path, capsys, argv, option):
    """Values argparse itself rejects: its usage line, then `gfe bench NAME: error: argument OPTION: ...`."""
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *[a.format(tmp=tmp_path) for a in argv]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: gfe bench ") and f"error: argument {option}" in err and "Traceback" not in err


def test_python_callers_get_the_same_errors():
    with pytest.raises(ConfigError, match="solvers must be one or more of"):
        solvers.run("digits", solvers=["newton"])
    with pytest.raises(ConfigError, match="sizes must be one or more whole numbers, each at least 1; got"):
        stream_memory.run([])


def test_building_the_parser_imports_no_benchmark_dependencies():
    """`gfe --help` stays as fast as the commands' own imports: the benchmarks'
    parsers load neither scikit-learn, matplotlib, the INS generator nor the workflows."""
    heavy = ("sklearn", "matplotlib", "gfe.ins", "gfe.workflows")
    code = f"import sys, gfe.cli; gfe.cli.build_parser(); print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
