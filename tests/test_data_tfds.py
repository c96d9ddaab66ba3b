"""TFDS `mnist` digits and the TFDS `moving_mnist` test set, on datasets that TFDS's own builders
prepare here in a temporary data_dir (ArrayRecord format), read without TensorFlow.

TFDS's `Video` feature (what the registered `moving_mnist` declares) cannot be built without
TensorFlow, so the test's `moving_mnist` declares the same stored form -- a length-20
`Sequence` of PNG-encoded (64, 64, 1) `Image`s under `image_sequence` -- and TFDS's own reader
checks our decoding of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stlight_jax import data
from stlight_jax.configs.common import get_base_config
from stlight_jax.data import mnist, tfds_sources

tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason="tensorflow-datasets is a dev requirement (pip install -r requirements-dev.txt)",
)
from PIL import Image  # noqa: E402
from tensorflow_datasets.core import registered  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepare(data_dir: str) -> dict[str, np.ndarray]:
    """Prepares `mnist` and `moving_mnist` with TFDS's builders; returns what they hold."""
    rng = np.random.default_rng(0)
    digits = {
        s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        for s, n in (("train", 12), ("test", 5))
    }
    sequences = rng.integers(0, 256, (7, 20, 64, 64), dtype=np.uint8)
    mnist_cls = type(tfds.builder("mnist", data_dir=data_dir))

    with registered.skip_registration():

        class Mnist(mnist_cls):  # TFDS's own mnist builder, fed local digits
            name = "mnist"

            def _split_generators(self, dl_manager):
                return {s: self._generate_examples(s) for s in digits}

            def _generate_examples(self, split):
                for i, img in enumerate(digits[split]):
                    yield i, {"image": Image.fromarray(img), "label": i % 10}

        class MovingMnist(tfds.core.GeneratorBasedBuilder):
            name = "moving_mnist"
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                frame = tfds.features.Image(shape=(64, 64, 1))
                return tfds.core.DatasetInfo(
                    builder=self,
                    features=tfds.features.FeaturesDict(
                        {"image_sequence": tfds.features.Sequence(frame, length=20)}
                    ),
                )

            def _split_generators(self, dl_manager):
                return {"test": self._generate_examples()}

            def _generate_examples(self):
                for i, seq in enumerate(sequences):
                    yield i, {"image_sequence": [Image.fromarray(f) for f in seq]}

    for cls in (Mnist, MovingMnist):
        cls(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return {**digits, "sequences": sequences}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    return d, _prepare(d)


def _config(tmp_path, tfds_dir, **d):
    c = get_base_config()
    c.data.tfds_dir, c.data.data_dir, c.data.test_source = tfds_dir, str(tmp_path), "tfds"
    c.data.num_train, c.data.num_val, c.data.batch_size, c.data.eval_batch_size = 8, 4, 4, 4
    for k, v in d.items():
        setattr(c.data, k, v)
    return c


def test_tfds_mnist_is_the_digit_source(prepared):
    tfds_dir, want = prepared
    mnist.load_digits.cache_clear()
    digits = mnist.load_digits("", tfds_dir)

    # TFDS stores examples in its own (hashed-key) order, so compare the sets of images.
    def rows(a):
        return sorted(x.tobytes() for x in a)

    assert rows(np.concatenate([digits.train, digits.val])) == rows(want["train"])
    assert rows(digits.test) == rows(want["test"])
    assert not set(rows(digits.train)) & set(rows(digits.val))
    assert len(digits.val) == 2 and digits.source == f"TFDS mnist in {tfds_dir}"


def test_moving_mnist_decoding_matches_tfds_own_reader(prepared):
    tfds_dir, want = prepared
    version_dir = tfds_sources.prepared_dir(tfds_dir, "moving_mnist")
    ours = tfds_sources.read_moving_mnist_test(version_dir)
    assert ours.shape == (20, 7, 64, 64) and ours.dtype == np.uint8
    theirs = tfds.builder_from_directory(version_dir).as_data_source(split="test")
    for i in range(len(theirs)):
        np.testing.assert_array_equal(ours[:, i], np.stack(theirs[i]["image_sequence"])[..., 0])
    # TFDS stores examples in its own (hashed-key) order: the same sequences, reordered.
    order = [
        next(j for j in range(7) if np.array_equal(ours[:, i], want["sequences"][j]))
        for i in range(7)
    ]
    assert sorted(order) == list(range(7))


def test_tfds_moving_mnist_is_the_test_set_when_configured(prepared, tmp_path):
    tfds_dir, want = prepared
    c = _config(tmp_path, tfds_dir)
    batches = list(data.create_eval_iterator(c, "test"))
    assert sum(b["mask"].sum() for b in batches) == 7
    got = np.concatenate([np.concatenate([b["inputs"], b["targets"]], 1) for b in batches])[:7]
    wanted = {want["sequences"][j].tobytes() for j in range(7)}
    assert {np.rint(g[..., 0] * 255).astype(np.uint8).tobytes() for g in got} == wanted
    assert "TFDS moving_mnist" in data.describe_source(c, "test")
    assert len(list(tmp_path.glob("tfds_moving_mnist_test_*.npy"))) == 1  # decoded once


def test_tfds_errors_name_the_culprit(prepared, tmp_path):
    tfds_dir, _ = prepared
    with pytest.raises(ValueError, match="no prepared TFDS 'moving_mnist'.*tfds build"):
        tfds_sources.prepared_dir(str(tmp_path), "moving_mnist")
    copy = tmp_path / "copy"
    shutil.copytree(tfds_dir, copy)
    info_path = next(copy.glob("moving_mnist/*/dataset_info.json"))
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="prepared as tfrecord, which only TensorFlow reads"):
        tfds_sources.prepared_dir(str(copy), "moving_mnist")
    with pytest.raises(ValueError, match="test_source='nope'"):
        data.steps_per_epoch(_config(tmp_path, tfds_dir, test_source="nope"))


def test_training_path_never_imports_tensorflow(prepared, tmp_path):
    tfds_dir, _ = prepared
    code = f"""
import sys
import stlight_jax.training.loop
from stlight_jax import data
from stlight_jax.configs.common import get_base_config
c = get_base_config()
c.data.tfds_dir, c.data.data_dir, c.data.test_source = {tfds_dir!r}, {str(tmp_path)!r}, "tfds"
c.data.num_train, c.data.num_val, c.data.batch_size, c.data.eval_batch_size = 8, 4, 4, 4
next(data.create_train_iterator(c))
next(iter(data.create_eval_iterator(c, "test")))
assert "tensorflow_datasets" in sys.modules  # the TFDS reading path did run
bad = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print("TF_MODULES", bad)
"""
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "TF_MODULES []" in r.stdout
