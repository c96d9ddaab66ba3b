"""Moving MNIST exactly as OpenSTL generates it, made random-access: sequence = f(seed, epoch, i).

The process (docs/conventions.md §5): per digit uniform x, y and theta, velocity (cos, sin),
step 0.1 on a (size - 28) px canvas, advance before recording a frame, clamp and flip at the
walls, offset int(canvas * pos), overlay by max, values / 255.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from stlight_jax.config import schema
from stlight_jax.data import common
from stlight_jax.data.mnist import Digits, load_digits

STEP_LENGTH = 0.1
# 'auto': config.data.test_file if set, else a stand-in generated from MNIST test digits;
# 'tfds': TFDS `moving_mnist` (the sequences of mnist_test_seq.npy) from config.data.tfds_dir.
TEST_SOURCES = schema.TEST_SOURCES
# Stream tags keep train / val / test draws independent even for equal (epoch, index).
_TAGS = {"train": 0, "val": 1, "test": 2}


def sequence_rng(seed: int, split: str, epoch: int, index: int) -> np.random.Generator:
    """The generator that draws sequence `index` of `epoch`; a pure function of its arguments."""
    return np.random.default_rng([int(seed), _TAGS[split], int(epoch), int(index)])


def random_trajectory(
    rng: np.random.Generator, num_frames: int, canvas: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """OpenSTL's `get_random_trajectory`: int (top, left) per frame, and the drawn (x, y, theta)."""
    x, y, u = rng.random(3)
    x, y = float(x), float(y)
    theta = float(u) * 2 * math.pi
    drawn = (x, y, theta)
    v_y, v_x = math.sin(theta), math.cos(theta)
    start_y = np.zeros(num_frames)
    start_x = np.zeros(num_frames)
    for i in range(num_frames):
        # Python floats, in OpenSTL's order, so the truncated offsets match it bit for bit.
        y += v_y * STEP_LENGTH
        x += v_x * STEP_LENGTH
        if x <= 0:
            x = 0
            v_x = -v_x
        if x >= 1.0:
            x = 1.0
            v_x = -v_x
        if y <= 0:
            y = 0
            v_y = -v_y
        if y >= 1.0:
            y = 1.0
            v_y = -v_y
        start_y[i] = y
        start_x[i] = x
    top = (canvas[0] * start_y).astype(np.int32)
    left = (canvas[1] * start_x).astype(np.int32)
    return top, left, drawn


def generate_sequence(
    digits: np.ndarray,
    rng: np.random.Generator,
    num_frames: int,
    image_size: tuple[int, int],
    num_digits: int = 2,
    return_params: bool = False,
):
    """uint8 (T, H, W); with `return_params` also [(top, left, digit_index, (x, y, theta)), ...]."""
    h, w = image_size
    dh, dw = digits.shape[1:]
    frames = np.zeros((num_frames, h, w), np.uint8)
    params = []
    for _ in range(num_digits):
        top, left, drawn = random_trajectory(rng, num_frames, (h - dh, w - dw))
        ind = int(rng.integers(0, len(digits)))
        digit = digits[ind]
        for t in range(num_frames):
            view = frames[t, top[t] : top[t] + dh, left[t] : left[t] + dw]
            np.maximum(view, digit, out=view)
        params.append((top, left, ind, drawn))
    return (frames, params) if return_params else frames


def _check_model_shape(config, where: str) -> tuple[int, tuple[int, int]]:
    m = config.model
    if m.channels != 1:
        raise ValueError(
            f"{where}: Moving MNIST has 1 channel but config.model.channels={m.channels}"
        )
    h, w = (int(s) for s in m.image_size)
    return m.frames_in + m.frames_out, (h, w)


class MovingMNIST(common.Dataset):
    """Training sequences drawn fresh per epoch; fixed validation and test sets."""

    def __init__(self, config):
        d = config.data
        self.config = config
        self.digits: Digits = load_digits(d.mnist_path, d.tfds_dir)
        self.num_frames, self.image_size = _check_model_shape(config, self.digits.source)
        dh, dw = self.digits.train.shape[1:]
        if self.image_size[0] < dh or self.image_size[1] < dw:
            raise ValueError(
                f"{self.digits.source}: config.model.image_size={tuple(self.image_size)} is "
                f"smaller than the {dh}x{dw} digits"
            )
        common.check_patch(config, self.image_size, self.digits.source)
        self.seed = int(d.seed)
        self.num_digits = int(d.num_digits)
        self.train_size = int(d.num_train)
        self.test_source = d.get("test_source", "auto")
        if self.test_source not in TEST_SOURCES:
            raise ValueError(
                f"config.data.test_source={self.test_source!r}: expected one of {TEST_SOURCES}"
            )
        if self.test_source == "tfds" and d.test_file:
            raise ValueError(
                "config.data.test_source='tfds' and config.data.test_file are both set; keep one"
            )
        self._test = None  # (T, N, H, W) uint8, loaded on first use

    def _generate(self, split: str, epoch: int, index: int) -> np.ndarray:
        pool = getattr(self.digits, split)
        rng = sequence_rng(self.seed, split, epoch, index)
        return generate_sequence(pool, rng, self.num_frames, self.image_size, self.num_digits)

    def train_sample(self, epoch: int, index: int) -> np.ndarray:
        return common.U8_TO_UNIT[self._generate("train", epoch, index)][..., None]

    def eval_size(self, split: str) -> int:
        if split == "val":
            return int(self.config.data.num_val)
        return self._test_array().shape[1]

    def eval_sample(self, split: str, index: int) -> np.ndarray:
        if split == "val":
            seq = self._generate("val", 0, index)
        else:
            seq = self._test_array()[: self.num_frames, index]
        return common.U8_TO_UNIT[seq][..., None]

    def describe(self, split: str) -> str:
        if split == "train":
            return (
                f"Moving MNIST generated per epoch from {self.digits.source} training digits "
                f"(seed {self.seed})"
            )
        if split == "val":
            return (
                f"Moving MNIST, {self.eval_size('val')} fixed sequences generated from "
                f"{self.digits.source} held-out training digits (seed {self.seed})"
            )
        if self.test_source == "tfds":
            return (
                f"Moving MNIST test set: TFDS moving_mnist in {self.config.data.tfds_dir} (the "
                "sequences of mnist_test_seq.npy, in TFDS's stored order)"
            )
        path = self.test_path()
        if self.config.data.test_file:
            return f"Moving MNIST test file {path}"
        return (
            f"Moving MNIST stand-in test set generated from {self.digits.source} test digits, "
            f"cached at {path} (not the paper's mnist_test_seq.npy)"
        )

    def test_path(self) -> str:
        d = self.config.data
        if d.test_file:
            return d.test_file
        h, w = self.image_size
        name = (
            f"mmnist_test_s{self.seed}_n{int(d.num_test)}_t{self.num_frames}_{h}x{w}"
            f"_d{self.num_digits}_{self.digits.fingerprint('test')}.npy"
        )
        return os.path.join(d.data_dir, name)

    def _test_array(self) -> np.ndarray:
        if self._test is None:
            if self.test_source == "tfds":
                from stlight_jax.data import tfds_sources

                d = self.config.data
                arr = tfds_sources.moving_mnist_test(d.tfds_dir, d.data_dir)
                self._test = check_test_array(arr, f"{d.tfds_dir} (TFDS moving_mnist)", self.config)
            elif self.config.data.test_file:
                self._test = load_test_file(self.config.data.test_file, self.config)
            else:
                self._test = self._cached_test_set()
        return self._test

    def _cached_test_set(self) -> np.ndarray:
        path = self.test_path()
        if not os.path.exists(path):
            n = int(self.config.data.num_test)
            seqs = np.stack(
                [self._generate("test", 0, i) for i in range(n)], axis=1
            )  # (T, N, H, W): the layout of mnist_test_seq.npy
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            # Write-then-rename, so concurrent processes never read a half-written cache.
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, seqs)
            os.replace(tmp, path)
        return np.load(path, mmap_mode="r")


def load_test_file(path: str, config) -> np.ndarray:
    """Opens mnist_test_seq.npy ((T, N, H, W) uint8) and checks it against config.model."""
    _check_model_shape(config, path)
    common.check_data_file(path, "config.data.test_file")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as .npy ({e})") from e
    return check_test_array(arr, path, config)


def check_test_array(arr: np.ndarray, path: str, config) -> np.ndarray:
    """Checks a (T, N, H, W) uint8 test set against config.model; keeps num_test sequences."""
    num_frames, (h, w) = _check_model_shape(config, path)
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected uint8 (T, N, H, W) like mnist_test_seq.npy, got {arr.dtype} "
            f"{arr.shape}"
        )
    if arr.shape[0] < num_frames:
        raise ValueError(
            f"{path}: has {arr.shape[0]} frames but config.model.frames_in + frames_out = "
            f"{num_frames}"
        )
    if arr.shape[2:] != (h, w):
        raise ValueError(
            f"{path}: frames are {arr.shape[2]}x{arr.shape[3]} but config.model.image_size={(h, w)}"
        )
    n = min(arr.shape[1], int(config.data.num_test))
    return arr[:, :n]
