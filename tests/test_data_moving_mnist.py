"""Moving MNIST generator: OpenSTL's process recovered from frames, determinism, held-out digits."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from stlight_jax.configs.common import get_base_config
from stlight_jax.data import moving_mnist as mm
from stlight_jax.data import pipeline
from stlight_jax.data.mnist import load_digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _solid_digits(n: int, seed: int = 0) -> np.ndarray:
    # Every pixel non-zero, so a lone digit's bounding box is exactly its 28x28 placement.
    return np.random.default_rng(seed).integers(1, 256, (n, 28, 28), dtype=np.uint8)


def _reference_positions(x: float, y: float, theta: float, frames: int, canvas: int = 36):
    """docs/conventions.md §5 written out independently: step, clamp-and-flip, int offsets."""
    pos = np.array([y, x], np.float64)
    vel = np.array([math.sin(theta), math.cos(theta)])
    out = []
    for _ in range(frames):
        pos = pos + vel * 0.1
        for a in range(2):
            if pos[a] <= 0 or pos[a] >= 1:
                pos[a] = min(max(pos[a], 0.0), 1.0)
                vel[a] = -vel[a]
        out.append([int(canvas * pos[0]), int(canvas * pos[1])])
    return np.array(out)


def _bbox_top_left(frame: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(frame)
    return int(rows.min()), int(cols.min())


def test_single_digit_trajectories_match_the_reference_process():
    digits = _solid_digits(5)
    wall_flips = 0
    for i in range(200):
        rng = mm.sequence_rng(0, "train", 0, i)
        seq, [(_, _, ind, (x, y, theta))] = mm.generate_sequence(
            digits, rng, 20, (64, 64), num_digits=1, return_params=True
        )
        got = np.array([_bbox_top_left(f) for f in seq])
        np.testing.assert_array_equal(got, _reference_positions(x, y, theta, 20))
        # The recovered frame content is the digit itself, untouched.
        np.testing.assert_array_equal(
            seq[5, got[5, 0] : got[5, 0] + 28, got[5, 1] : got[5, 1] + 28], digits[ind]
        )
        step = np.diff(got, axis=0)
        assert np.abs(step).max() <= math.ceil(0.1 * 36)
        v = np.abs([math.sin(theta), math.cos(theta)])
        for a in range(2):
            # Away from the walls a frame moves 3.6 * |v| px, truncated to whole pixels.
            inside = (got[:-1, a] > 0) & (got[:-1, a] < 36) & (got[1:, a] > 0) & (got[1:, a] < 36)
            free = np.abs(step[inside, a])
            assert np.all((free == math.floor(3.6 * v[a])) | (free == math.ceil(3.6 * v[a])))
            # Direction flips happen only at a wall, where the clamped position is 0 or 36.
            moves = [(t, s) for t, s in enumerate(step[:, a]) if s != 0]
            for (t0, s0), (t1, s1) in zip(moves[:-1], moves[1:], strict=True):
                if np.sign(s0) != np.sign(s1):
                    assert set(got[t0 + 1 : t1 + 1, a]) & {0, 36}, (i, a, got[:, a])
                    wall_flips += 1
    assert wall_flips > 50  # the walls were actually exercised


def test_digits_overlay_by_max():
    digits = np.stack([np.full((28, 28), 100, np.uint8), np.full((28, 28), 150, np.uint8)])
    checked = 0
    for i in range(100):
        seq, params = mm.generate_sequence(
            digits, mm.sequence_rng(1, "train", 0, i), 20, (64, 64), return_params=True
        )
        (t0, l0, i0, _), (t1, l1, i1, _) = params
        for t in range(20):
            mask = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
            mask[0][t0[t] : t0[t] + 28, l0[t] : l0[t] + 28] = True
            mask[1][t1[t] : t1[t] + 28, l1[t] : l1[t] + 28] = True
            both = mask[0] & mask[1]
            assert np.all(seq[t][mask[0] & ~mask[1]] == digits[i0][0, 0])
            if both.any() and i0 != i1:
                # Not the sum (250) and not whichever digit was drawn last: the maximum.
                assert np.all(seq[t][both] == 150)
                checked += 1
    assert checked > 20


def _small_config(tmp_path, digits_npz, **data):
    c = get_base_config()
    c.data.data_dir = str(tmp_path / "cache")
    c.data.mnist_path = str(digits_npz)
    c.data.num_train, c.data.num_val, c.data.num_test = 16, 6, 5
    c.data.batch_size = c.data.eval_batch_size = 4
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


@pytest.fixture
def digits_npz(tmp_path):
    p = tmp_path / "digits.npz"
    np.savez(p, x_train=_solid_digits(60, 1), x_test=_solid_digits(12, 2))
    return p


_CHILD = """
import hashlib, json, sys
from stlight_jax.configs.common import get_base_config
from stlight_jax.data import get_dataset
c = get_base_config()
c.data.mnist_path, c.data.data_dir = sys.argv[1], sys.argv[2]
ds = get_dataset(c)
out = {f"{e},{i}": hashlib.sha256(ds.train_sample(e, i).tobytes()).hexdigest()
       for e, i in [(0, 0), (0, 7), (3, 7), (123, 9999)]}
out["val5"] = hashlib.sha256(ds.eval_sample("val", 5).tobytes()).hexdigest()
print(json.dumps(out))
"""


def test_same_seed_epoch_index_gives_identical_sequences_in_another_process(tmp_path, digits_npz):
    c = _small_config(tmp_path, digits_npz)
    ds = pipeline.get_dataset(c)
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(digits_npz), c.data.data_dir],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    child = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("0,0", "0,7", "3,7", "123,9999"):
        e, i = map(int, key.split(","))
        assert child[key] == hashlib.sha256(ds.train_sample(e, i).tobytes()).hexdigest()
    assert child["val5"] == hashlib.sha256(ds.eval_sample("val", 5).tobytes()).hexdigest()
    # Epochs, indices and splits draw different sequences; values are on [0, 1].
    a, b = ds.train_sample(0, 3), ds.train_sample(1, 3)
    assert a.dtype == np.float32 and a.shape == (20, 64, 64, 1) and 0 <= a.min() and a.max() <= 1
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, ds.train_sample(0, 4))
    assert not np.array_equal(ds.eval_sample("val", 3), ds.eval_sample("val", 4))


def test_val_and_test_never_use_a_training_digit_image(tmp_path):
    d = load_digits("", "")  # the packaged MNIST
    train = {hashlib.sha1(x.tobytes()).digest() for x in d.train}
    for split in ("val", "test"):
        pool = getattr(d, split)
        for i in range(300):
            seq, params = mm.generate_sequence(
                pool, mm.sequence_rng(0, split, 0, i), 20, (64, 64), return_params=True
            )
            for _, _, ind, _ in params:
                assert hashlib.sha1(pool[ind].tobytes()).digest() not in train
    # And MovingMNIST's val/test samples (the test set via its .npy cache) are those draws.
    c = get_base_config()
    c.data.num_test, c.data.data_dir = 3, str(tmp_path)
    ds = mm.MovingMNIST(c)
    assert ds.eval_size("test") == 3 and os.path.isfile(ds.test_path())
    for split, pool in (("val", d.val), ("test", d.test)):
        want = mm.generate_sequence(pool, mm.sequence_rng(0, split, 0, 2), 20, (64, 64))
        got = np.rint(ds.eval_sample(split, 2)[..., 0] * 255)
        np.testing.assert_array_equal(got, want)
