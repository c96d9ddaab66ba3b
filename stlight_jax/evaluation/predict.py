"""Forecasting new frames with a trained model: user inputs (.npy or a folder of images)
checked and normalised, fixed-size sharded batches, autoregressive rollout, and `predict`
(evaluate.py's predict mode), which writes predictions.npy, predictions.json and pictures."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from stlight_jax.evaluation import output_set
from stlight_jax.evaluation import visualize
from stlight_jax.data.common import U8_TO_UNIT
from stlight_jax.models import ModelConfig
from stlight_jax.sharding import batch_sharded, create_mesh, replicate
from stlight_jax.steps import create_forward
from stlight_jax.weights.loading import LoadedModel
from stlight_jax.writers import write_json

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Predicted frames drawn in a sequence's PNG strip and GIF; predictions.npy holds them all.
PICTURE_MAX_FRAMES = 100


def make_predict_fn(
    loaded: LoadedModel, batch_size: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """numpy (N, frames_in, H, W, C) -> numpy (N, frames_out, H, W, C), in fixed-size batches.

    Batches hold `batch_size` sequences (default config.data.eval_batch_size, fewer for a
    smaller input); the last one is zero-padded so one compiled program serves every batch.
    With several processes every process calls it with the same `x` (each device takes its
    rows from its own process's copy) and gets all the predictions back.
    """
    mesh = create_mesh()
    batch_size = int(batch_size or loaded.config.data.eval_batch_size)
    batch_size = math.ceil(batch_size / mesh.size) * mesh.size  # sharded evenly over devices
    forward = create_forward(loaded.graphdef, mesh)
    sharded = batch_sharded(mesh)
    params, batch_stats = replicate((loaded.params, loaded.batch_stats), mesh)
    cfg = loaded.model_config

    def predict_fn(x: np.ndarray) -> np.ndarray:
        cfg.check_input(x.shape)
        n = x.shape[0]
        # A few sequences need not pay for a full eval batch; a rollout repeats the same n,
        # so this still compiles once.
        size = min(batch_size, math.ceil(n / mesh.size) * mesh.size)
        out = []
        for start in range(0, n, size):
            chunk = np.asarray(x[start : start + size], np.float32)
            k = chunk.shape[0]
            if k < size:
                pad = np.zeros((size - k, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            inputs = jax.make_array_from_callback(chunk.shape, sharded, chunk.__getitem__)
            out.append(np.asarray(forward(params, batch_stats, inputs))[:k])
        return np.concatenate(out)

    return predict_fn


def rollout(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    horizon: int,
    frames_in: int,
    frames_out: int,
    sink: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[np.ndarray | None, int]:
    """Forecasts `horizon` frames; beyond `frames_out` the predictions are fed back as inputs.

    Each pass sees the last `frames_in` frames of (inputs + predictions so far), unclipped, as
    OpenSTL's `_predict` does for aft_seq_length > pre_seq_length (identical to it when
    frames_in == frames_out). Returns (predictions (N, horizon, H, W, C), forward passes).
    With `sink`, each pass's frames go to `sink(first_frame_index, frames)` as they come and
    nothing accumulates (memory flat in the horizon): returns (None, forward passes).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    history = np.asarray(inputs, np.float32)
    outs, produced, passes = [], 0, 0
    while produced < horizon:
        pred = np.asarray(predict_fn(history[:, -frames_in:]), np.float32)
        if pred.shape[1] != frames_out:
            raise ValueError(f"model returned {pred.shape[1]} frames, expected {frames_out}")
        kept = pred[:, : horizon - produced]
        if sink is None:
            outs.append(kept)
        else:
            sink(produced, kept)
        produced += kept.shape[1]
        passes += 1
        history = np.concatenate([history[:, -frames_in:], pred], axis=1)[:, -frames_in:]
    return (None if sink is not None else np.concatenate(outs, axis=1)), passes


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


def predict(
    loaded: LoadedModel,
    input_path: str,
    out_dir: str,
    horizon: int | None = None,
    num_samples: int = 4,
) -> dict[str, Any]:
    """Forecasts `horizon` frames (default frames_out) for each input sequence; no targets.

    Writes predictions.npy (N, horizon, H, W, C) of raw model outputs, predictions.json (the
    metadata, including whether and how the rollout fed predictions back) and, for the first
    `num_samples` sequences, sequence_<i>.png strips and sequence_<i>.gif animations. With
    several processes each reads the whole input (the same file) and process 0 writes.
    """
    cfg = loaded.model_config
    inputs, notes = load_input_everywhere(input_path, cfg)
    horizon = int(horizon or cfg.frames_out)
    shape = (int(inputs.shape[0]), horizon, *(int(s) for s in cfg.image_size), cfg.channels)
    writer = jax.process_index() == 0
    if writer:
        check_disk_space(out_dir, shape, horizon)
    predict_fn = make_predict_fn(loaded)
    name = "predictions.npy"
    # One whole set: a temporary folder renamed into place at the end (output_set).
    with output_set.whole_set(out_dir, writer) as out:
        sink = _PredictionsFile(out, name, shape) if writer else None
        try:
            _, passes = rollout(
                predict_fn,
                inputs,
                horizon,
                cfg.frames_in,
                cfg.frames_out,
                sink or (lambda start, frames: None),
            )
        finally:
            if sink is not None:
                sink.close()
        pictures, shown = [], min(horizon, PICTURE_MAX_FRAMES)
        if writer:
            predictions = np.load(out.path(name), mmap_mode="r")
            captions = ["pred" if k < cfg.frames_out else "rollout" for k in range(shown)]
            for i in range(min(num_samples, len(inputs))):
                pred = np.asarray(predictions[i, :shown])
                with out.writing(f"sequence_{i:03d}.png", f"sequence_{i:03d}.gif"):
                    pictures.append(
                        visualize.write_sample_pictures(
                            out.tmp, i, inputs[i], None, pred, captions, "sequence"
                        )
                    )
            del predictions
        result = _predict_result(loaded, input_path, out_dir, notes, shape, passes, pictures)
        if writer:
            with out.writing("predictions.json"):
                write_json(out.path("predictions.json"), result)
    if not writer:
        del result["files"]  # process 0 wrote them
    return result


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


class _PredictionsFile:
    """predictions.npy (N, horizon, H, W, C) float32 written pass by pass: each pass's frames
    go straight to the file (`os.pwrite` at each sequence's offset), so memory holds one pass
    whatever the horizon. The file's blocks are reserved up front: a full disk is an error
    naming it at the start, not a crash part-way."""

    def __init__(self, out: output_set.OutputSet, name: str, shape: tuple[int, ...]):
        self.out, self.name, self.shape = out, name, shape
        with out.writing(name):
            header = np.lib.format.open_memmap(out.path(name), "w+", np.float32, shape)
            self.offset = header.offset
            del header
        out.preallocate(name)
        self.frame_bytes = 4 * math.prod(shape[2:])
        self.fd = os.open(out.path(name), os.O_WRONLY)
        self.last_log = time.monotonic()

    def __call__(self, start: int, frames: np.ndarray) -> None:
        n, horizon = self.shape[:2]
        with self.out.writing(self.name):
            for i in range(n):
                data = np.ascontiguousarray(frames[i], np.float32).tobytes()
                at = self.offset + (i * horizon + start) * self.frame_bytes
                while data:
                    written = os.pwrite(self.fd, data, at)
                    data, at = data[written:], at + written
        done = start + frames.shape[1]
        if time.monotonic() - self.last_log > 30 and done < horizon:
            logging.info("rollout: %d of %d frames predicted", done, horizon)
            self.last_log = time.monotonic()

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with self.out.writing(self.name):
                os.close(fd)


def _predict_result(loaded, input_path, out_dir, notes, shape, passes, pictures) -> dict:
    cfg = loaded.model_config
    horizon = shape[1]
    shown = min(horizon, PICTURE_MAX_FRAMES)
    result = {
        "mode": "predict",
        "out": os.path.abspath(out_dir),
        "config_name": loaded.config.name,
        "checkpoint": loaded.source,
        "input": os.path.abspath(input_path),
        **notes,
        "num_sequences": shape[0],
        "frames_in": cfg.frames_in,
        "frames_out": cfg.frames_out,
        "horizon": horizon,
        "autoregressive": horizon > cfg.frames_out,
        "forward_passes": passes,
        "rollout": _describe_rollout(cfg, horizon),
        "files": {
            "predictions": "predictions.npy",
            "predictions_shape": list(shape),
            "predictions_note": "float32 NHWC raw (unclipped) model outputs on the [0, 1] scale",
            "pictures": pictures,
            "pictures_frames": shown,
        },
        "notes": [
            "frame indices in the pictures count from 1 at the first input frame; "
            "'rollout' marks frames predicted from predictions"
        ],
    }
    if shown < horizon:
        result["notes"].append(
            f"the pictures show the first {shown} of the {horizon} predicted frames "
            "(predictions.npy holds them all)"
        )
    return result


def _describe_rollout(cfg: ModelConfig, horizon: int) -> str:
    """How the forecast was made, for predictions.json."""
    if horizon > cfg.frames_out:
        return (
            f"autoregressive: frames after the first {cfg.frames_out} were predicted from "
            f"earlier predictions (each pass sees the last {cfg.frames_in} frames of inputs + "
            "predictions, unclipped), so errors compound with lead time"
        )
    truncated = f", truncated to {horizon} frames" if horizon < cfg.frames_out else ""
    return f"single forward pass (the model's trained output length {cfg.frames_out}){truncated}"
