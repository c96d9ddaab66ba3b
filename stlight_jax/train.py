"""The training loop, `train_and_evaluate(config, workdir)`: train.py's library and the top of
the package (nothing in it imports this module). The jitted steps are in `steps`, the data
parallelism in `sharding`; each process feeds only its share of every batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np

from stlight_jax import (
    checkpoint,
    config_validation,
    data,
    optim,
    schedules,
    weights,
    workdir_lock,
)
from stlight_jax.cli_errors import RunCannotContinue
from stlight_jax.config_io import model_config, save_workdir_config
from stlight_jax.model_size import model_size
from stlight_jax.sharding import create_mesh, global_batch, replicated
from stlight_jax.steps import (
    State,
    create_eval_step,
    create_train_state,
    create_train_step,
    evaluate_split,
)
from stlight_jax.stop_signal import EvaluationInterrupted, StopSignal
from stlight_jax.writers import MetricWriter, Progress, write_json

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


class NonFiniteLossError(RunCannotContinue):
    """Raised when the training loss becomes NaN or Inf; names the step."""


# ---------------------------------------------------------------------------------------------
# The main job.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains per `config` into `workdir`, resuming if it holds a checkpoint; returns the test
    metrics of the best-validation checkpoint ({'model': ..., 'zeros': ..., 'last_frame': ...}).

    SIGTERM/SIGINT (from the start, compilation included) make it save a checkpoint after the
    current step and return {'interrupted_at_step': step}. A non-finite loss or parameter
    raises NonFiniteLossError naming the step; nothing non-finite is ever checkpointed.
    """
    config_validation.validate(config)  # before any data, compile or workdir work
    with (
        StopSignal() as stop,
        checkpoint.disk_full_guard(workdir),
        workdir_lock.hold_for_job(workdir),
    ):
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop: StopSignal
) -> dict[str, Any]:
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    cfg = model_config(config)
    mesh = create_mesh()
    n_dev, n_proc = jax.device_count(), jax.process_count()
    if config.data.batch_size % n_dev:
        raise ValueError(
            f"data.batch_size={config.data.batch_size} is not divisible by the {n_dev} devices"
        )
    if config.data.eval_batch_size % n_dev:
        raise ValueError(
            f"data.eval_batch_size={config.data.eval_batch_size} is not divisible by the "
            f"{n_dev} devices"
        )
    logging.info(
        "JAX %s on %d process(es), %d device(s): %s", jax.__version__, n_proc, n_dev, jax.devices()
    )
    size = model_size(cfg)
    logging.info("STLight %s: %s", config.name, size.summary())
    if jax.process_index() == 0:
        save_workdir_config(config, workdir)

    steps_per_epoch = data.steps_per_epoch(config)
    total_steps = steps_per_epoch * config.num_epochs
    scheds = schedules.create_schedules(config, steps_per_epoch)
    tx = optim.create_optimizer(config, scheds)
    graphdef, state = create_train_state(config, tx)

    train_iter = data.create_train_iterator(
        config, process_index=jax.process_index(), process_count=n_proc
    )
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir))
    writer = None
    try:
        target = jax.device_put(state, replicated(mesh))
        restored = checkpoint.restore_latest_readable(manager, checkpoint.abstract_like(target))
        del target
        if restored is not None:
            start_step, state, data_state = restored
            train_iter.set_state(data_state)
            logging.info("Resuming from %s at step %d", manager.directory, start_step)
        else:
            start_step = 0
            if config.init_from:
                params, batch_stats, what = weights.load_init_from(
                    config.init_from,
                    graphdef,
                    state["params"],
                    state["batch_stats"],
                    key_map=config.get("init_from_key_map") or None,
                )
                state = {
                    **state,
                    "params": params,
                    "batch_stats": batch_stats,
                    "opt_state": tx.init(params),
                }
                logging.info("Initialised from %s", what)
            else:
                logging.info("Fresh initialisation (seed %d)", config.seed)
            state = jax.device_put(state, replicated(mesh))

        writer = MetricWriter(workdir, start_step)
        if start_step == 0:
            writer.write(
                0,
                {
                    "params": size.params,
                    "fvcore_gflops": size.fvcore_flops / 1e9,
                    "true_gmacs": size.true_macs / 1e9,
                    "devices": n_dev,
                    "processes": n_proc,
                },
            )
        else:
            writer.write(start_step, {"resumed_from_step": start_step})
        run = _TrainingRun(
            config=config,
            workdir=workdir,
            stop=stop,
            mesh=mesh,
            manager=manager,
            writer=writer,
            train_iter=train_iter,
            train_step=create_train_step(graphdef, tx, scheds.lr, mesh),
            eval_step=create_eval_step(graphdef, mesh),
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
        )
        return _train_then_test(run, state, start_step)
    finally:
        if writer is not None:
            writer.close()
        manager.close()
        train_iter.close()  # stops Grain's worker processes (data.worker_count > 0)


@dataclasses.dataclass(frozen=True)
class _TrainingRun:
    """What `train_and_evaluate` sets up once and its loop then uses as is; the training
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


def _train_then_test(run: _TrainingRun, state: State, start_step: int) -> dict[str, Any]:
    """The training loop and the final save, then `_test_best_checkpoint`; on a stop signal,
    saves and returns {'interrupted_at_step': step} instead."""
    n_proc = jax.process_count()
    log_every = max(1, run.config.log_every_steps)
    progress = Progress(run.total_steps, start_step, run.config.data.batch_size, log_every)
    pending: list[tuple[int, dict]] = []  # (step, step metrics) not yet fetched

    def flush_pending() -> float | None:
        """Fetches logged metrics; raises if a loss or the params went non-finite."""
        if not pending:
            return None
        fetched = jax.device_get(pending)
        pending.clear()
        for s, m in fetched:
            if not np.isfinite(m["loss"]) or not m["params_finite"]:
                what = (
                    f"training loss {m['loss']}"
                    if not np.isfinite(m["loss"])
                    else "parameters (after the update)"
                )
                raise NonFiniteLossError(
                    f"non-finite {what} at step {s}; the last good checkpoint is step "
                    f"{run.manager.latest_step()} in {run.manager.directory}"
                )
        s, m = fetched[-1]
        window = [float(x["loss"]) for _, x in fetched]
        run.writer.write(
            s,
            {
                "train_loss": float(np.mean(window)),
                "lr": float(m["lr"]),
                "epoch": s / run.steps_per_epoch,
            },
        )
        return float(m["loss"])

    def save(step: int, val: dict[str, float] | None = None) -> None:
        flush_pending()  # never checkpoint a state whose loss went non-finite
        checkpoint.save(run.manager, step, state, run.train_iter.get_state(), val)

    def validate_and_save(step: int) -> bool:
        """Validates the state at `step` and saves it with its validation MSE; on a signal
        during validation, saves it without and returns False (the rerun validates it)."""
        try:
            val_mse = _validate(run, state, step, step // run.steps_per_epoch)
        except EvaluationInterrupted:
            if run.manager.latest_step() != step:
                save(step)
            logging.warning(
                "signal %d received during validation: saved step %d to %s (the rerun "
                "validates it); exiting",
                run.stop.received,
                step,
                run.manager.directory,
            )
            return False
        if run.manager.latest_step() == step:  # saved by an interrupted run, without metrics
            run.manager.delete(step)
        save(step, {checkpoint.VAL_METRIC: float(val_mse)})
        return True

    step = start_step
    start_time = time.time()
    compile_logged = False
    if (
        start_step > 0
        and _validation_due(run, start_step)
        and checkpoint.VAL_METRIC not in (run.manager.metrics(start_step) or {})
    ):
        # The run that saved this step stopped before validating it.
        if not validate_and_save(start_step):
            progress.close()
            return {"interrupted_at_step": start_step}
    try:
        while step < run.total_steps:
            batch = global_batch(next(run.train_iter), run.mesh)
            state, step_metrics = run.train_step(state, batch)
            step += 1
            if not compile_logged:
                jax.block_until_ready(step_metrics["loss"])
                logging.info("first step (compile + run) took %.1f s", time.time() - start_time)
                compile_logged = True
                progress.restart_clock(step)
            pending.append((step, step_metrics))
            if step % log_every == 0 or step == run.total_steps:
                progress.update(step, flush_pending())
            if n_proc > 1 and step % log_every == 0:
                from jax.experimental import multihost_utils

                # Every process must stop at the same step, whichever one was signalled.
                flags = multihost_utils.process_allgather(np.int32(run.stop.received is not None))
                if np.any(flags) and run.stop.received is None:
                    run.stop.received = signal.SIGTERM
            if run.stop.received is not None and (n_proc == 1 or step % log_every == 0):
                if run.manager.latest_step() != step:
                    save(step)
                logging.warning(
                    "signal %d received: saved step %d to %s; exiting",
                    run.stop.received,
                    step,
                    run.manager.directory,
                )
                return {"interrupted_at_step": step}
            epoch_done = step % run.steps_per_epoch == 0
            if _validation_due(run, step):
                flush_pending()
                if not validate_and_save(step):
                    return {"interrupted_at_step": step}
            elif epoch_done or (
                run.config.checkpoint_every_steps and step % run.config.checkpoint_every_steps == 0
            ):
                save(step)
    finally:
        progress.close()
    if run.manager.latest_step() != step:
        save(step)
    train_seconds = time.time() - start_time
    try:
        return _test_best_checkpoint(run, state, step, train_seconds)
    except EvaluationInterrupted:
        logging.warning(
            "signal %d received during the test pass: every checkpoint is saved (latest step "
            "%d in %s); the rerun does the test pass again; exiting",
            run.stop.received,
            step,
            run.manager.directory,
        )
        return {"interrupted_at_step": step}


def _validation_due(run: _TrainingRun, step: int) -> bool:
    """Whether `step` ends an epoch that is validated (every `eval_every_epochs`; 0: only
    the last)."""
    if step % run.steps_per_epoch:
        return False
    every = run.config.eval_every_epochs
    return (every > 0 and (step // run.steps_per_epoch) % every == 0) or step == run.total_steps


def _validate(run: _TrainingRun, state: State, step: int, epoch: int) -> float:
    """Evaluates `state` on the validation split, writes and logs the metrics; returns the MSE
    (the metric that picks the best checkpoint)."""
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


def _test_best_checkpoint(
    run: _TrainingRun, state: State, step: int, train_seconds: float
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
