"""Readers, built-in datasets and validation."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from gfe.data import load_dataset, read_array
from gfe.samples import split, validate_data
from gfe.errors import ConfigError, DataError

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-10k.npz"  # ../shared beside the repo


@pytest.fixture
def array():
    return np.arange(12, dtype=np.float64).reshape(4, 3) / 7


def test_npy_round_trip(tmp_path, array):
    np.save(tmp_path / "a.npy", array)
    np.testing.assert_array_equal(read_array(tmp_path / "a.npy"), array)


def test_npz_by_key_and_single_array(tmp_path, array):
    np.savez(tmp_path / "one.npz", only=array)
    np.testing.assert_array_equal(read_array(tmp_path / "one.npz"), array)
    np.savez(tmp_path / "two.npz", images=array, labels=np.arange(4))
    np.testing.assert_array_equal(read_array(tmp_path / "two.npz", key="labels"), np.arange(4))
    with pytest.raises(DataError, match="holds 2 arrays; choose one with key.*images, labels"):
        read_array(tmp_path / "two.npz")
    with pytest.raises(DataError, match="no array 'x'.*images, labels"):
        read_array(tmp_path / "two.npz", key="x")


def test_h5_nested_dataset(tmp_path, array):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("group/inner/spectra", data=array)
    np.testing.assert_array_equal(read_array(tmp_path / "a.h5"), array)
    np.testing.assert_array_equal(read_array(tmp_path / "a.h5", key="/group/inner/spectra"), array)
    with h5py.File(tmp_path / "b.hdf5", "w") as f:
        f["x"] = array
        f["g/y"] = array[:2]
    np.testing.assert_array_equal(read_array(tmp_path / "b.hdf5", key="g/y"), array[:2])
    with pytest.raises(DataError, match="holds 2 datasets.*g/y, x"):
        read_array(tmp_path / "b.hdf5")


@pytest.mark.parametrize("header", ["", "a,b,c\n", "# comment\nwavelength,intensity,error\n\n"])
def test_csv_with_and_without_header(tmp_path, array, header):
    array = array[:, [0, 2, 1]]  # rows not monotonic: a monotonic first row over monotonic rows is ambiguous
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in array)
    (tmp_path / "a.csv").write_text(header + body + "\n")
    np.testing.assert_allclose(read_array(tmp_path / "a.csv"), array)


@pytest.mark.parametrize(("text", "message"), [
    ("1,2,3\n4,5\n", r"line 2: 2 values, but line 1 has 3"),
    ("a,b\n1,2\n3,x\n", r"line 3, column 2: 'x' is not a number"),
    ("1,,3\n", r"line 1, column 2: '' is not a number"),
    ("a,b\nc,d\n", r"line 2, column 1: 'c' is not a number"),
    ("a,b\n", "holds no data rows"),
])
def test_bad_csv(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_array(tmp_path / "bad.csv")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("x.npy", b"", "cannot read .*x.npy"),
    ("x.npy", b"\x93NUMPY garbage", "cannot read"),
    ("x.npz", b"PK\x03\x04 garbage", "cannot read"),
    ("x.h5", b"garbage", "cannot read"),
    ("x.csv", b"\xff\xfe\x00bad", "cannot read"),
])
def test_corrupt_files_are_wrapped(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_array(tmp_path / name)
    assert info.value.__cause__ is not None


def test_missing_unknown_pickled_and_text_files(tmp_path):
    with pytest.raises(DataError, match="no such file: .*absent.npy"):
        read_array(tmp_path / "absent.npy")
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(DataError, match=r"unsupported file type '.txt'; supported: .csv, .h5, .hdf5, .npy, .npz"):
        read_array(tmp_path / "x.txt")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot read"):
        read_array(tmp_path / "o.npy")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(DataError, match="gfe needs integer or floating-point"):
        read_array(tmp_path / "s.npy")
    with pytest.raises(DataError, match="only .npz and HDF5"):
        read_array(tmp_path / "s.npy", key="x")


def test_digits_builtin():
    data = load_dataset("digits")
    assert data.x.shape == (1797, 8, 8) and data.x.dtype == np.float32
    assert data.x.min() == 0 and data.x.max() == 1
    assert data.scaling == {"kind": "divide", "by": 16.0}


@pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} is not present on this machine")
def test_mnist_from_explicit_path():
    data = load_dataset(f"mnist={MNIST}")
    assert data.x.shape == (10000, 28, 28) and data.x.dtype == np.float32
    assert 0 <= data.x.min() and data.x.max() == 1
    assert data.name == "mnist" and data.scaling == {"kind": "divide", "by": 255.0}


def test_mnist_missing_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("GFE_MNIST", str(tmp_path / "nope.npz"))
    with pytest.raises(DataError, match=r"MNIST not found at .*nope.npz \(from \$GFE_MNIST\).*mnist=/path"):
        load_dataset("mnist")
    monkeypatch.delenv("GFE_MNIST")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"shared/data/mnist-10k.npz \(the default"):
        load_dataset("mnist")


def test_files_keep_values_except_uint8(tmp_path):
    np.save(tmp_path / "u.npy", np.array([[0, 255]], dtype=np.uint8))
    data = load_dataset(str(tmp_path / "u.npy"))
    np.testing.assert_array_equal(data.x, [[0.0, 1.0]])
    assert data.scaling == {"kind": "divide", "by": 255.0}
    np.save(tmp_path / "c.npy", np.array([[0, 300]], dtype=np.int64))
    data = load_dataset(str(tmp_path / "c.npy"))
    assert data.x.dtype == np.float32 and data.x.max() == 300 and data.scaling == {"kind": "none"}


def test_validate_reshapes_flat_and_shaped_data():
    x = np.random.default_rng(0).random((3, 28, 28))
    flat = validate_data(x.reshape(3, 784), feature_shape=(28, 28))
    assert flat.shape == (3, 28, 28) and flat.dtype == np.float32 and flat.flags.c_contiguous
    assert validate_data(x, feature_shape=(784,)).shape == (3, 784)
    assert validate_data(x, feature_shape=(1, 28, 28)).shape == (3, 1, 28, 28)
    assert validate_data(x[:, :, ::2], loss="bce").flags.c_contiguous


@pytest.mark.parametrize(("x", "kwargs", "message"), [
    (np.zeros((0, 4)), {}, "0 samples"),
    (np.zeros((3, 0)), {}, "0 features"),
    (np.zeros(4), {}, r"shape \(n_samples, \*features\); got shape \(4,\)"),
    (np.zeros((28, 28)), {"feature_shape": (28, 28)}, r"feature shape \(28,\), .*single sample needs a batch axis"),
    (np.zeros((2, 30, 50)), {"feature_shape": (50, 30)}, r"feature shape \(30, 50\), but \(50, 30\) was expected"),
    (np.zeros((2, 10)), {"feature_shape": (12,)}, r"feature shape \(10,\), but \(12,\)"),
    (np.array([[0.0, 1.0], [np.nan, np.inf]]), {}, r"2 non-finite values.*first is at index \(1, 0\)"),
    (np.array([[0.0, 1e39]]), {}, "1 non-finite"),
    (np.array([[0.0, 1.5]]), {"loss": "bce"}, r"bce loss needs data in \[0, 1\]; got min 0, max 1.5"),
    (np.array([[2.0, -1.0]]), {"loss": "poisson"}, "non-negative counts; got min -1"),
    (np.array([["a"]]), {}, "must be numeric"),
])
def test_validate_errors(x, kwargs, message):
    with pytest.raises(DataError, match=message):
        validate_data(x, **kwargs)


def test_validate_accepts_each_loss_and_rejects_unknown():
    x = np.array([[0.0, 1.0]])
    for loss in ("bce", "mse", "poisson"):
        validate_data(x, loss=loss)
    validate_data(-x, loss="mse")
    with pytest.raises(ConfigError, match="unknown loss 'l2'"):
        validate_data(x, loss="l2")


def test_split_is_reproducible_and_disjoint():
    x = np.arange(20)[:, None]
    train, test = split(x, 12, 5, seed=3)
    again, _ = split(x, 12, 5, seed=3)
    assert train.shape == (12, 1) and test.shape == (5, 1)
    np.testing.assert_array_equal(train, again)
    assert not set(train[:, 0]) & set(test[:, 0])
    assert not np.array_equal(train, split(x, 12, 5, seed=4)[0])
    with pytest.raises(DataError, match="cannot take 15 training and 6 test samples from 20"):
        split(x, 15, 6)
    with pytest.raises(ConfigError, match="n_train >= 1"):
        split(x, 0, 5)
