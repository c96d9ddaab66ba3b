"""The training loop, `train_and_evaluate(config, workdir)`: train.py's library and the top of
the package (nothing in it imports this module). The jitted steps are in `steps`, the data
parallelism in `sharding`, validation and the test pass in `training_run`; each process feeds
only its share of every batch.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import jax
import ml_collections

from stlight_jax import data
from stlight_jax.checkpoints import disk_full
from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.config import validation as config_validation
from stlight_jax.config.files import (
    ExperimentChangedError,
    check_same_experiment,
    model_config,
    save_workdir_config,
)
from stlight_jax.model_size import model_size
from stlight_jax.sharding import (
    check_divisible_by_devices,
    create_mesh,
    global_batch,
    replicated,
)
from stlight_jax.steps import (
    State,
    create_eval_step,
    create_train_state,
    create_train_step,
)
from stlight_jax.training import optimizer as optim
from stlight_jax.training import schedules, workdir_lock
from stlight_jax.training.run_parts import (
    PendingMetrics,
    TrainingRun,
    test_best_checkpoint,
    validate,
    validation_due,
)
from stlight_jax.training.stop_signal import EvaluationInterrupted, StopSignal
from stlight_jax.weights import loading as weights
from stlight_jax.writers import MetricWriter, Progress

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


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
        disk_full.disk_full_guard(workdir),
        workdir_lock.hold_for_job(workdir),
    ):
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop: StopSignal
) -> dict[str, Any]:
    """Sets up the mesh, data, model, optimizer and checkpoints, resumes or initialises the
    state, then hands over to `_train_then_test`; closes what it opened."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _check_same_experiment(config, workdir)  # before anything in the workdir is written
    cfg = model_config(config)
    mesh = create_mesh()
    check_divisible_by_devices(config.data.batch_size, "data.batch_size")
    check_divisible_by_devices(config.data.eval_batch_size, "data.eval_batch_size")
    logging.info(
        "JAX %s on %d process(es), %d device(s): %s",
        jax.__version__,
        jax.process_count(),
        jax.device_count(),
        jax.devices(),
    )
    size = model_size(cfg)
    logging.info("STLight %s: %s", config.name, size.summary())
    if jax.process_index() == 0:
        save_workdir_config(config, workdir)

    steps_per_epoch = data.steps_per_epoch(config)
    scheds = schedules.create_schedules(config, steps_per_epoch)
    tx = optim.create_optimizer(config, scheds)
    graphdef, state = create_train_state(config, tx)

    train_iter = data.create_train_iterator(
        config, process_index=jax.process_index(), process_count=jax.process_count()
    )
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir))
    writer = None
    try:
        start_step, state = _restore_or_initialise(
            config, manager, train_iter, graphdef, state, tx, mesh
        )
        writer = MetricWriter(workdir, start_step)
        _write_run_header(writer, start_step, size)
        run = TrainingRun(
            config=config,
            workdir=workdir,
            stop=stop,
            mesh=mesh,
            manager=manager,
            writer=writer,
            train_iter=train_iter,
            train_step=create_train_step(graphdef, tx, scheds.lr, mesh, config.l1_weight),
            eval_step=create_eval_step(graphdef, mesh),
            steps_per_epoch=steps_per_epoch,
            total_steps=steps_per_epoch * config.num_epochs,
        )
        return _train_then_test(run, state, start_step)
    finally:
        if writer is not None:
            writer.close()
        manager.close()
        train_iter.close()  # stops Grain's worker processes (data.worker_count > 0)


def _check_same_experiment(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`config_io.check_same_experiment` on process 0; every process raises when it fails."""
    error = None
    if jax.process_index() == 0:
        try:
            check_same_experiment(config, workdir)
        except ExperimentChangedError as e:
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        same = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if error is None and not int(same):
            raise ExperimentChangedError(
                f"process 0 found that workdir {workdir} holds a run of another experiment"
            )
    if error is not None:
        raise error


def _restore_or_initialise(
    config: ml_collections.ConfigDict,
    manager: ocp.CheckpointManager,
    train_iter: Any,
    graphdef: Any,
    state: State,
    tx: Any,
    mesh: jax.sharding.Mesh,
) -> tuple[int, State]:
    """(start step, replicated state): the newest readable checkpoint with its data-iterator
    state, else `config.init_from`'s weights (fresh optimizer state), else `state` as is."""
    target = jax.device_put(state, replicated(mesh))
    restored = checkpoint.restore_latest_readable(manager, checkpoint.abstract_like(target))
    del target
    if restored is not None:
        start_step, state, data_state = restored
        train_iter.set_state(data_state)
        logging.info(
            "Resuming from %s at step %d", checkpoint.manager_directory(manager), start_step
        )
        return start_step, state
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
    return 0, jax.device_put(state, replicated(mesh))


def _write_run_header(writer: MetricWriter, start_step: int, size: Any) -> None:
    """The first metrics line: the model's size and the devices, or the step resumed from."""
    if start_step:
        writer.write(start_step, {"resumed_from_step": start_step})
        return
    writer.write(
        0,
        {
            "params": size.params,
            "fvcore_gflops": size.fvcore_flops / 1e9,
            "true_gmacs": size.true_macs / 1e9,
            "devices": jax.device_count(),
            "processes": jax.process_count(),
        },
    )


def _train_then_test(run: TrainingRun, state: State, start_step: int) -> dict[str, Any]:
    """The training loop and the final save, then `test_best_checkpoint`; on a stop signal,
    saves and returns {'interrupted_at_step': step} instead."""
    log_every = max(1, run.config.log_every_steps)
    progress = Progress(run.total_steps, start_step, run.config.data.batch_size, log_every)
    pending = PendingMetrics(run)
    start_time = time.time()
    if (
        start_step > 0
        and validation_due(run, start_step)
        and checkpoint.VAL_METRIC not in (run.manager.metrics(start_step) or {})
    ):
        # The run that saved this step stopped before validating it.
        if not _validate_and_save(run, pending, state, start_step):
            progress.close()
            return {"interrupted_at_step": start_step}
    try:
        state, step, interrupted = _train_steps(
            run, state, start_step, pending, progress, start_time
        )
    finally:
        progress.close()
    if interrupted:
        return {"interrupted_at_step": step}
    if run.manager.latest_step() != step:
        _save(run, pending, step, state)
    train_seconds = time.time() - start_time
    try:
        return test_best_checkpoint(run, state, step, train_seconds)
    except EvaluationInterrupted:
        logging.warning(
            "signal %d received during the test pass: every checkpoint is saved (latest step "
            "%d in %s); the rerun does the test pass again; exiting",
            run.stop.received,
            step,
            checkpoint.manager_directory(run.manager),
        )
        return {"interrupted_at_step": step}


def _train_steps(
    run: TrainingRun,
    state: State,
    step: int,
    pending: PendingMetrics,
    progress: Progress,
    start_time: float,
) -> tuple[State, int, bool]:
    """Trains from `step` to the last step, logging, validating and saving on the way; returns
    (state, step, interrupted), interrupted meaning a signal stopped it after a save."""
    log_every = max(1, run.config.log_every_steps)
    compile_logged = False
    while step < run.total_steps:
        batch = global_batch(next(run.train_iter), run.mesh)
        state, step_metrics = run.train_step(state, batch)
        step += 1
        if not compile_logged:
            jax.block_until_ready(step_metrics["loss"])
            logging.info("first step (compile + run) took %.1f s", time.time() - start_time)
            compile_logged = True
            progress.restart_clock(step)
        pending.append(step, step_metrics)
        if step % log_every == 0 or step == run.total_steps:
            progress.update(step, pending.flush())
        if _stop_requested(run, step, log_every):
            if run.manager.latest_step() != step:
                _save(run, pending, step, state)
            logging.warning(
                "signal %d received: saved step %d to %s; exiting",
                run.stop.received,
                step,
                checkpoint.manager_directory(run.manager),
            )
            return state, step, True
        if not _checkpoint_after_step(run, pending, state, step):
            return state, step, True
    return state, step, False


def _stop_requested(run: TrainingRun, step: int, log_every: int) -> bool:
    """Whether to save and stop after `step`. With several processes, they agree (a collective)
    only at log steps, so every process stops at the same step, whichever was signalled."""
    if jax.process_count() == 1:
        return run.stop.received is not None
    if step % log_every:
        return False
    run.stop.agree_across_processes()
    return run.stop.received is not None


def _checkpoint_after_step(
    run: TrainingRun, pending: PendingMetrics, state: State, step: int
) -> bool:
    """Validates and saves at a validated epoch's end, else saves at an epoch's end or every
    `checkpoint_every_steps`; False when a signal interrupted the validation."""
    if validation_due(run, step):
        pending.flush()
        return _validate_and_save(run, pending, state, step)
    every = run.config.checkpoint_every_steps
    if step % run.steps_per_epoch == 0 or (every and step % every == 0):
        _save(run, pending, step, state)
    return True


def _save(
    run: TrainingRun,
    pending: PendingMetrics,
    step: int,
    state: State,
    val: dict[str, float] | None = None,
) -> None:
    pending.flush()  # never checkpoint a state whose loss went non-finite
    checkpoint.save(run.manager, step, state, run.train_iter.get_state(), val)


def _validate_and_save(run: TrainingRun, pending: PendingMetrics, state: State, step: int) -> bool:
    """Validates the state at `step` and saves it with its validation MSE; on a signal during
    validation, saves it without and returns False (the rerun validates it)."""
    try:
        val_mse = validate(run, state, step, step // run.steps_per_epoch)
    except EvaluationInterrupted:
        if run.manager.latest_step() != step:
            _save(run, pending, step, state)
        logging.warning(
            "signal %d received during validation: saved step %d to %s (the rerun validates "
            "it); exiting",
            run.stop.received,
            step,
            checkpoint.manager_directory(run.manager),
        )
        return False
    if run.manager.latest_step() == step:  # saved by an interrupted run, without metrics
        run.manager.delete(step)
    _save(run, pending, step, state, {checkpoint.VAL_METRIC: float(val_mse)})
    return True
