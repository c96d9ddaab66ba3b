"""Forecasting new frames with a trained model: fixed-size sharded batches, autoregressive
rollout, and `predict` (evaluate.py's predict mode), which writes predictions.npy,
predictions.json and pictures. The user's inputs are read and checked in `inputs`."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from stlight_jax.evaluation import inputs as user_inputs
from stlight_jax.evaluation import output_set, visualize
from stlight_jax.models import ModelConfig
from stlight_jax.sharding import batch_sharded, create_mesh, replicate
from stlight_jax.steps import create_forward
from stlight_jax.weights.loading import LoadedModel
from stlight_jax.writers import write_json

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
    inputs, notes = user_inputs.load_input_everywhere(input_path, cfg)
    horizon = int(horizon or cfg.frames_out)
    shape = (int(inputs.shape[0]), horizon, *(int(s) for s in cfg.image_size), cfg.channels)
    writer = jax.process_index() == 0
    if writer:
        user_inputs.check_disk_space(out_dir, shape, horizon)
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
