"""Evaluate a checkpoint on a split (OpenSTL metrics, baselines, pictures) or forecast new inputs.

The library behind `evaluate.py`: `run(...)` does either mode; the pieces (`load_model`,
`evaluate`, `predict`, `rollout`, `prepare_input`) are usable on their own.

With several JAX processes (`jax.distributed.initialize`) every process runs the same calls;
process 0 alone writes the output, the same files a single-process run writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import zlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from stlight_jax import checkpoint as ckpt
from stlight_jax import convert, data, metrics, visualize
from stlight_jax.data.common import U8_TO_UNIT
from stlight_jax.models import ModelConfig, create_model
from stlight_jax.train import (
    apply_model,
    create_mesh,
    global_batch,
    make_eval_step,
    model_config,
)

PREDICTORS = ("model", "last_frame", "zeros")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
NON_FINITE_NOTE = (
    "strict JSON: a non-finite number (the PSNR of an exactly predicted frame, which OpenSTL "
    "reports as inf) is written as the string 'inf'; psnr_exact_frames counts such frames"
)


@dataclasses.dataclass
class LoadedModel:
    """A restored network: its config, the NNX graph and weights, and where they came from."""

    config: ml_collections.ConfigDict
    graphdef: nnx.GraphDef
    params: Any
    batch_stats: Any
    source: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return model_config(self.config)


# ---------------------------------------------------------------------------------------------
# Loading.


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote to `<workdir>/config.json`, read by
    `convert.load_config` (the one reader of saved configs)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: is {workdir!r} a training workdir? Otherwise pass --config"
        )
    return convert.load_config(path)


def parse_step(step: str | int | None) -> str | int | None:
    """'best' | 'latest' | an integer (as str or int) | None (best if validated, else latest)."""
    if step is None or step == "":
        return None
    if isinstance(step, int) or step in ("best", "latest"):
        return step
    try:
        return int(step)
    except ValueError:
        raise ValueError(f"step={step!r}: expected 'best', 'latest' or a step number") from None


def load_model(
    config: ml_collections.ConfigDict,
    *,
    workdir: str | None = None,
    checkpoint: str | None = None,
    weights: str | None = None,
    step: str | int | None = None,
    key_map: str | None = None,
) -> LoadedModel:
    """Builds the network of `config` and loads weights from exactly one place.

    `weights`: a PyTorch state_dict file (.pt/.pth/.ckpt/.safetensors) through the converter,
    in any layout `weight_layouts` recognises (`key_map`: JSON key map file(s) for others);
    `checkpoint`: an Orbax checkpoints dir or converted weights checkpoint; otherwise `workdir`.
    `step` ('best' | 'latest' | N) picks an Orbax step (see `checkpoint.restore_weights`).
    """
    if checkpoint and weights:
        raise ValueError("give either a checkpoint (Orbax) or weights (PyTorch), not both")
    step = parse_step(step)
    model = create_model(model_config(config), seed=int(config.seed), dtype=config.compute_dtype)
    if weights:
        if step is not None:
            raise ValueError("step selects an Orbax checkpoint step; it does not apply to weights")
        state_dict, layout = convert.read_state_dict(weights, key_map)
        convert.load_into_model(model, state_dict, source=weights)
        graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        source = {
            "kind": "pytorch_weights",
            "path": os.path.abspath(weights),
            "layout": layout,
            "step": None,
        }
        return LoadedModel(config, graphdef, params, batch_stats, source)
    path = checkpoint or workdir
    if not path:
        raise ValueError("nothing to load: give a workdir, a checkpoint or a weights file")
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats, chosen = ckpt.restore_weights(path, params, batch_stats, step)
    source = {
        "kind": "orbax",
        "path": os.path.abspath(path),
        "step": int(chosen),
        "step_requested": "best if any step has validation metrics, else latest"
        if step is None
        else step,
    }
    return LoadedModel(config, graphdef, params, batch_stats, source)


# ---------------------------------------------------------------------------------------------
# Forward passes and autoregressive rollout.


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """`tree` on every device of `mesh`, e.g. the weights `load_model` restored.

    With several processes the weights sit on each process's own device, and a device-to-device
    copy to other hosts is not supported (XLA:CPU, GPUs without DCN transfers): every process
    holds the same values, so each places its host copy on its own devices.
    """
    if jax.process_count() > 1:
        tree = jax.device_get(tree)
    return jax.device_put(tree, NamedSharding(mesh, P()))


def make_forward(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh) -> Callable:
    """Jitted (params, batch_stats, inputs) -> float32 predictions, batch sharded over 'data'."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def forward(params, batch_stats, inputs):
        return apply_model(graphdef, params, batch_stats, inputs, train=False)[0]

    return jax.jit(
        forward, in_shardings=(replicated, replicated, sharded), out_shardings=replicated
    )


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
    forward = make_forward(loaded.graphdef, mesh)
    sharded = NamedSharding(mesh, P("data"))
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
) -> tuple[np.ndarray, int]:
    """Forecasts `horizon` frames; beyond `frames_out` the predictions are fed back as inputs.

    Each pass sees the last `frames_in` frames of (inputs + predictions so far), unclipped, as
    OpenSTL's `_predict` does for aft_seq_length > pre_seq_length (identical to it when
    frames_in == frames_out). Returns (predictions (N, horizon, H, W, C), forward passes).
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    history = np.asarray(inputs, np.float32)
    outs, produced, passes = [], 0, 0
    while produced < horizon:
        pred = np.asarray(predict_fn(history[:, -frames_in:]), np.float32)
        if pred.shape[1] != frames_out:
            raise ValueError(f"model returned {pred.shape[1]} frames, expected {frames_out}")
        outs.append(pred)
        produced += frames_out
        passes += 1
        history = np.concatenate([history, pred], axis=1)[:, -frames_in:]
    return np.concatenate(outs, axis=1)[:, :horizon], passes


# ---------------------------------------------------------------------------------------------
# User inputs for predict mode.


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
            with Image.open(os.path.join(path, name)) as img:
                frames.append(np.asarray(img.convert(mode), np.uint8))
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
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as .npy ({e})") from e
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: expected a .npy array, got {type(arr).__name__}")
    x, notes = prepare_input(arr, cfg)
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


# ---------------------------------------------------------------------------------------------
# Output helpers.


def _strict(v: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to strings."""
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


def write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(_strict(obj), f, indent=2, allow_nan=False)
        f.write("\n")


def format_table(result: dict[str, Any]) -> str:
    """The overall metrics of an `evaluate` result, one row per predictor."""
    m = result["metrics"]
    lines = [
        f"{result['config_name']} on {result['split']} ({result['num_samples']} sequences): "
        f"{result['data_source']}",
        f"checkpoint: {result['checkpoint']['path']} (step {result['checkpoint']['step']}); "
        f"SSIM data_range {result['ssim_data_range']:.1f}",
        f"{'predictor':<12}{'MSE':>10}{'MAE':>10}{'SSIM':>9}{'PSNR':>9}",
    ]
    for name in m:
        r = m[name]
        lines.append(
            f"{name:<12}{r['mse']:>10.3f}{r['mae']:>10.3f}{r['ssim']:>9.4f}{r['psnr']:>9.3f}"
        )
    return "\n".join(lines)


def _frame_indices(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


def write_sample_pictures(
    out_dir: str,
    index: int,
    inputs: np.ndarray,
    targets: np.ndarray | None,
    pred: np.ndarray,
    pred_captions: list[str] | None = None,
    prefix: str = "sample",
) -> dict[str, str]:
    """`<prefix>_<i>.png` (input | truth | prediction | |error| rows) and `<prefix>_<i>.gif`.

    Without targets (predict mode) the strip has input and prediction rows and the GIF shows
    the inputs followed by the forecast.
    """
    t_in, t_out = inputs.shape[0], pred.shape[0]
    in_idx = _frame_indices(1, t_in)
    out_idx = _frame_indices(t_in + 1, t_out)
    rows = [("input", inputs, in_idx)]
    error_rows: tuple[int, ...] = ()
    if targets is not None:
        rows += [("truth", targets, out_idx), ("prediction", pred, out_idx)]
        rows.append(("|error|", np.abs(pred - targets), out_idx))
        error_rows = (3,)
    else:
        rows.append(("prediction", pred, out_idx))
    png = os.path.join(out_dir, f"{prefix}_{index:03d}.png")
    visualize.sample_strip(rows, error_rows=error_rows).save(png)
    gif = os.path.join(out_dir, f"{prefix}_{index:03d}.gif")
    captions = ["input"] * t_in + (pred_captions or [""] * t_out)
    pred_seq = np.concatenate([inputs, pred])
    if targets is not None:
        panels = [("truth", np.concatenate([inputs, targets])), ("prediction", pred_seq)]
    else:
        panels = [("prediction", pred_seq)]
    visualize.save_gif(gif, panels, in_idx + out_idx, captions)
    return {"png": os.path.basename(png), "gif": os.path.basename(gif)}


# ---------------------------------------------------------------------------------------------
# Eval mode.


def split_order(mesh: jax.sharding.Mesh, batch_size: int) -> np.ndarray:
    """Rows of a global eval batch (as `global_batch` lays it out on `mesh`) in split order.

    `data.create_eval_iterator` hands process p the p-th of every `process_count` consecutive
    local batches, so the split order is process 0's rows, then process 1's, and so on; the
    global array holds them in the mesh's device order. The identity unless the mesh
    interleaves the processes' devices.
    """
    sharding = NamedSharding(mesh, P("data"))
    owned: dict[int, list[int]] = {}
    for device, index in sharding.devices_indices_map((batch_size,)).items():
        owned.setdefault(device.process_index, []).extend(range(batch_size)[index[0]])
    return np.asarray([r for p in sorted(owned) for r in sorted(set(owned[p]))], np.int64)


def host_batch(batch: dict, gbatch: dict, order: np.ndarray) -> dict[str, np.ndarray]:
    """The whole global batch as numpy in every process, rows in split order.

    One process has it already (`batch`); with several, `process_allgather` collects every
    process's rows (a collective: all processes must call it for the same batches).
    """
    if jax.process_count() == 1:
        return {k: np.asarray(v) for k, v in batch.items()}
    host = multihost_utils.process_allgather(gbatch, tiled=True)
    return {k: np.asarray(v)[order] for k, v in host.items()}


def evaluate(
    loaded: LoadedModel,
    split: str,
    out_dir: str,
    num_samples: int = 4,
    save_arrays: bool = False,
    ssim_data_range: float = metrics.OPENSTL_SSIM_DATA_RANGE,
) -> dict[str, Any]:
    """OpenSTL metrics of the model and the baselines on a whole split, streamed batch by batch.

    Writes to `out_dir`: metrics.json, metrics_vs_lead_time.png, sample_<i>.png/.gif for the
    first `num_samples` sequences and, with `save_arrays`, inputs/targets/predictions.npy
    (written row by row through memory maps, so the split never sits in memory).
    """
    if split not in ("test", "val"):
        raise ValueError(f"split={split!r}: expected 'test' or 'val'")
    config = loaded.config
    cfg = loaded.model_config
    mesh = create_mesh()
    params, batch_stats = replicate((loaded.params, loaded.batch_stats), mesh)
    eval_step = make_eval_step(loaded.graphdef, mesh, ssim_data_range)
    forward = make_forward(loaded.graphdef, mesh)
    accs = replicate({n: metrics.init_accumulator(cfg.frames_out) for n in PREDICTORS}, mesh)
    num_total = data.get_dataset(config).eval_size(split)
    writer = jax.process_index() == 0
    num_pictures = min(num_samples, num_total)
    if writer:
        os.makedirs(out_dir, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    if save_arrays and writer:
        h, w = cfg.image_size
        for name, frames in (
            ("inputs", cfg.frames_in),
            ("targets", cfg.frames_out),
            ("predictions", cfg.frames_out),
        ):
            arrays[name] = np.lib.format.open_memmap(
                os.path.join(out_dir, f"{name}.npy"),
                mode="w+",
                dtype=np.float32,
                shape=(num_total, frames, h, w, cfg.channels),
            )
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    row = pictured = 0  # the same counts in every process: each decides alike to gather
    order = None
    batches = data.create_eval_iterator(
        config, split=split, process_index=jax.process_index(), process_count=jax.process_count()
    )
    for batch in batches:
        gbatch = global_batch(batch, mesh)
        accs = eval_step(params, batch_stats, gbatch, accs)
        if save_arrays or pictured < num_pictures:
            # A second forward pass for the host copy: make_eval_step keeps predictions on
            # device, and it is what training reports, so metrics stay computed by one code path.
            # Its output is replicated: every process gets the whole global batch.
            pred = np.asarray(forward(params, batch_stats, gbatch["inputs"]))
            if order is None:
                order = split_order(mesh, pred.shape[0])
            host = host_batch(batch, gbatch, order)
            pred = pred[order]
            keep = np.flatnonzero(host["mask"] > 0)  # padding rows are dropped
            for name, value in (
                ("inputs", host["inputs"]),
                ("targets", host["targets"]),
                ("predictions", pred),
            ):
                if name in arrays:
                    arrays[name][row : row + len(keep)] = value[keep]
            for i in keep[: num_pictures - pictured]:
                if writer:
                    samples.append((host["inputs"][i], host["targets"][i], pred[i]))
                pictured += 1
            row += len(keep)
    for arr in arrays.values():
        arr.flush()
    arrays.clear()
    per_predictor = {n: metrics.finalize(jax.device_get(accs[n])) for n in PREDICTORS}
    result: dict[str, Any] = {
        "mode": "eval",
        "out": os.path.abspath(out_dir),
        "config_name": config.name,
        "split": split,
        "data_source": data.describe_source(config, split),
        "num_samples": per_predictor["model"]["num_samples"],
        "checkpoint": loaded.source,
        "frames_in": cfg.frames_in,
        "frames_out": cfg.frames_out,
        "image_size": list(cfg.image_size),
        "channels": cfg.channels,
        "ssim_data_range": float(ssim_data_range),
        "ssim_data_range_note": (
            "2.0 is what OpenSTL (scikit-image 0.19 float defaults) and the paper use; 1.0 is "
            "the textbook value and reads lower"
        ),
        "metric_definitions": (
            "docs/conventions.md §3: MSE/MAE are per-frame sums over C*H*W on unclipped "
            "predictions; SSIM and PSNR on predictions clipped to [0, 1]; means over all "
            "N*frames_out frames; per_frame lists index the lead time 1..frames_out"
        ),
        "baselines": {
            "last_frame": "repeat the last input frame for every output frame",
            "zeros": "predict an all-zero frame",
        },
        "metrics": per_predictor,
        "notes": [NON_FINITE_NOTE],
    }
    if not writer:
        return result
    files = {"metrics": "metrics.json", "plot": "metrics_vs_lead_time.png", "samples": []}
    visualize.plot_lead_time(
        os.path.join(out_dir, files["plot"]),
        {n: per_predictor[n]["per_frame"] for n in PREDICTORS},
        title=f"{config.name}, {split} split ({result['num_samples']} sequences)",
    )
    for i, (x, y, p) in enumerate(samples):
        files["samples"].append(write_sample_pictures(out_dir, i, x, y, p))
    if save_arrays:
        files["arrays"] = {n: f"{n}.npy" for n in ("inputs", "targets", "predictions")}
        files["arrays_note"] = "float32 NHWC; predictions are raw (unclipped) model outputs"
    result["files"] = files
    write_json(os.path.join(out_dir, files["metrics"]), result)
    return result


# ---------------------------------------------------------------------------------------------
# Predict mode.


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
    predictions, passes = rollout(
        make_predict_fn(loaded), inputs, horizon, cfg.frames_in, cfg.frames_out
    )
    autoregressive = horizon > cfg.frames_out
    writer = jax.process_index() == 0
    pictures = []
    if writer:
        os.makedirs(out_dir, exist_ok=True)
        np.save(os.path.join(out_dir, "predictions.npy"), predictions)
        captions = ["pred" if k < cfg.frames_out else "rollout" for k in range(horizon)]
        pictures = [
            write_sample_pictures(out_dir, i, inputs[i], None, predictions[i], captions, "sequence")
            for i in range(min(num_samples, len(inputs)))
        ]
    result = {
        "mode": "predict",
        "out": os.path.abspath(out_dir),
        "config_name": loaded.config.name,
        "checkpoint": loaded.source,
        "input": os.path.abspath(input_path),
        **notes,
        "num_sequences": int(inputs.shape[0]),
        "frames_in": cfg.frames_in,
        "frames_out": cfg.frames_out,
        "horizon": horizon,
        "autoregressive": autoregressive,
        "forward_passes": passes,
        "rollout": (
            f"autoregressive: frames after the first {cfg.frames_out} were predicted from "
            f"earlier predictions (each pass sees the last {cfg.frames_in} frames of inputs + "
            "predictions, unclipped), so errors compound with lead time"
            if autoregressive
            else f"single forward pass (the model's trained output length {cfg.frames_out})"
            + (f", truncated to {horizon} frames" if horizon < cfg.frames_out else "")
        ),
        "files": {
            "predictions": "predictions.npy",
            "predictions_shape": list(predictions.shape),
            "predictions_note": "float32 NHWC raw (unclipped) model outputs on the [0, 1] scale",
            "pictures": pictures,
        },
        "notes": [
            "frame indices in the pictures count from 1 at the first input frame; "
            "'rollout' marks frames predicted from predictions"
        ],
    }
    if not writer:
        del result["files"]  # process 0 wrote them
        return result
    write_json(os.path.join(out_dir, "predictions.json"), result)
    return result


# ---------------------------------------------------------------------------------------------
# The command line's library function.


def run(
    *,
    workdir: str | None = None,
    config: ml_collections.ConfigDict | None = None,
    weights: str | None = None,
    checkpoint: str | None = None,
    step: str | int | None = None,
    key_map: str | None = None,
    split: str = "test",
    mode: str = "eval",
    input_path: str | None = None,
    horizon: int | None = None,
    out: str | None = None,
    num_samples: int = 4,
    save_arrays: bool = False,
    ssim_data_range: float = metrics.OPENSTL_SSIM_DATA_RANGE,
) -> dict[str, Any]:
    """What `evaluate.py` does: checks the options, loads the model, runs eval or predict mode.

    The config is `config` if given, else `<workdir>/config.json`. Output goes to `out`,
    default `<workdir>/eval/<split>` or `<workdir>/predict`.
    """
    if mode not in ("eval", "predict"):
        raise ValueError(f"mode={mode!r}: expected 'eval' or 'predict'")
    if mode == "predict" and not input_path:
        raise ValueError("predict mode needs --input (a .npy file or a folder of images)")
    if mode == "eval" and input_path:
        raise ValueError("--input is for --mode=predict; eval mode reads the config's split")
    if mode == "eval" and horizon is not None:
        raise ValueError("--horizon is for --mode=predict; eval mode scores frames_out frames")
    if horizon is not None and horizon < 1:
        raise ValueError(f"--horizon must be >= 1, got {horizon}")
    if num_samples < 0:
        raise ValueError(f"--num_samples must be >= 0, got {num_samples}")
    if ssim_data_range <= 0:
        raise ValueError(f"--ssim_data_range must be positive, got {ssim_data_range}")
    if config is None:
        if not workdir:
            raise ValueError("give --workdir, or --config with --weights or --checkpoint")
        config = load_workdir_config(workdir)
    if not out:
        if not workdir:
            raise ValueError("--out is required when no --workdir is given")
        out = (
            os.path.join(workdir, "eval", split)
            if mode == "eval"
            else os.path.join(workdir, "predict")
        )
    if key_map and not weights:
        raise ValueError("--key_map renames the keys of --weights; no --weights was given")
    loaded = load_model(
        config,
        workdir=workdir,
        checkpoint=checkpoint,
        weights=weights,
        step=step,
        key_map=key_map,
    )
    logging.info("loaded %s", loaded.source)
    if mode == "eval":
        return evaluate(loaded, split, out, num_samples, save_arrays, ssim_data_range)
    return predict(loaded, input_path, out, horizon, num_samples)
