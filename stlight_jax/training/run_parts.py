"""What the training loop (`train.py`) sets up once and works with: the run's fixed parts, step
metrics left on the device until a log step (checked finite), validation, and the test pass."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np

from stlight_jax import data
from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.errors import RunCannotContinue
from stlight_jax.evaluation.loop import evaluate_split
from stlight_jax.steps import State
from stlight_jax.training.stop_signal import StopSignal
from stlight_jax.writers import MetricWriter, write_json

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


class NonFiniteLossError(RunCannotContinue):
    """Raised when the training loss becomes NaN or Inf; names the step."""


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What `train.train_and_evaluate` sets up once and its loop then uses as is; the training
    state and the step are what the loop advances, so they are passed alongside."""

    config: ml_collections.ConfigDict
    workdir: str
    stop: StopSignal
    mesh: jax.sharding.Mesh
    manager: ocp.CheckpointManager
    writer: MetricWriter
    train_iter: Any  # next(): a process-local batch; get_state()/set_state(): resume; close()
    train_step: Callable[[State, dict], tuple[State, dict]]  # jitted, donates the state
    eval_step: Callable[..., dict]  # from steps.create_eval_step
    steps_per_epoch: int
    total_steps: int


class PendingMetrics:
    """Step metrics left on the device until a log step (fetching each would wait for its
    step); `flush` fetches them, raises if any went non-finite, and writes the window's mean."""

    def __init__(self, run: TrainingRun):
        self.run = run
        self.items: list[tuple[int, dict]] = []  # (step, step metrics) not yet fetched

    def append(self, step: int, step_metrics: dict) -> None:
        self.items.append((step, step_metrics))

    def flush(self) -> float | None:
        """Fetches logged metrics; raises if a loss or the params went non-finite; returns the
        last step's loss (None when nothing was pending)."""
        if not self.items:
            return None
        run = self.run
        fetched = jax.device_get(self.items)
        self.items.clear()
        for s, m in fetched:
            if not np.isfinite(m["loss"]) or not m["params_finite"]:
                what = (
                    f"training loss {m['loss']}"
                    if not np.isfinite(m["loss"])
                    else "parameters (after the update)"
                )
                raise NonFiniteLossError(
                    f"non-finite {what} at step {s}; the last good checkpoint is step "
                    f"{run.manager.latest_step()} in {checkpoint.manager_directory(run.manager)}"
                )
        s, m = fetched[-1]
        window = float(np.mean([float(x["loss"]) for _, x in fetched]))
        run.writer.write(
            s, {"train_loss": window, "lr": float(m["lr"]), "epoch": s / run.steps_per_epoch}
        )
        return float(m["loss"])


def validation_due(run: TrainingRun, step: int) -> bool:
    """Whether `step` ends an epoch that is validated (every `eval_every_epochs`; 0: only
    the last)."""
    if step % run.steps_per_epoch:
        return False
    every = run.config.eval_every_epochs
    return (every > 0 and (step // run.steps_per_epoch) % every == 0) or step == run.total_steps


def validate(run: TrainingRun, state: State, step: int, epoch: int) -> float:
    """Evaluates `state` on the validation split, writes and logs the metrics; returns the MSE
    (the metric that picks the best checkpoint)."""
    # Logged before the pass so that a log reader knows where a signal will land.
    logging.info("epoch %d step %d: validating", epoch, step)
    val = evaluate_split(
        run.config,
        run.eval_step,
        state["params"],
        state["batch_stats"],
        run.mesh,
        "val",
        predictors=("model",),
        on_batch=run.stop.batch_hook("validation"),
    )
    val_mse = val["model"]["mse"]
    run.writer.write(
        step,
        {
            "val_mse": val_mse,
            "val_mae": val["model"]["mae"],
            "val_ssim": val["model"]["ssim"],
            "val_psnr": val["model"]["psnr"],
            "epoch": epoch,
        },
    )
    logging.info(
        "epoch %d step %d: val MSE %.4f MAE %.4f SSIM %.5f",
        epoch,
        step,
        val_mse,
        val["model"]["mae"],
        val["model"]["ssim"],
    )
    return val_mse


def test_best_checkpoint(
    run: TrainingRun, state: State, step: int, train_seconds: float
) -> dict[str, Any]:
    """Evaluates the best-validation checkpoint (else the final `state`, saved at `step`) on
    the test split with the baselines; writes, logs and saves test_metrics.json, returns it."""
    best = checkpoint.best_step(run.manager)
    if best is not None and best != step:
        restored_state, _ = checkpoint.restore(run.manager, best, checkpoint.abstract_like(state))
        params, batch_stats = restored_state["params"], restored_state["batch_stats"]
    else:
        best = step
        params, batch_stats = state["params"], state["batch_stats"]
    test = evaluate_split(
        run.config,
        run.eval_step,
        params,
        batch_stats,
        run.mesh,
        "test",
        on_batch=run.stop.batch_hook("test pass"),
    )
    result = {
        "checkpoint_step": int(best),
        "train_seconds": train_seconds,
        "data_source": data.describe_source(run.config, "test"),
        **test,
    }
    run.writer.write(step, {f"test_{k}": v for k, v in test["model"].items() if k != "per_frame"})
    if jax.process_index() == 0:
        write_json(os.path.join(run.workdir, "test_metrics.json"), result)
        logging.info("test (best checkpoint, step %d) on %s", best, result["data_source"])
        for name in test:
            m = test[name]
            logging.info(
                "  %-10s MSE %8.3f  MAE %8.3f  SSIM %.4f  PSNR %.3f",
                name,
                m["mse"],
                m["mae"],
                m["ssim"],
                m["psnr"],
            )
    return result
