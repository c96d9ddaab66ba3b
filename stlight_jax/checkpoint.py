"""Orbax checkpoints: training state + data-iterator state, keep-latest and keep-best, fallbacks.

A workdir's checkpoints live in `<workdir>/checkpoints/<step>/` with two items: `state`
({'params', 'batch_stats', 'opt_state', 'step'}) and `data` (the input iterator's JSON state).
A weights-only checkpoint (from `stlight_jax.convert import`) holds just
{'params', 'batch_stats'} under `state`. Restores go into an abstract target, so a checkpoint
written on 8 devices restores on 1 and the other way round. Each step also records SHA-256
digests of the state, checked on restore, because Orbax itself does not detect garbled data:
in `<step>/stlight_sha256.json` (written atomically after the save, so damage to Orbax's
metadata cannot take them away) and as a copy in Orbax's step metadata. A step without
readable digests is never used: training sets it aside, evaluation refuses it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable_checkpoints"  # beside CHECKPOINT_DIR: steps set aside on resume
VAL_METRIC = "val_mse"
DIGEST_KEY = "sha256"  # {top-level state key: digest}, in DIGEST_FILE and custom metadata
DIGEST_FILE = "stlight_sha256.json"  # in each step's directory, written after the save


class CorruptCheckpointError(ValueError):
    """A checkpoint restored without error but its arrays differ from what was saved."""


class DiskFullError(OSError):
    """Writing into the workdir failed for lack of space (or quota); the message names it."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_full_cause(error: BaseException | None) -> BaseException | None:
    """The ENOSPC/EDQUOT/EFBIG error in `error`'s chain (Orbax and TensorStore may wrap it)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return error
        if "No space left on device" in str(error):
            return error
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def disk_full_guard(workdir: str) -> Iterator[None]:
    """Turns a full disk anywhere in the block into one DiskFullError naming `workdir` and its
    latest complete checkpoint (a failed save never touches the earlier steps)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        cause = _disk_full_cause(e)
        if cause is None:
            raise
        _drop_failed_reads()  # the failed writes' coroutines would print pages when collected
        ckpt_dir = checkpoint_dir(workdir)
        steps = (
            sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
            if os.path.isdir(ckpt_dir)
            else []
        )
        kept = (
            f"the latest complete checkpoint, step {steps[-1]}, is intact"
            if steps
            else ("no checkpoint had been saved yet")
        )
        reason = getattr(cause, "strerror", None) or "No space left on device"
        raise DiskFullError(
            f"disk full while writing to workdir {os.path.abspath(workdir)} ({reason}); {kept}: "
            "free some space and rerun the same command to resume"
        ) from e


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def _val_metric(metrics: dict) -> float:
    return metrics[VAL_METRIC]


def create_manager(directory: str, keep_latest: int = 2, read_only: bool = False):
    """A manager that keeps the `keep_latest` newest steps and the best by validation MSE.

    With `best_fn` alone, Orbax's `max_to_keep` would delete the latest checkpoint whenever it
    is not among the best, and resume would go back in time; the two policies are combined.
    Keeping two latest steps leaves a fallback when the newest one is unreadable.

    `best_fn` is set as well although the preservation policy does the keeping: Orbax only
    writes a step's metrics to disk when `best_fn` is set, and without them on disk a
    restarted run sees no validation MSE on any old step, so `best_step` finds nothing and
    BestN (keep_checkpoints_without_metrics=False) deletes the earlier best checkpoint.
    """
    policy = checkpoint_managers.AnyPreservationPolicy(
        [
            checkpoint_managers.LatestN(n=keep_latest),
            checkpoint_managers.BestN(
                get_metric_fn=_val_metric,
                reverse=True,  # sorted descending and the last n kept: lowest MSE is best
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=_val_metric,
        best_mode="min",
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=options, item_names=("state", "data")
    )


def _host_copy(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        # Replicated over several processes: every process holds the whole value.
        if not x.sharding.is_fully_replicated:
            raise ValueError("checkpoint digests need replicated (or local) arrays")
        x = x.addressable_data(0)
    return np.asarray(x)


def digests(state: Any) -> dict[str, str]:
    """SHA-256 of each top-level entry of `state` (over paths, dtypes, shapes and bytes).

    Orbax/TensorStore do not checksum array data: a checkpoint with garbled bytes inside a
    compressed chunk can restore "successfully" with wrong values (seen here: weights off by
    1e32). These digests, saved with each step, let a restore detect that.
    """
    groups = state.items() if isinstance(state, dict) else [("", state)]
    out = {}
    for name, tree in groups:
        h = hashlib.sha256()
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            a = np.ascontiguousarray(_host_copy(leaf))
            h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        out[name] = h.hexdigest()
    return out


def _digest_file(manager, step: int) -> str:
    return os.path.join(os.fspath(manager.directory), str(step), DIGEST_FILE)


def _valid_digests(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, str) and len(v) == 64 for v in value.values())
    )


def saved_digests(manager, step: int) -> dict[str, str]:
    """The SHA-256 digests saved with `step`: from its digest file, else from the copy in
    Orbax's step metadata. Raises CorruptCheckpointError when neither holds readable digests
    (a step whose data cannot be verified is never used) or when the digest file is damaged.
    """
    path = _digest_file(manager, step)
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)[DIGEST_KEY]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(
                f"step {step}: its digest file {path} is unreadable ({type(e).__name__})"
            ) from e
        if not _valid_digests(saved):
            raise CorruptCheckpointError(f"step {step}: its digest file {path} is damaged")
        return saved
    try:
        saved = (manager.metadata(step).custom_metadata or {}).get(DIGEST_KEY)
    except Exception:  # a damaged metadata file: as good as none
        saved = None
    if not _valid_digests(saved):
        raise CorruptCheckpointError(
            f"step {step}: no readable SHA-256 digests (no {DIGEST_FILE}, none in Orbax's "
            "metadata); its data cannot be verified, so it is not used"
        )
    return saved


def _verify(manager, step: int, state: Any) -> None:
    """Raises CorruptCheckpointError when `state` does not match the digests saved at `step`
    (or when there are none to check it against)."""
    saved = saved_digests(manager, step)
    got = digests(state)
    bad = sorted(k for k in got if saved.get(k) != got[k])
    if bad:
        raise CorruptCheckpointError(
            f"step {step}: restored {', '.join(bad)} do not match the saved SHA-256"
        )


def _write_digest_file(manager, step: int, state_digests: dict[str, str]) -> None:
    """Writes the step's digests beside its data, atomically (temp file, fsync, rename), so a
    damaged or deleted Orbax metadata file cannot take them away."""
    if jax.process_index() != 0:
        return
    path = _digest_file(manager, step)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"step": int(step), DIGEST_KEY: state_digests}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(
    manager, step: int, state: Any, data_state: dict | None, metrics: dict[str, float] | None = None
) -> None:
    """Saves the training state (a pytree) and the data-iterator state at `step`, with the
    state's digests in the step's digest file and a copy in its custom metadata."""
    state_digests = digests(state)
    items = {"state": ocp.args.StandardSave(state)}
    items["data"] = ocp.args.JsonSave(data_state or {})
    manager.save(
        step,
        args=ocp.args.Composite(**items),
        metrics=metrics,
        force=True,
        custom_metadata={DIGEST_KEY: state_digests},
    )
    manager.wait_until_finished()
    _write_digest_file(manager, step, state_digests)


def abstract_like(tree: Any) -> Any:
    """The shape/dtype/sharding skeleton of `tree`, the target a restore fills in."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def best_step(manager) -> int | None:
    """The step with the lowest validation MSE, or None when no checkpoint has metrics."""
    best, best_value = None, float("inf")
    for step in manager.all_steps():
        metrics = manager.metrics(step)
        if metrics and VAL_METRIC in metrics and metrics[VAL_METRIC] < best_value:
            best, best_value = step, metrics[VAL_METRIC]
    return best


def restore(manager, step: int, target: Any) -> tuple[Any, dict]:
    """Restores (state, data_state) at `step` into the abstract `target` pytree; raises
    CorruptCheckpointError when the arrays do not match the digests saved with them."""
    saved_digests(manager, step)  # no digests to check against: refuse before reading
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
        ),
    )
    _verify(manager, step, restored["state"])
    return restored["state"], dict(restored["data"] or {})


def restore_latest_readable(
    manager, target: Any, log: Callable[[str], None] = logging.warning
) -> tuple[int, Any, dict] | None:
    """Restores the newest checkpoint that reads back; skips unreadable ones with a warning.

    Returns (step, state, data_state), or None when the manager has no readable checkpoint.
    Unreadable steps newer than the one restored are moved to `<workdir>/unreadable_checkpoints/`
    (kept for inspection, not deleted): left in place, the resumed run would reach their step
    number again and Orbax refuses to save over an existing step.
    """
    unreadable = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, data_state = restore(manager, step, target)
        except Exception as e:  # truncated / half-written files surface as many error types
            log(
                f"checkpoint at step {step} in {manager.directory} is unreadable "
                f"({read_error_reason(e)}); trying the previous one"
            )
            unreadable.append(step)
        else:
            _set_aside(manager, unreadable, log)
            return step, state, data_state
        _drop_failed_reads()
    _set_aside(manager, unreadable, log)
    return None


def read_error_reason(error: BaseException) -> str:
    """A short reason for a failed restore: the root cause's first line. Orbax's own message
    embeds the whole TensorStore spec (dozens of lines) after "See full TensorStore details"."""
    chain, seen = [], set()
    while error is not None and id(error) not in seen and len(chain) < 8:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in reversed(chain):  # the innermost cause with something to say
        text = str(e).split("See full TensorStore details")[0].strip()
        if text:
            line = text.splitlines()[0].strip()
            return f"{type(e).__name__}: {line[:300]}"
    return type(chain[0]).__name__ if chain else "unknown error"


def _drop_failed_reads() -> None:
    """Collects the read coroutines a failed Orbax restore leaves behind; each would otherwise
    print its TensorStore spec (pages of it) as an "Exception ignored" when collected."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _set_aside(manager, steps: list[int], log: Callable[[str], None]) -> None:
    if not steps:
        return
    directory = os.fspath(manager.directory)
    aside = os.path.join(os.path.dirname(directory), UNREADABLE_DIR)
    if jax.process_index() == 0:
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            dest = os.path.join(aside, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(os.path.join(directory, str(step)), dest)
            log(f"moved unreadable checkpoint step {step} to {dest}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("stlight_jax.checkpoint.set_aside")
    manager.reload()


def save_weights(directory: str, params: Any, batch_stats: Any, step: int = 0) -> str:
    """Writes a weights-only checkpoint ({'params', 'batch_stats'}) that training can start from."""
    manager = create_manager(directory, keep_latest=1)
    save(manager, step, {"params": params, "batch_stats": batch_stats}, {})
    manager.close()
    return os.path.join(os.path.abspath(directory), str(step))


def restore_weights(
    path: str, target_params: Any, target_batch_stats: Any, step: int | str | None = None
) -> tuple[Any, Any, int]:
    """Reads params and batch stats from a workdir, its checkpoints dir, or a converted checkpoint.

    `step` picks a step number, 'latest' or 'best' (default: best if any checkpoint has
    validation metrics, else latest). Returns (params, batch_stats, step).
    """
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        path = os.path.join(path, CHECKPOINT_DIR)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    manager = create_manager(path, read_only=True)
    try:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"{path!r} holds no Orbax checkpoint")
        if step is None or step == "best":
            chosen = best_step(manager)
            if chosen is None:
                if step == "best":
                    raise ValueError(f"{path!r} has no checkpoint with validation metrics")
                chosen = manager.latest_step()
        elif step == "latest":
            chosen = manager.latest_step()
        else:
            chosen = int(step)
            if chosen not in steps:
                raise ValueError(f"{path!r} has no step {chosen}; it has {sorted(steps)}")
        target = {
            "params": abstract_like(target_params),
            "batch_stats": abstract_like(target_batch_stats),
        }
        saved_digests(manager, chosen)  # no digests to check against: refuse before reading
        # Partial restore: a training checkpoint also holds opt_state and step, ignored here.
        try:
            restored = _restore_partial(manager, chosen, target)
        except Exception as e:
            _drop_failed_reads()
            raise CorruptCheckpointError(
                f"step {chosen}: the checkpoint in {path} cannot be restored "
                f"({read_error_reason(e)})"
            ) from e
        state = restored["state"]
        _verify(manager, chosen, state)
        return state["params"], state["batch_stats"], chosen
    finally:
        manager.close()


def _restore_partial(manager, step: int, target: Any) -> Any:
    """Restores only `target`'s entries ({'params', 'batch_stats'}) of the state at `step`."""
    return manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
            data=ocp.args.JsonRestore(),  # named so Orbax does not warn it was skipped
        ),
    )
