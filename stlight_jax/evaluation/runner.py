"""evaluate.py's library: score a checkpoint on a split (OpenSTL metrics of the model and the
baselines, pictures, optional arrays), or hand over to `predict` for new inputs; `run(options)`.

With several JAX processes (`jax.distributed.initialize`) every process runs the same calls;
process 0 alone writes the output, the same files a single-process run writes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from stlight_jax import data, metrics, pretrained
from stlight_jax.config import validation as config_validation
from stlight_jax.config.files import load_workdir_config
from stlight_jax.evaluation import output_set, predict, visualize
from stlight_jax.evaluation.loop import evaluate_split
from stlight_jax.models import ModelConfig
from stlight_jax.sharding import create_mesh, host_batch, replicate, split_order
from stlight_jax.steps import PREDICTORS, create_eval_step, create_forward
from stlight_jax.weights.loading import LoadedModel, load_model
from stlight_jax.writers import write_json

NON_FINITE_NOTE = (
    "strict JSON: a non-finite number (the PSNR of an exactly predicted frame, which OpenSTL "
    "reports as inf) is written as the string 'inf'; psnr_exact_frames counts such frames"
)
ARRAY_NAMES = ("inputs", "targets", "predictions")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """evaluate.py's options (its flags, same names). The config is `config` if given, else
    `<workdir>/config.json`; output goes to `out`, default `<workdir>/eval/<split>` or
    `<workdir>/predict`."""

    workdir: str | None = None
    config: Any = None  # an ml_collections.ConfigDict
    weights: str | None = None  # PyTorch state_dict file
    checkpoint: str | None = None  # Orbax checkpoints dir or converted weights checkpoint
    step: str | int | None = None  # 'best' | 'latest' | N
    split: str = "test"
    mode: str = "eval"  # or 'predict'
    input_path: str | None = None  # predict mode: .npy or a folder of images
    horizon: int | None = None  # predict mode: frames to forecast
    out: str | None = None
    num_samples: int = 4  # sequences drawn as PNG strips and GIFs
    save_arrays: bool = False  # eval mode: inputs/targets/predictions .npy
    ssim_data_range: float = metrics.OPENSTL_SSIM_DATA_RANGE
    key_map: str | None = None  # JSON key map(s) for --weights in another layout
    pretrained: str | None = None  # a shipped model's name (stlight_jax.pretrained)
    num_test: int | None = None  # Moving MNIST: score the first N test sequences only

    def check(self) -> None:
        """Raises ValueError naming the first option that cannot work."""
        eval_mode = self.mode == "eval"
        if self.mode not in ("eval", "predict"):
            raise ValueError(f"mode={self.mode!r}: expected 'eval' or 'predict'")
        if not eval_mode and not self.input_path:
            raise ValueError("predict mode needs --input (a .npy file or a folder of images)")
        if eval_mode and self.input_path:
            raise ValueError("--input is for --mode=predict; eval mode reads the config's split")
        if eval_mode and self.horizon is not None:
            raise ValueError("--horizon is for --mode=predict; eval mode scores frames_out frames")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"--horizon must be >= 1, got {self.horizon}")
        if self.num_samples < 0:
            raise ValueError(f"--num_samples must be >= 0, got {self.num_samples}")
        if self.ssim_data_range <= 0:
            raise ValueError(f"--ssim_data_range must be positive, got {self.ssim_data_range}")
        if self.num_test is not None and (
            self.num_test < 1 or self.split != "test" or not eval_mode
        ):
            raise ValueError(
                f"--num_test={self.num_test}: give N >= 1, with --split=test in eval mode"
            )
        if self.pretrained:
            given = [
                f"--{flag}"
                for flag, value in (
                    ("workdir", self.workdir),
                    ("config", self.config),
                    ("weights", self.weights),
                    ("checkpoint", self.checkpoint),
                    ("step", self.step),
                    ("key_map", self.key_map),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"--pretrained={self.pretrained} brings its own config and weights; "
                    f"drop {', '.join(given)}"
                )
            if not self.out:
                raise ValueError("--out is required with --pretrained (where the files go)")
        if self.config is None and not self.workdir and not self.pretrained:
            raise ValueError(
                "give --workdir, --pretrained=NAME, or --config with --weights or --checkpoint"
            )
        if not self.out and not self.workdir:
            raise ValueError("--out is required when no --workdir is given")
        if self.key_map and not self.weights:
            raise ValueError("--key_map renames the keys of --weights; no --weights was given")

    def out_dir(self) -> str:
        if self.out:
            return self.out
        if self.mode == "eval":
            return os.path.join(self.workdir, "eval", self.split)
        return os.path.join(self.workdir, "predict")


def run(options: EvalOptions) -> dict[str, Any]:
    """What `evaluate.py` does: checks the options, loads the model, runs eval or predict mode."""
    options.check()
    if options.pretrained:
        weights_path, config, _ = pretrained.resolve(options.pretrained)  # checks the SHA-256
        config_validation.validate(config)
        loaded = load_model(config, weights=weights_path)
        loaded.source.update(kind="pretrained", name=options.pretrained)
    else:
        config = options.config
        if config is None:
            config = load_workdir_config(options.workdir)
        config_validation.validate(config)
        loaded = load_model(
            config,
            workdir=options.workdir,
            checkpoint=options.checkpoint,
            weights=options.weights,
            step=options.step,
            key_map=options.key_map,
        )
    if options.num_test is not None:
        if config.data.name != "mmnist":
            raise ValueError(
                f"--num_test picks Moving MNIST test sequences; this is a {config.data.name} model"
            )
        config = ml_collections.ConfigDict(config.to_dict())
        config.data.num_test = options.num_test
        loaded = dataclasses.replace(loaded, config=config)
    logging.info("loaded %s", loaded.source)
    if options.mode == "predict":
        return predict.predict(
            loaded, options.input_path, options.out_dir(), options.horizon, options.num_samples
        )
    return evaluate(
        loaded,
        options.split,
        options.out_dir(),
        options.num_samples,
        options.save_arrays,
        options.ssim_data_range,
    )


class _HostCopies:
    """The eval loop's per-batch hook: the first `num_pictures` sequences with predictions as
    numpy and, with `every_batch`, every sequence written row by row into the memory maps
    `arrays` (process 0's; the others have none but must still join the gathering).

    A second forward pass makes the host copy: the eval step keeps predictions on device, and
    it is what training reports, so metrics stay computed by one code path. The forward's
    output is replicated: every process gets the whole global batch.
    """

    def __init__(self, loaded: LoadedModel, mesh, params, num_pictures, arrays, every_batch):
        self.forward = create_forward(loaded.graphdef, mesh)
        self.mesh, self.params = mesh, params
        self.num_pictures, self.arrays, self.every_batch = num_pictures, arrays, every_batch
        self.samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.row = self.pictured = 0  # the same counts in every process: each gathers alike
        self.order = None
        self.writer = jax.process_index() == 0

    def __call__(self, batch: dict, gbatch: dict) -> None:
        if not self.every_batch and self.pictured >= self.num_pictures:
            return
        pred = np.asarray(self.forward(*self.params, gbatch["inputs"]))
        if self.order is None:
            self.order = split_order(self.mesh, pred.shape[0])
        host = host_batch(batch, gbatch, self.order)
        host["predictions"] = pred[self.order]
        keep = np.flatnonzero(host["mask"] > 0)  # padding rows are dropped
        for name, array in self.arrays.items():
            array[self.row : self.row + len(keep)] = host[name][keep]
        for i in keep[: self.num_pictures - self.pictured]:
            if self.writer:
                self.samples.append((host["inputs"][i], host["targets"][i], host["predictions"][i]))
            self.pictured += 1
        self.row += len(keep)


def _open_arrays(out: output_set.OutputSet, cfg: ModelConfig, num_total: int) -> dict:
    h, w = cfg.image_size
    frames = {"inputs": cfg.frames_in, "targets": cfg.frames_out, "predictions": cfg.frames_out}
    arrays = {}
    for name in ARRAY_NAMES:
        file = f"{name}.npy"
        with out.writing(file):
            arrays[name] = np.lib.format.open_memmap(
                out.path(file),
                mode="w+",
                dtype=np.float32,
                shape=(num_total, frames[name], h, w, cfg.channels),
            )
        out.preallocate(file)
    return arrays


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
    config, cfg = loaded.config, loaded.model_config
    mesh = create_mesh()
    params = replicate((loaded.params, loaded.batch_stats), mesh)
    num_total = data.get_dataset(config).eval_size(split)
    writer = jax.process_index() == 0
    # One whole set: a temporary folder renamed into place at the end (output_set).
    with output_set.whole_set(out_dir, writer) as out:
        arrays = _open_arrays(out, cfg, num_total) if save_arrays and writer else {}
        num_pictures = min(num_samples, num_total)
        copies = _HostCopies(loaded, mesh, params, num_pictures, arrays, save_arrays)
        eval_step = create_eval_step(loaded.graphdef, mesh, ssim_data_range)
        per_predictor = evaluate_split(
            config,
            eval_step,
            *params,
            mesh,
            split,
            PREDICTORS,
            copies if save_arrays or num_pictures else None,
        )
        for name, array in arrays.items():
            with out.writing(f"{name}.npy"):
                array.flush()
        arrays.clear()
        result = _eval_result(loaded, split, out_dir, per_predictor, ssim_data_range)
        if writer:
            _write_eval_files(result, out, copies.samples, save_arrays)
    return result


def _eval_result(loaded, split, out_dir, per_predictor, ssim_data_range) -> dict[str, Any]:
    config, cfg = loaded.config, loaded.model_config
    return {
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


def _write_eval_files(
    result: dict, out: output_set.OutputSet, samples: list, save_arrays: bool
) -> None:
    """metrics.json (with the list of files), the lead-time plot and the sample pictures."""
    per_predictor = result["metrics"]
    files = {"metrics": "metrics.json", "plot": "metrics_vs_lead_time.png", "samples": []}
    with out.writing(files["plot"]):
        visualize.plot_lead_time(
            out.path(files["plot"]),
            {n: per_predictor[n]["per_frame"] for n in PREDICTORS},
            title=f"{result['config_name']}, {result['split']} split "
            f"({result['num_samples']} sequences)",
        )
    for i, (x, y, p) in enumerate(samples):
        with out.writing(f"sample_{i:03d}.png", f"sample_{i:03d}.gif"):
            files["samples"].append(visualize.write_sample_pictures(out.tmp, i, x, y, p))
    if save_arrays:
        files["arrays"] = {n: f"{n}.npy" for n in ARRAY_NAMES}
        files["arrays_note"] = "float32 NHWC; predictions are raw (unclipped) model outputs"
    result["files"] = files
    with out.writing(files["metrics"]):
        write_json(out.path(files["metrics"]), result)


def _which(source: dict[str, Any]) -> str:
    if source.get("kind") == "pretrained":
        return f"shipped model {source['name']}"
    return f"step {source.get('step')}"


def format_table(result: dict[str, Any]) -> str:
    """The overall metrics of an `evaluate` result, one row per predictor."""
    m = result["metrics"]
    lines = [
        f"{result['config_name']} on {result['split']} ({result['num_samples']} sequences): "
        f"{result['data_source']}",
        f"checkpoint: {result['checkpoint']['path']} ({_which(result['checkpoint'])}); "
        f"SSIM data_range {result['ssim_data_range']:.1f}",
        f"{'predictor':<12}{'MSE':>10}{'MAE':>10}{'SSIM':>9}{'PSNR':>9}",
    ]
    for name in m:
        r = m[name]
        lines.append(
            f"{name:<12}{r['mse']:>10.3f}{r['mae']:>10.3f}{r['ssim']:>9.4f}{r['psnr']:>9.3f}"
        )
    return "\n".join(lines)
