"""A full disk while a run writes its workdir: `disk_full_guard` turns ENOSPC / EDQUOT / EFBIG,
however deeply Orbax or TensorStore wrapped it, into one `DiskFullError` naming the workdir and
its latest complete checkpoint (a failed save never touches the earlier steps)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from stlight_jax import log_noise
from stlight_jax.checkpoints import manager


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
        # the failed writes' coroutines would print pages when collected
        log_noise.drop_failed_reads()
        ckpt_dir = manager.checkpoint_dir(workdir)
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
