"""The Grain pipeline: exact resume in a new process, per-process shards, padded eval batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stlight_jax import data
from stlight_jax.configs.common import get_base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def config(tmp_path):
    rng = np.random.default_rng(0)
    digits = tmp_path / "digits.npz"
    np.savez(
        digits,
        x_train=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        x_test=rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
    )
    c = get_base_config()
    c.data.mnist_path, c.data.data_dir = str(digits), str(tmp_path / "cache")
    # 10 sequences in batches of 4: 2 steps per epoch, 2 sequences dropped each epoch.
    c.data.num_train, c.data.num_val, c.data.num_test = 10, 10, 5
    c.data.batch_size, c.data.eval_batch_size = 4, 4
    return c


_RESUME_CHILD = """
import json, sys
import numpy as np
from stlight_jax.configs.common import get_base_config
from stlight_jax import data
c = get_base_config()
c.update_from_flattened_dict(json.loads(sys.argv[1]))
it = data.create_train_iterator(c)
if sys.argv[2] == "stop":
    for _ in range(int(sys.argv[3])):
        next(it)
    print(json.dumps(it.get_state()))
else:
    it.set_state(json.loads(sys.argv[3]))
    b = [next(it) for _ in range(3)]
    np.savez(sys.argv[4], **{f"{k}{i}": x[k] for i, x in enumerate(b) for k in x})
"""


def _flat(c) -> str:
    d = {f"data.{k}": v for k, v in c.data.items()}
    return json.dumps(d)


def test_resume_in_a_new_process_continues_with_the_exact_next_batch(config, tmp_path):
    it = data.create_train_iterator(config)
    want = [next(it) for _ in range(6)]
    # Two steps per epoch, so batches 3..5 come from epochs 1 and 2.
    assert not np.array_equal(want[0]["inputs"], want[2]["inputs"])
    run = lambda *a: (
        subprocess.run(  # noqa: E731
            [sys.executable, "-c", _RESUME_CHILD, _flat(config), *a],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    state = run("stop", "3").strip().splitlines()[-1]
    assert json.loads(state) == {"next_index": 3}
    out = tmp_path / "resumed.npz"
    run("resume", state, str(out))
    got = np.load(out)
    for i in range(3):
        for k in ("inputs", "targets"):
            np.testing.assert_array_equal(got[f"{k}{i}"], want[3 + i][k])


def test_two_processes_shard_each_global_batch_disjointly_and_in_order(config):
    config.data.batch_size = 8
    config.data.num_train = 20
    whole = data.create_train_iterator(config)
    shards = [data.create_train_iterator(config, p, 2) for p in range(2)]
    for _ in range(5):  # crosses the epoch boundary (2 steps per epoch)
        g = next(whole)
        parts = [next(s) for s in shards]
        assert parts[0]["inputs"].shape == (4, 10, 64, 64, 1)
        for k in ("inputs", "targets"):
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), g[k])
        rows = [p["inputs"].reshape(4, -1) for p in parts]
        assert not any(np.array_equal(a, b) for a in rows[0] for b in rows[1])


def test_eval_batches_are_full_with_a_padding_mask(config):
    config.data.num_val = 10
    batches = list(data.create_eval_iterator(config, "val"))
    assert len(batches) == 3
    assert [b["mask"].tolist() for b in batches][-1] == [1, 1, 0, 0]
    assert all(b["inputs"].shape == (4, 10, 64, 64, 1) for b in batches)
    assert batches[-1]["targets"].dtype == np.float32
    # Iterating again gives the same fixed set; two processes split each batch in order.
    again = list(data.create_eval_iterator(config, "val"))
    np.testing.assert_array_equal(again[1]["inputs"], batches[1]["inputs"])
    halves = [list(data.create_eval_iterator(config, "val", p, 2)) for p in range(2)]
    for i, b in enumerate(batches):
        for k in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(np.concatenate([h[i][k] for h in halves]), b[k])
    test = list(data.create_eval_iterator(config, "test"))
    assert [b["mask"].sum() for b in test] == [4, 1]


def test_steps_and_errors(config):
    assert data.steps_per_epoch(config) == 2
    config.data.batch_size = 6
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by process_count=4"):
        data.create_train_iterator(config, 0, 4)
    config.data.batch_size = 16
    with pytest.raises(ValueError, match="10 training samples are fewer than .*batch_size=16"):
        data.steps_per_epoch(config)
    config.data.name = "imagenet"
    with pytest.raises(ValueError, match="config.data.name='imagenet'"):
        data.steps_per_epoch(config)


def test_moving_mnist_shape_errors(config, tmp_path):
    config.model.channels = 3
    with pytest.raises(ValueError, match="1 channel but config.model.channels=3"):
        data.steps_per_epoch(config)
    config.model.channels = 1
    config.model.image_size = (66, 66)
    with pytest.raises(ValueError, match="66x66 is not divisible by config.model.patch=4"):
        config.model.patch = 4
        data.steps_per_epoch(config)
    config.model.image_size, config.model.patch = (64, 64), 2
    bad = tmp_path / "mnist_test_seq.npy"
    np.save(bad, np.zeros((12, 3, 64, 64), np.uint8))
    config.data.test_file = str(bad)
    with pytest.raises(
        ValueError, match=r"has 12 frames but config.model.frames_in \+ frames_out = 20"
    ):
        list(data.create_eval_iterator(config, "test"))
    np.save(bad, np.zeros((20, 3, 32, 32), np.uint8))
    with pytest.raises(
        ValueError, match=r"frames are 32x32 but config.model.image_size=\(64, 64\)"
    ):
        list(data.create_eval_iterator(config, "test"))
    seqs = np.random.default_rng(0).integers(0, 256, (20, 3, 64, 64), dtype=np.uint8)
    np.save(bad, seqs)
    b = next(iter(data.create_eval_iterator(config, "test")))
    np.testing.assert_array_equal(np.rint(b["targets"][2, 0, ..., 0] * 255), seqs[10, 2])
    assert b["mask"].tolist() == [1, 1, 1, 0]
    assert data.describe_source(config, "test") == f"Moving MNIST test file {bad}"
