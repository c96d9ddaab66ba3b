"""evaluate.py's outputs as one whole set: written into a temporary folder beside `--out` and
renamed into place at the end, under a lock, so `--out` only ever holds one run's complete set.
(An `--out` that also holds other files, a workdir or a folder of the user's, is never
replaced: the new files are renamed into it one by one, the .json metadata last.)

An interrupted or failed run (Ctrl-C, a full disk, a bad input found late) removes its
temporary folder and leaves the previous set as it was; a second evaluation into an `--out`
being written stops at once (`OutputInUseError`, one line); a write error names the file.
Beside `--out` live its lock file `.<name>.lock` (kept, emptied, as the workdir lock) and,
while a run writes, `.<name>.tmp-*`; a run that was killed outright (`kill -9`) leaves its
temporary folder, which the next run into the same `--out` removes.

With several JAX processes, process 0 alone takes the lock and writes; every process learns
whether it could (a collective), so all stop together when it could not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator

import numpy as np

from stlight_jax.errors import RunCannotContinue

# What evaluate.py writes (older versions too): an --out holding anything else is not
# replaced wholesale, in case it is a folder of the user's (or a workdir).
_OUR_FILES = re.compile(
    r"(metrics\.json|metrics_vs_lead_time\.png|(sample|sequence)_\d+\.(png|gif)"
    r"|(inputs|targets|predictions)\.npy|predictions\.json)"
)


class OutputInUseError(RunCannotContinue):
    """Another evaluation is writing the same --out."""


class OutputSet:
    """Where one run's files go: `path(name)` in the temporary folder (process 0; the other
    processes write nothing), `final(name)` where it ends up."""

    def __init__(self, out_dir: str, tmp: str | None):
        self.out = out_dir
        self.tmp = tmp
        self.writer = tmp is not None

    def path(self, name: str) -> str:
        if self.tmp is None:
            raise RuntimeError("only process 0 writes the output set")
        return os.path.join(self.tmp, name)

    def final(self, name: str) -> str:
        return os.path.join(self.out, name)

    @contextlib.contextmanager
    def writing(self, *names: str) -> Iterator[None]:
        """Inside: an OSError (a full disk) names the file being written, the last of `names`
        that exists (files are written in that order), and says `--out` is untouched."""
        try:
            yield
        except OSError as e:
            if isinstance(e, OutputInUseError):
                raise
            existing = [n for n in names if os.path.exists(self.path(n))]
            name = (existing or names)[-1]
            reason = e.strerror or str(e)
            raise OSError(
                e.errno,
                f"cannot write {self.final(name)}: {reason}; {self.out} keeps its previous "
                "outputs (none written)",
            ) from e

    def preallocate(self, name: str) -> None:
        """Reserves a memory-mapped file's blocks now: a full disk is an OSError naming it
        here, not a SIGBUS when a page is written later."""
        with self.writing(name), open(self.path(name), "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if size and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(f.fileno(), 0, size)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise


def _lock_path(out: str) -> str:
    parent, name = os.path.split(out)
    return os.path.join(parent, f".{name}.lock")


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on host {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _lock(out: str) -> int:
    """An fd holding the lock on `out` (flock on `.<name>.lock` beside it)."""
    path = _lock_path(out)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return fd  # no flock on this filesystem: nothing to lock with, the run goes on
        holder = _holder(fd)
        os.close(fd)
        raise OutputInUseError(
            f"--out {out} is being written by another evaluation ({holder}; lock file {path}); "
            "wait for it to finish, or give another --out"
        ) from None
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    me["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return fd


def _tidy(out: str) -> None:
    """With the lock held: puts back a previous set a killed run had moved aside (killed
    between the two renames of `_swap`) and removes killed runs' temporary folders."""
    parent, name = os.path.split(out)
    for entry in os.listdir(parent):
        if entry.startswith(f".{name}.old-") and not os.path.exists(out):
            os.rename(os.path.join(parent, entry), out)
    for entry in os.listdir(parent):
        if entry.startswith((f".{name}.tmp-", f".{name}.old-")):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _holds_other_files(out: str, given: str) -> bool:
    """Whether `out` holds anything evaluate.py does not write (then it is never replaced
    wholesale: `_swap` moves the new files in one by one, the others stay)."""
    if not os.path.lexists(out):
        return False
    if not os.path.isdir(out):
        raise ValueError(f"--out {given} exists and is not a folder")
    return any(not _OUR_FILES.fullmatch(e) for e in os.listdir(out))


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait (are delivered after the block) while the set is swapped."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _swap(tmp: str, out: str, shared: bool) -> None:
    """Renames `tmp` into place as `out`; a previous `out` is moved aside, then removed.
    `shared`: `out` holds other files too (a folder of the user's, a workdir): each new file is
    renamed into it instead, the metadata (.json) last, and nothing else there is touched."""
    parent, name = os.path.split(out)
    with _signals_deferred():
        if shared:
            names = sorted(os.listdir(tmp), key=lambda n: (n.endswith(".json"), n))
            for entry in names:
                os.replace(os.path.join(tmp, entry), os.path.join(out, entry))
            os.rmdir(tmp)
        elif os.path.lexists(out):
            old = os.path.join(parent, f".{name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)


def _agree(ok: bool, out: str) -> None:
    """With several processes: all raise when process 0 could not start the set."""
    import jax

    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    status = multihost_utils.broadcast_one_to_all(np.int32(ok))
    if not ok:
        return  # process 0 raises its own error
    if not int(status):
        raise OutputInUseError(f"process 0 could not start writing --out {out}")


@contextlib.contextmanager
def whole_set(out_dir: str, writer: bool = True) -> Iterator[OutputSet]:
    """Yields the `OutputSet` to write into; renames it into place as `out_dir` when the block
    ends normally, removes it otherwise (any exception, KeyboardInterrupt included).

    `writer`: whether this process writes (process 0 of a multi-process job); the others
    get an OutputSet without a folder and only take part in the collective.
    """
    given = out_dir
    out = os.path.realpath(out_dir)  # a symlinked --out: its target is replaced
    if not writer:
        _agree(True, out)
        yield OutputSet(given, None)
        return
    fd = tmp = None
    try:
        parent = os.path.dirname(out)
        os.makedirs(parent, exist_ok=True)
        fd = _lock(out)
        _tidy(out)
        shared = _holds_other_files(out, given)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
    except BaseException:
        if fd is not None:
            os.close(fd)
        _agree(False, out)
        raise
    try:
        _agree(True, out)
        yield OutputSet(given, tmp)
        _swap(tmp, out, shared)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        os.ftruncate(fd, 0)
        os.close(fd)
