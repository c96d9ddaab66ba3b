"""Prepared TFDS datasets read without TensorFlow: `mnist` digits and the `moving_mnist` test set.

Both must have been prepared in TFDS's ArrayRecord format (`tfds build NAME
--file_format=array_record`); the default TFRecord format can only be read through TensorFlow,
which training never imports. Nothing is downloaded: a missing dataset is an error.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import tempfile

import numpy as np

ARRAY_RECORD = "array_record"


def _version_key(path: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in os.path.basename(path).split("."))
    except ValueError:
        return (-1,)


def prepared_dir(tfds_dir: str, name: str) -> str:
    """`<tfds_dir>/<name>/<version>/` of the newest prepared version; ValueError if none, or if
    it was prepared in a format that needs TensorFlow to read."""
    if not tfds_dir:
        raise ValueError(f"TFDS '{name}' needs config.data.tfds_dir (a prepared TFDS data_dir)")
    infos = glob.glob(os.path.join(tfds_dir, name, "*", "dataset_info.json"))
    if not infos:
        raise ValueError(
            f"{tfds_dir}: no prepared TFDS '{name}' in config.data.tfds_dir (expected "
            f"{name}/<version>/dataset_info.json; prepare it offline with `tfds build {name} "
            f"--data_dir={tfds_dir} --file_format={ARRAY_RECORD}`)"
        )
    version_dir = max((os.path.dirname(p) for p in infos), key=_version_key)
    try:
        with open(os.path.join(version_dir, "dataset_info.json")) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{version_dir}: unreadable dataset_info.json ({e})") from e
    fmt = info.get("fileFormat", "tfrecord")
    if fmt != ARRAY_RECORD:
        raise ValueError(
            f"{version_dir}: TFDS '{name}' was prepared as {fmt}, which only TensorFlow reads; "
            f"prepare it again with --file_format={ARRAY_RECORD}"
        )
    return version_dir


def _import_tfds(where: str):
    try:
        import tensorflow_datasets as tfds  # optional; importing it does not import TensorFlow
    except ImportError as e:
        raise ValueError(
            f"{where}: reading TFDS data needs tensorflow-datasets (pip install "
            "'tensorflow-datasets>=4.9.10,<4.10'); TensorFlow itself is not needed"
        ) from e
    return tfds


def load_mnist_images(tfds_dir: str) -> dict[str, np.ndarray]:
    """uint8 (N, 28, 28) images of TFDS `mnist`'s train and test splits, via `tfds.data_source`."""
    version_dir = prepared_dir(tfds_dir, "mnist")
    tfds = _import_tfds(version_dir)
    out = {}
    for split in ("train", "test"):
        # An explicit version makes TFDS build the reader from the prepared files' own
        # metadata, not from its registered dataset code.
        source = tfds.data_source(
            "mnist",
            split=split,
            data_dir=tfds_dir,
            download=False,
            builder_kwargs={"version": os.path.basename(version_dir)},
        )
        images = np.stack([ex["image"] for ex in source.__getitems__(range(len(source)))])
        out[split] = np.asarray(images, np.uint8).reshape(len(images), *images.shape[1:3])
    return out


def _decode_png(raw: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im)


def read_moving_mnist_test(version_dir: str) -> np.ndarray:
    """uint8 (20, N, 64, 64), the layout of mnist_test_seq.npy, from TFDS `moving_mnist`.

    TFDS's own reader cannot be used here: building its `Video` feature calls into TensorFlow
    (tensorflow-datasets 4.9.10). The stored records are TFDS's `tf.train.Example` protos (its
    own TensorFlow-free copy of the message) holding one PNG per frame under `image_sequence`,
    which ArrayRecord and Pillow read directly.
    """
    _import_tfds(version_dir)
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    from tensorflow_datasets.proto import tf_example_pb2

    files = sorted(glob.glob(os.path.join(version_dir, f"moving_mnist-test.{ARRAY_RECORD}-*")))
    if not files:
        raise ValueError(f"{version_dir}: no moving_mnist-test.{ARRAY_RECORD}-* files")
    source = ArrayRecordDataSource(files)
    if len(source) == 0:
        raise ValueError(f"{version_dir}: the test split holds no sequences")
    out = None  # (T, N, H, W), filled in place: the real set is 819 MB
    for i in range(len(source)):
        example = tf_example_pb2.Example.FromString(source[i])
        feature = example.features.feature.get("image_sequence")
        if feature is None:
            raise ValueError(f"{version_dir}: record {i} has no 'image_sequence' feature")
        seq = np.stack([_decode_png(raw) for raw in feature.bytes_list.value])
        seq = seq.reshape(seq.shape[:3])  # (T, H, W, 1) or (T, H, W) -> (T, H, W)
        if out is None:
            out = np.empty((seq.shape[0], len(source), *seq.shape[1:]), np.uint8)
        if seq.shape != (out.shape[0], *out.shape[2:]):
            raise ValueError(
                f"{version_dir}: record {i} has frames {seq.shape}, record 0 "
                f"{(out.shape[0], *out.shape[2:])}"
            )
        out[:, i] = seq
    return out


def moving_mnist_test(tfds_dir: str, cache_dir: str) -> np.ndarray:
    """The TFDS `moving_mnist` test set as (T, N, H, W) uint8, decoded once and cached as .npy
    in `cache_dir` (decoding 200,000 PNG frames takes a while; the cache is memory-mapped)."""
    version_dir = prepared_dir(tfds_dir, "moving_mnist")
    stamp = "|".join(
        f"{p}:{os.stat(p).st_size}:{os.stat(p).st_mtime_ns}"
        for p in sorted(glob.glob(os.path.join(version_dir, "*")))
    )
    key = hashlib.sha1(f"{os.path.abspath(version_dir)}|{stamp}".encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"tfds_moving_mnist_test_{key}.npy")
    if not os.path.exists(path):
        seqs = read_moving_mnist_test(version_dir)
        os.makedirs(cache_dir, exist_ok=True)
        # Write-then-rename, so concurrent processes never read a half-written cache.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, seqs)
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")
