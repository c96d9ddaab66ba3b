"""Orbax checkpoints: training state + data-iterator state, keep-latest and keep-best, fallbacks.

A workdir's checkpoints live in `<workdir>/checkpoints/<step>/` with two items: `state`
({'params', 'batch_stats', 'opt_state', 'step'}) and `data` (the input iterator's JSON state).
Restores go into an abstract target, so a checkpoint written on 8 devices restores on 1 and the
other way round. Each step also records SHA-256 digests of the state (`integrity`), checked on
restore; a step without readable digests is never used: training sets it aside, evaluation
refuses it. Weights-only checkpoints (params and batch stats) are in `weights_only`; a full
disk while saving is named in one line by `disk_full`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from stlight_jax import log_noise
from stlight_jax.checkpoints.integrity import (
    DIGEST_KEY,
    digests,
    saved_digests,
    verify,
    write_digest_file,
)

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable_checkpoints"  # beside CHECKPOINT_DIR: steps set aside on resume
VAL_METRIC = "val_mse"


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
        save_interval_steps=0 if read_only else 1,  # Orbax warns when it has to set this
        enable_async_checkpointing=False,
    )
    directory = os.path.abspath(directory)
    if not read_only:
        os.makedirs(directory, exist_ok=True)  # before an alias (below) can point at it
    with log_noise.orbax_read_only_note_dropped():
        manager = ocp.CheckpointManager(
            _orbax_path(directory), options=options, item_names=("state", "data")
        )
    manager.stlight_directory = directory  # what messages name (`manager_directory`)
    return manager


# Characters of a path that Orbax and TensorStore do not take literally: Orbax finds the
# per-process OCDBT files to merge with `epath.Path.glob`, which globs the whole path (so
# `[`, `]`, `*`, `?` in a directory name are patterns), and TensorStore's file driver reads
# a backslash as a separator (the arrays of `runs/a\b` went to `runs/a/b`).
_NOT_LITERAL_TO_ORBAX = frozenset("[]*?\\")


def _orbax_path(directory: str) -> str:
    """The path Orbax is given for `directory`: itself, unless it holds a character Orbax or
    TensorStore does not take literally; then a symlink to it named by the path's SHA-256,
    in a private directory under the system's temp dir (the same name in every process)."""
    if not _NOT_LITERAL_TO_ORBAX.intersection(directory):
        return directory
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = os.path.join(tempfile.gettempdir(), f"stlight-jax-{uid}")
    os.makedirs(root, mode=0o700, exist_ok=True)
    info = os.lstat(root)
    private = os.path.isdir(root) and not os.path.islink(root) and info.st_uid == uid
    if not private or info.st_mode & 0o077:
        raise OSError(
            f"{root} (where checkpoint paths with [ ] * ? or \\ get a plain alias) is not a "
            "private directory of this user; remove it and rerun"
        )
    name = hashlib.sha256(directory.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    link = os.path.join(root, name)
    if not (os.path.islink(link) and os.readlink(link) == directory):
        tmp = f"{link}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(directory, tmp)
        os.replace(tmp, link)  # atomic: processes sharing the name agree on the target
    return link


def manager_directory(manager) -> str:
    """The checkpoints directory of `manager` as the user named it (Orbax may be working
    through an alias of it, `_orbax_path`)."""
    return getattr(manager, "stlight_directory", None) or os.fspath(manager.directory)


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
    write_digest_file(manager, step, state_digests)


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
    verify(manager, step, restored["state"])
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
                f"checkpoint at step {step} in {manager_directory(manager)} is unreadable "
                f"({read_error_reason(e)}); trying the previous one"
            )
            unreadable.append(step)
        else:
            _set_aside(manager, unreadable, log)
            return step, state, data_state
        log_noise.drop_failed_reads()
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


def _set_aside(manager, steps: list[int], log: Callable[[str], None]) -> None:
    if not steps:
        return
    directory = manager_directory(manager)
    aside = os.path.join(os.path.dirname(directory), UNREADABLE_DIR)
    if jax.process_index() == 0:
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            dest = os.path.join(aside, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(os.path.join(directory, str(step)), dest)
            log(f"moved unreadable checkpoint step {step} to {dest}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("stlight_jax.checkpoints.set_aside")
    manager.reload()
