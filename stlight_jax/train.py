"""Training library: the pure jitted train/eval steps and `train_and_evaluate(config, workdir)`.

Data parallelism is `jax.jit` over a ('data',) mesh spanning every device of every process:
the state is replicated, the batch is sharded along its first axis, and BatchNorm statistics
are therefore computed over the global batch (PyTorch DDP computes them per GPU unless
SyncBatchNorm is used). Each process feeds only its share of the batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from stlight_jax import checkpoint, data, metrics, schedules
from stlight_jax.model_size import model_size
from stlight_jax.models import ModelConfig, STLight, create_model

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

State = dict[str, Any]  # {'params', 'batch_stats', 'opt_state', 'step'}


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or Inf; names the step."""


# ---------------------------------------------------------------------------------------------
# Model, state and mesh.


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    return ModelConfig.from_config(config.model)


def create_mesh(devices: Iterable[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over all devices (of all processes) unless `devices` is given."""
    devices = np.asarray(list(devices) if devices is not None else jax.devices())
    return jax.sharding.Mesh(devices, ("data",))


def create_train_state(
    config: ml_collections.ConfigDict, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, State]:
    """Builds the model (Hybrid init from `config.seed`) and the initial training state."""
    model = create_model(model_config(config), seed=config.seed, dtype=config.compute_dtype)
    return split_model(model, tx)


def split_model(model: STLight, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, State]:
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }
    return graphdef, state


def apply_model(
    graphdef: nnx.GraphDef, params: Any, batch_stats: Any, inputs: jax.Array, train: bool
) -> tuple[jax.Array, Any]:
    """Runs the model; returns (predictions in float32, updated batch stats)."""
    # copy=True: fresh Variables at this trace level (inside grad), so BatchNorm may update them.
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    pred = model(inputs, use_running_average=not train)
    return pred.astype(jnp.float32), nnx.state(model, nnx.BatchStat)


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, lr_fn: Callable[[Any], Any]
) -> Callable[[State, dict], tuple[State, dict]]:
    """The pure step (state, batch) -> (new state, {'loss', 'lr', 'params_finite'}).

    Element-mean MSE loss; 'loss' and 'lr' are those of the update just made (0-based step
    `state['step']`), 'params_finite' says whether every updated parameter is finite.
    """

    def train_step(state: State, batch: dict) -> tuple[State, dict]:
        def loss_fn(params):
            pred, new_stats = apply_model(
                graphdef, params, state["batch_stats"], batch["inputs"], train=True
            )
            return jnp.mean(jnp.square(pred - batch["targets"])), new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_params = optax.apply_updates(state["params"], updates)
        # The loss is that of the params *before* this update; an update can still overflow
        # them, and the checkpoint written after this step must not hold Inf/NaN weights.
        params_finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_params)])
        )
        new_state = {
            "params": new_params,
            "batch_stats": new_stats,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, {"loss": loss, "lr": lr_fn(state["step"]), "params_finite": params_finite}

    return train_step


def jit_train_step(train_step, mesh: jax.sharding.Mesh):
    """jit with the state replicated and donated, the batch sharded over 'data'."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(replicated, NamedSharding(mesh, P("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )


def make_eval_step(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, ssim_data_range: float = 2.0):
    """Jitted (params, batch_stats, batch, accumulators) -> accumulators for the model and the
    two baselines ('zeros': predict 0, 'last_frame': repeat the last input frame)."""
    replicated = NamedSharding(mesh, P())

    def eval_step(params, batch_stats, batch, accs):
        pred, _ = apply_model(graphdef, params, batch_stats, batch["inputs"], train=False)
        frames_out = batch["targets"].shape[1]
        last = jnp.repeat(batch["inputs"][:, -1:], frames_out, axis=1).astype(jnp.float32)
        preds = {"model": pred, "zeros": jnp.zeros_like(pred), "last_frame": last}
        return {
            name: metrics.accumulate(
                accs[name], preds[name], batch["targets"], batch["mask"], ssim_data_range
            )
            for name in accs
        }

    return jax.jit(
        eval_step,
        in_shardings=(replicated, replicated, NamedSharding(mesh, P("data")), replicated),
        out_shardings=replicated,
    )


def global_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """Per-process numpy batch -> global jax arrays sharded along the batch axis."""
    sharding = NamedSharding(mesh, P("data"))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def evaluate_split(
    config: ml_collections.ConfigDict,
    eval_step,
    params,
    batch_stats,
    mesh: jax.sharding.Mesh,
    split: str,
    baselines: bool = True,
) -> dict[str, dict]:
    """OpenSTL metrics on a whole split: {'model': {...}, 'zeros': {...}, 'last_frame': {...}}."""
    names = ("model", "zeros", "last_frame") if baselines else ("model",)
    frames_out = config.model.frames_out
    accs = jax.device_put(
        {n: metrics.init_accumulator(frames_out) for n in names}, NamedSharding(mesh, P())
    )
    batches = data.create_eval_iterator(
        config, split=split, process_index=jax.process_index(), process_count=jax.process_count()
    )
    for batch in batches:
        accs = eval_step(params, batch_stats, global_batch(batch, mesh), accs)
    return {n: metrics.finalize(jax.device_get(accs[n])) for n in names}


# ---------------------------------------------------------------------------------------------
# Logging helpers.


def quiet_library_logs() -> None:
    """Drops Orbax's per-save INFO chatter and its notes on read-only managers (which
    evaluation opens on purpose) from the absl log; other warnings and errors still show."""
    benign = ("read_only=True", "is read only", "Given directory is read only")

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if "/orbax/" not in record.pathname:
                return True
            if record.levelno >= logging.ERROR:
                return True
            return record.levelno >= logging.WARNING and not any(
                b in str(record.msg) for b in benign
            )

    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(_Filter())
    logging.getLogger("absl").addFilter(_Filter())


class MetricWriter:
    """metrics.jsonl plus TensorBoard event files (tensorboardX: no TensorFlow needed).

    Only process 0 writes.
    """

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        self._tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.active:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._tb.close()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # strict JSON has no inf/nan
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class _Progress:
    """tqdm bar with steps/s, samples/s and ETA on a terminal; periodic log lines otherwise."""

    def __init__(self, total: int, initial: int, batch_size: int, log_every: int):
        self.batch_size = batch_size
        self.log_every = max(1, log_every)
        self.total = total
        self.bar = None
        self._t0, self._s0 = time.time(), initial
        if jax.process_index() == 0 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def restart_clock(self, step: int) -> None:
        """Measures rates from here: the first step includes compilation and would skew them."""
        self._t0, self._s0 = time.time(), step

    def update(self, step: int, loss: float | None) -> None:
        elapsed = max(time.time() - self._t0, 1e-9)
        rate = (step - self._s0) / elapsed
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            postfix = {"samples/s": f"{rate * self.batch_size:.1f}"}
            if loss is not None:
                postfix["loss"] = f"{loss:.5f}"
            self.bar.set_postfix(postfix, refresh=False)
        elif loss is not None and jax.process_index() == 0:
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            logging.info(
                "step %d/%d loss %.6f | %.2f steps/s %.1f samples/s | ETA %s",
                step,
                self.total,
                loss,
                rate,
                rate * self.batch_size,
                _fmt_time(eta),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so it can checkpoint and exit."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resolved_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with every path field made absolute, so the saved config.json works from any
    working directory (evaluate.py, export)."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    for field in ("data_dir", "path", "test_file", "mnist_path", "tfds_dir"):
        if resolved.data.get(field):
            resolved.data[field] = os.path.abspath(resolved.data[field])
    for field in ("init_from", "init_from_key_map"):
        if resolved.get(field):
            resolved[field] = os.path.abspath(resolved[field])
    return resolved


# ---------------------------------------------------------------------------------------------
# Start points.


def _load_init_from(config, graphdef, state, tx) -> tuple[State, str]:
    """Applies `config.init_from` (PyTorch weights file or Orbax checkpoint) to a fresh state."""
    path = config.init_from
    model = nnx.merge(graphdef, state["params"], state["batch_stats"])
    if path.endswith((".pt", ".pth", ".ckpt", ".bin", ".safetensors")):
        from stlight_jax import convert

        key_map = config.get("init_from_key_map") or None
        state_dict, layout = convert.read_state_dict(path, key_map)
        convert.load_into_model(model, state_dict, source=path)
        _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        what = f"PyTorch weights {path} ({layout} layout)"
    else:
        params, batch_stats, step = checkpoint.restore_weights(
            path, state["params"], state["batch_stats"]
        )
        what = f"Orbax checkpoint {path} (step {step})"
    state = {**state, "params": params, "batch_stats": batch_stats, "opt_state": tx.init(params)}
    return state, what


# ---------------------------------------------------------------------------------------------
# The main job.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains per `config` into `workdir`, resuming if it holds a checkpoint; returns the test
    metrics of the best-validation checkpoint ({'model': ..., 'zeros': ..., 'last_frame': ...}).

    SIGTERM/SIGINT (from the start, compilation included) make it save a checkpoint after the
    current step and return {'interrupted_at_step': step}. A non-finite loss or parameter
    raises NonFiniteLossError naming the step; nothing non-finite is ever checkpointed.
    """
    with _StopSignal() as stop:
        return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop: _StopSignal
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
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(resolved_config(config).to_json_best_effort(indent=2))

    steps_per_epoch = data.steps_per_epoch(config)
    total_steps = steps_per_epoch * config.num_epochs
    tx = schedules.create_optimizer(config, steps_per_epoch)
    lr_fn, _ = schedules.create_schedules(config, steps_per_epoch)
    graphdef, state = create_train_state(config, tx)
    replicated = NamedSharding(mesh, P())

    train_iter = data.create_train_iterator(
        config, process_index=jax.process_index(), process_count=n_proc
    )
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir))
    writer = None
    try:
        target = jax.device_put(state, replicated)
        restored = checkpoint.restore_latest_readable(manager, checkpoint.abstract_like(target))
        del target
        if restored is not None:
            start_step, state, data_state = restored
            train_iter.set_state(data_state)
            logging.info("Resuming from %s at step %d", manager.directory, start_step)
        else:
            start_step = 0
            if config.init_from:
                state, what = _load_init_from(config, graphdef, state, tx)
                logging.info("Initialised from %s", what)
            else:
                logging.info("Fresh initialisation (seed %d)", config.seed)
            state = jax.device_put(state, replicated)

        writer = MetricWriter(workdir)
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
            train_step=jit_train_step(make_train_step(graphdef, tx, lr_fn), mesh),
            eval_step=make_eval_step(graphdef, mesh),
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
    stop: _StopSignal
    mesh: jax.sharding.Mesh
    manager: ocp.CheckpointManager
    writer: MetricWriter
    train_iter: Any  # next(): a process-local batch; get_state()/set_state(): resume; close()
    train_step: Callable[[State, dict], tuple[State, dict]]  # jitted, donates the state
    eval_step: Callable[..., dict]  # from make_eval_step
    steps_per_epoch: int
    total_steps: int


def _train_then_test(run: _TrainingRun, state: State, start_step: int) -> dict[str, Any]:
    """The training loop and the final save, then `_test_best_checkpoint`; on a stop signal,
    saves and returns {'interrupted_at_step': step} instead."""
    n_proc = jax.process_count()
    log_every = max(1, run.config.log_every_steps)
    progress = _Progress(run.total_steps, start_step, run.config.data.batch_size, log_every)
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

    step = start_step
    start_time = time.time()
    compile_logged = False
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
            epoch = step // run.steps_per_epoch
            every = run.config.eval_every_epochs  # 0: validate after the last epoch only
            if epoch_done and ((every > 0 and epoch % every == 0) or step == run.total_steps):
                flush_pending()
                val_mse = _validate(run, state, step, epoch)
                save(step, {checkpoint.VAL_METRIC: float(val_mse)})
            elif epoch_done or (
                run.config.checkpoint_every_steps and step % run.config.checkpoint_every_steps == 0
            ):
                save(step)
    finally:
        progress.close()
    if run.manager.latest_step() != step:
        save(step)
    train_seconds = time.time() - start_time
    return _test_best_checkpoint(run, state, step, train_seconds)


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
        baselines=False,
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
    test = evaluate_split(run.config, run.eval_step, params, batch_stats, run.mesh, "test")
    result = {
        "checkpoint_step": int(best),
        "train_seconds": train_seconds,
        "data_source": data.describe_source(run.config, "test"),
        **test,
    }
    run.writer.write(step, {f"test_{k}": v for k, v in test["model"].items() if k != "per_frame"})
    if jax.process_index() == 0:
        with open(os.path.join(run.workdir, "test_metrics.json"), "w") as f:
            json.dump(_jsonable(result), f, indent=2)
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
