"""A forecast's inputs: user frames (a .npy array or a folder of images, one sequence) read,
checked against the model's input shape and scale and normalised to float32 on [0, 1], the same
frames in every process of a multi-process job, and the disk space predictions.npy will need,
each refused in one line before any work."""

from __future__ import annotations

import math
import os
import shutil
import zlib
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from stlight_jax.data.common import U8_TO_UNIT
from stlight_jax.models import ModelConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expected_input_shapes(cfg: ModelConfig) -> str:
    t, (h, w), c = cfg.frames_in, cfg.image_size, cfg.channels
    shapes = f"(N, {t}, {h}, {w}, {c}) or ({t}, {h}, {w}, {c})"
    if c == 1:
        shapes += f" or (N, {t}, {h}, {w})"
    return shapes


def prepare_input(arr: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Checks and normalises user frames to float32 (N, frames_in, H, W, C) on [0, 1].

    Accepts (N, T, H, W, C), (T, H, W, C) (one sequence) and, for 1-channel models,
    (N, T, H, W). float data must lie on [0, 1]; uint8 data is read as 0..255 and divided by
    255 (as the data pipeline does). Returns (array, notes for the output metadata).
    """
    arr = np.asarray(arr)
    t, (h, w), c = cfg.frames_in, tuple(cfg.image_size), cfg.channels
    expected = expected_input_shapes(cfg)
    notes: dict[str, Any] = {"input_shape": list(arr.shape), "input_dtype": str(arr.dtype)}
    if arr.ndim == 5:
        x = arr
    elif arr.ndim == 4:
        if c == 1 and arr.shape[-1] != 1 and tuple(arr.shape[2:]) == (h, w):
            x = arr[..., None]  # (N, T, H, W) grey
        else:
            x = arr[None]  # one sequence (T, H, W, C)
    else:
        raise ValueError(
            f"input has shape {tuple(arr.shape)} (rank {arr.ndim}); the model expects {expected}"
        )
    n = x.shape[0]
    for name, got, want in (
        ("frames", x.shape[1], t),
        ("height", x.shape[2], h),
        ("width", x.shape[3], w),
        ("channels", x.shape[4], c),
    ):
        if got != want:
            raise ValueError(
                f"input has shape {tuple(arr.shape)}: {got} {name} where the model expects "
                f"{want}; expected shape {expected}"
            )
    if n == 0:
        raise ValueError(f"input holds no sequences; expected shape {expected}")
    if arr.dtype == np.uint8:
        x = U8_TO_UNIT[x]
        notes["scaled_from_uint8"] = "uint8 values 0..255 were divided by 255"
    elif np.issubdtype(arr.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("input holds NaN or Inf values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(
                f"float input must be on [0, 1] (the model's scale); got values in "
                f"[{lo:g}, {hi:g}]. Divide 0..255 data by 255 or pass it as uint8"
            )
    else:
        raise ValueError(
            f"input dtype {arr.dtype} is not supported: pass float frames on [0, 1] or uint8 0..255"
        )
    return np.ascontiguousarray(x), notes


def load_input(path: str, cfg: ModelConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Reads a .npy file or a folder of images (sorted by name: one sequence) and checks it."""
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        if cfg.channels not in (1, 3):
            raise ValueError(
                f"{path}: a folder of images gives 1 (grey) or 3 (RGB) channels, but the model "
                f"has {cfg.channels}; pass a .npy of shape {expected_input_shapes(cfg)}"
            )
        from PIL import Image

        mode = "L" if cfg.channels == 1 else "RGB"
        frames = []
        for name in names:
            try:
                with Image.open(os.path.join(path, name)) as img:
                    frames.append(np.asarray(img.convert(mode), np.uint8))
            except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for damaged files
                where = os.path.join(path, name)
                raise ValueError(f"{where}: cannot read as an image ({e})") from e
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"{path}: images differ in size: {sorted(shapes)}")
        arr = np.stack(frames)
        if cfg.channels == 1:
            arr = arr[..., None]
        x, notes = prepare_input(arr, cfg)
        notes.update(input_format="image folder (one sequence, files sorted by name)")
        notes["input_files"] = names
        return x, notes
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: --input is an empty file (0 bytes)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as .npy ({e})") from e
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: expected a .npy array, got {type(arr).__name__}")
    try:
        x, notes = prepare_input(arr, cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    notes["input_format"] = "npy"
    return x, notes


def load_input_everywhere(path: str, cfg: ModelConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """`load_input` in every process; with several, they must all read the same frames.

    Each process feeds its devices from its own copy of the input, so `path` must be readable
    on every host. A failure on any process, or inputs that differ between processes, raise an
    error in every process (rather than leave the others waiting in a collective).
    """
    if jax.process_count() == 1:
        return load_input(path, cfg)
    x, notes, error = None, {}, None
    try:
        x, notes = load_input(path, cfg)
    except Exception as e:  # re-raised below, once every process knows
        error = e
    digest = -1
    if x is not None:
        digest = zlib.crc32(x.tobytes(), zlib.crc32(repr(x.shape).encode()))
    digests = multihost_utils.process_allgather(np.asarray(digest, np.int64)).tolist()
    if error is not None:
        raise error
    failed = [i for i, d in enumerate(digests) if d == -1]
    if failed:
        raise ValueError(f"input {path!r} could not be read on process(es) {failed}")
    if len(set(digests)) > 1:
        raise ValueError(
            f"input {path!r} differs between processes (CRC32 {digests}); every process "
            "must read the same frames"
        )
    return x, notes


def check_disk_space(out_dir: str, shape: tuple[int, ...], horizon: int) -> None:
    """Refuses, in one line, a forecast whose predictions.npy the disk under `out_dir` cannot
    hold (a long --horizon), before any work."""
    need = 4 * math.prod(shape)
    where = os.path.abspath(out_dir)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    free = shutil.disk_usage(where).free
    if need > free:
        raise ValueError(
            f"--horizon={horizon}: predictions.npy would take {need / 1e9:.3g} GB "
            f"({shape[0]} sequence(s) x {horizon} frames x {shape[2]}x{shape[3]}x{shape[4]} "
            f"float32), more than the {free / 1e9:.3g} GB free under {where}; lower --horizon"
        )
