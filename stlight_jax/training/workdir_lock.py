"""One training job per workdir: an advisory lock (`flock`) on `<workdir>/.lock`, which also
records the holder (pid, host, start time) for the message a second job stops with."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from stlight_jax.errors import RunCannotContinue

LOCK_FILE = ".lock"


class WorkdirLockedError(RunCannotContinue):
    """Another live job holds the workdir."""


def _describe(holder: dict) -> str:
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"started {holder.get('started', '?')}"
    )


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"pid": "?", "host": "?", "started": f"? (unreadable lock file: {raw[:80]!r})"}


@contextlib.contextmanager
def hold(workdir: str, log=logging.warning) -> Iterator[str]:
    """Holds the lock on `workdir` for the `with` block; yields the lock file's path.

    Raises WorkdirLockedError naming the holder when a live process holds it. The kernel
    drops a `flock` when its holder dies (even by kill -9), so a lock file that still names
    a holder but is not locked was left by a job that ended without cleaning up: it is taken
    over with a warning. A clean exit empties the file (never deletes it: deleting would let
    a waiting job lock an unlinked file while a third one creates a new one).
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _lock_or_raise(fd, workdir, path, log)
        if locked:
            previous = _read_holder(fd)
            if previous is not None:
                log(
                    f"taking over the lock on {workdir} left by a job that is gone "
                    f"({_describe(previous)}); its checkpoints are resumed as usual"
                )
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            os.fsync(fd)
        try:
            yield path
        finally:
            if locked:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # also releases the flock


def _lock_or_raise(fd: int, workdir: str, path: str, log) -> bool:
    """True once locked; False on a filesystem without flock (warned: the run goes on)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            log(f"cannot lock {path} ({e}); nothing stops a second job on this workdir")
            return False
    holder = _read_holder(fd) or {}
    raise WorkdirLockedError(
        f"workdir {workdir} is in use by another job ({_describe(holder)}; lock file {path}); "
        "wait for it to finish or stop it, or use another --workdir"
    )


@contextlib.contextmanager
def hold_for_job(workdir: str) -> Iterator[None]:
    """`hold` by process 0 of a (possibly multi-process) job; every process raises
    WorkdirLockedError when process 0 could not take the lock."""
    import jax

    if jax.process_count() == 1:
        with hold(workdir):
            yield
        return
    import numpy as np
    from jax.experimental import multihost_utils

    with contextlib.ExitStack() as stack:
        error = None
        if jax.process_index() == 0:
            try:
                stack.enter_context(hold(workdir))
            except WorkdirLockedError as e:
                error = e
        locked = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if error is not None:
            raise error
        if not int(locked):
            raise WorkdirLockedError(f"process 0 found workdir {workdir} in use by another job")
        yield
