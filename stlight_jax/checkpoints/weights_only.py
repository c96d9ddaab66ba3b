"""Weights-only checkpoints: {'params', 'batch_stats'} under `state`, as `python -m
stlight_jax.convert import` writes them and as training starts from (`init_from`), and the
read of params and batch stats alone from any checkpoint (a training one also holds opt_state
and step, left unread). A training run saving into the directory while this reads may remove
the step being read (keep-latest): the read is then redone on the steps left.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orbax.checkpoint as ocp

from stlight_jax import log_noise
from stlight_jax.checkpoints import manager as manager_lib
from stlight_jax.checkpoints.integrity import CorruptCheckpointError, saved_digests, verify


def save_weights(directory: str, params: Any, batch_stats: Any, step: int = 0) -> str:
    """Writes a weights-only checkpoint ({'params', 'batch_stats'}) that training can start from."""
    manager = manager_lib.create_manager(directory, keep_latest=1)
    manager_lib.save(manager, step, {"params": params, "batch_stats": batch_stats}, {})
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
    if os.path.isdir(os.path.join(path, manager_lib.CHECKPOINT_DIR)):
        path = os.path.join(path, manager_lib.CHECKPOINT_DIR)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    # A training run saving into `path` removes old steps (keep-latest) while this reads:
    # a read that fails while a step it listed vanished is redone, choosing again.
    for attempt in range(1, _READ_ATTEMPTS + 1):
        listed = _steps_on_disk(path)
        try:
            return _restore_weights_once(path, target_params, target_batch_stats, step)
        except Exception:
            gone = sorted(listed - _steps_on_disk(path))
            if not gone and attempt < _READ_ATTEMPTS:
                time.sleep(0.5)  # Orbax removes a step with rmtree: its directory lingers
                gone = sorted(listed - _steps_on_disk(path))
            if not gone or attempt == _READ_ATTEMPTS:
                raise
            log_noise.drop_failed_reads()
            logging.warning(
                "step %s in %s was removed while it was being read (a training run saving "
                "there keeps only its latest steps); choosing the step again",
                ", ".join(map(str, gone)),
                path,
            )
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


_READ_ATTEMPTS = 5


def _steps_on_disk(path: str) -> set[int]:
    """The complete steps in checkpoints dir `path` (Orbax renames a step's temporary
    directory to its number when the step is complete)."""
    try:
        return {int(d) for d in os.listdir(path) if d.isdigit()}
    except OSError:
        return set()


def _restore_weights_once(
    path: str, target_params: Any, target_batch_stats: Any, step: int | str | None
) -> tuple[Any, Any, int]:
    manager = manager_lib.create_manager(path, read_only=True)
    try:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"{path!r} holds no Orbax checkpoint")
        if step is None or step == "best":
            chosen = manager_lib.best_step(manager)
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
            "params": manager_lib.abstract_like(target_params),
            "batch_stats": manager_lib.abstract_like(target_batch_stats),
        }
        saved_digests(manager, chosen)  # no digests to check against: refuse before reading
        # Partial restore: a training checkpoint also holds opt_state and step, ignored here.
        try:
            restored = _restore_partial(manager, chosen, target)
        except Exception as e:
            log_noise.drop_failed_reads()
            raise CorruptCheckpointError(
                f"step {chosen}: the checkpoint in {path} cannot be restored "
                f"({manager_lib.read_error_reason(e)})"
            ) from e
        state = restored["state"]
        verify(manager, chosen, state)
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
