"""What every dataset provides to the pipeline, plus the shared shape/range checks and splits."""

from __future__ import annotations

import functools
import os

import numpy as np

# OpenSTL divides by 255.0 in float64 and casts to float32; a table reproduces that exactly.
U8_TO_UNIT = (np.arange(256) / 255.0).astype(np.float32)

SPLITS = ("train", "val", "test")


class Dataset:
    """Random-access float32 (T, H, W, C) samples on [0, 1]; train samples depend on the epoch."""

    train_size: int
    num_frames: int

    def train_sample(self, epoch: int, index: int) -> np.ndarray:
        raise NotImplementedError

    def eval_size(self, split: str) -> int:
        raise NotImplementedError

    def eval_sample(self, split: str, index: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self, split: str) -> str:
        raise NotImplementedError


def check_data_file(path: str, what: str = "config.data.path") -> None:
    """ValueError naming `path` when it cannot be a data file: missing, a directory, or empty
    (numpy's own errors for the last two are a traceback-worthy EOFError or a misleading
    "does not exist")."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: {what} is a directory; expected a file")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {what} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: {what} is an empty file (0 bytes)")


def check_real(dtype: np.dtype, where: str) -> None:
    """Complex frames would lose their imaginary part silently on the cast to float32."""
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(
            f"{where}: holds complex numbers (dtype {dtype}); frames must be real-valued"
        )


def check_patch(config, image_size: tuple[int, int], where: str) -> None:
    """The model patchifies with stride `patch`; other sizes would be silently cropped."""
    p = int(config.model.get("patch", 1) or 1)
    h, w = image_size
    if h % p or w % p:
        raise ValueError(f"{where}: image size {h}x{w} is not divisible by config.model.patch={p}")


def check_frames_size_channels(
    config, where: str, frames: int, size: tuple[int, int], channels: int, frames_what: str = ""
) -> None:
    """Raises ValueError naming `where` when the stored shape cannot feed config.model."""
    m = config.model
    need = m.frames_in + m.frames_out
    if frames < need:
        raise ValueError(
            f"{where}: has {frames} frames{frames_what} but config.model.frames_in + frames_out = "
            f"{m.frames_in} + {m.frames_out} = {need}"
        )
    if tuple(int(s) for s in m.image_size) != tuple(size):
        raise ValueError(
            f"{where}: frames are {size[0]}x{size[1]} but config.model.image_size="
            f"{tuple(m.image_size)}"
        )
    if channels != m.channels:
        raise ValueError(f"{where}: has {channels} channels but config.model.channels={m.channels}")
    check_patch(config, size, where)


def check_range(
    arr: np.ndarray, lo: float, hi: float, where: str, part: str = "", chunk: int = 256
) -> None:
    """Scans `arr` (possibly memory-mapped) in chunks; ValueError naming the first NaN/Inf (its
    index and, when `where` does not say it, the split `part`), or if a value leaves [lo, hi]."""
    check_real(arr.dtype, where)
    amin, amax = np.inf, -np.inf
    for s in range(0, len(arr), chunk):
        part_chunk = np.asarray(arr[s : s + chunk])
        if not part_chunk.size:
            continue
        if np.issubdtype(part_chunk.dtype, np.inexact):
            finite = np.isfinite(part_chunk)
            if not finite.all():
                bad = tuple(int(i) for i in np.argwhere(~finite)[0])
                value = part_chunk[bad]
                index = (s + bad[0], *bad[1:])
                split = f"{part} " if part else ""
                raise ValueError(
                    f"{where}: {split}sample {index[0]} holds a non-finite value ({value}) at "
                    f"index {index} (the first one); NaN/Inf data would poison training and "
                    "metrics"
                )
        # Python min/max would skip NaN; the chunk is all finite here.
        amin = min(amin, float(part_chunk.min()))
        amax = max(amax, float(part_chunk.max()))
    if amin < lo or amax > hi:
        raise ValueError(
            f"{where}: values span [{amin:g}, {amax:g}] but the declared range is [{lo:g}, {hi:g}]"
        )


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of epoch `epoch`; a pure function of (seed, epoch, n)."""
    return np.random.default_rng([int(seed), 7, int(epoch)]).permutation(n)


class ArrayDataset(Dataset):
    """A dataset stored as parts ('train', 'test', optionally 'val') of per-sample rows.

    Validation comes from the stored 'val' part if there is one, else from the last `num_val`
    training rows (which are then never trained on), else (num_val == 0) from the test part,
    which is OpenSTL's convention and is said so in `describe`.
    """

    def __init__(self, config, parts: dict[str, int], name: str, where: str):
        self.config = config
        self.name = name
        self.where = where
        self.seed = int(config.data.seed)
        self.num_frames = config.model.frames_in + config.model.frames_out
        n_val = int(config.data.num_val)
        self._rows: dict[str, tuple[str, int, int]] = {}  # split -> (part, start, stop)
        if "train" not in parts or "test" not in parts:
            raise ValueError(f"{where}: needs a train and a test part, found {sorted(parts)}")
        n_train = parts["train"]
        if "val" in parts:
            self._rows["val"] = ("val", 0, parts["val"])
            self._val_note = "stored validation split"
        elif n_val > 0:
            if n_val >= n_train:
                raise ValueError(
                    f"{where}: config.data.num_val={n_val} leaves no training samples out of "
                    f"{n_train}"
                )
            n_train -= n_val
            self._rows["val"] = ("train", n_train, n_train + n_val)
            self._val_note = f"last {n_val} training samples, held out"
        else:
            self._rows["val"] = ("test", 0, parts["test"])
            self._val_note = "the test split (num_val=0, OpenSTL's convention)"
        self._rows["train"] = ("train", 0, n_train)
        self._rows["test"] = ("test", 0, parts["test"])
        self.train_size = n_train

    def read(self, part: str, row: int) -> np.ndarray:
        """float32 (T, H, W, C) on [0, 1] for stored row `row` of `part`."""
        raise NotImplementedError

    def train_sample(self, epoch: int, index: int) -> np.ndarray:
        part, start, stop = self._rows["train"]
        return self.read(
            part, start + int(epoch_permutation(self.seed, epoch, stop - start)[index])
        )

    def eval_size(self, split: str) -> int:
        _, start, stop = self._rows[split]
        return stop - start

    def eval_sample(self, split: str, index: int) -> np.ndarray:
        part, start, _ = self._rows[split]
        return self.read(part, start + index)

    def describe(self, split: str) -> str:
        part, start, stop = self._rows[split]
        note = f"; validation = {self._val_note}" if split == "val" else ""
        return f"{self.name} {split}: {self.where} ({part} rows {start}-{stop - 1}){note}"
