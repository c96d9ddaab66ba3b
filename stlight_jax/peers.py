"""A dead peer in a multi-process job stops the survivors within seconds, in one line.

Without this, a survivor's next collective fails (Gloo: "Connection closed by peer") with a
traceback, its exit then waits for `jax.distributed`'s heartbeat and shutdown timeouts, and
the coordination service ends it with a C++ abort ("Fatal Python error: Aborted"). JAX's own
callback for that moment cannot be used (jaxlib 0.10 terminates on `std::bad_cast` calling it).

Instead every process posts a counter to the coordination service's key-value store each
`PERIOD_S` from a watch thread and reads the others'. A peer whose counter has not moved for
`LOST_AFTER_S` (killed, crashed, frozen or unreachable), or a coordination service that no
longer answers (process 0 is gone), ends this process: one line on stderr naming the lost
process and, for training, the last complete checkpoint, then `os._exit(EXIT_PEER_LOST)`,
skipping `jax.distributed.shutdown`'s wait for the dead peer. The watch beats well before
JAX's heartbeat timeout (`HEARTBEAT_TIMEOUT_S`), so the abort never comes.

`watched(workdir)` wraps a job's work: a collective that fails in the main thread waits
there (silently) for the watch's verdict; a process that ends posts so, and the others do not
count it as lost.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

PERIOD_S = 1.0
LOST_AFTER_S = 15.0
HEARTBEAT_TIMEOUT_S = 100  # jax.distributed's (its default): far beyond LOST_AFTER_S
EXIT_PEER_LOST = 3
_KEY = "stlight_jax/alive/{}"
# In the text of a failed collective (jax raises it as a ValueError or XlaRuntimeError).
_COLLECTIVE_FAILURE = (
    "Gloo",
    "gloo",
    "Connection closed by peer",
    "Connection reset by peer",
    "coordination service",
)

_watch: PeerWatch | None = None


def latest_checkpoint(workdir: str | None) -> str:
    """'the last complete checkpoint is step N in DIR' (a step with its digest file), or
    that there is none yet; '' without a workdir."""
    if not workdir:
        return ""
    from stlight_jax.checkpoints.integrity import DIGEST_FILE
    from stlight_jax.checkpoints.manager import checkpoint_dir

    directory = checkpoint_dir(workdir)
    try:
        steps = [
            int(d)
            for d in os.listdir(directory)
            if d.isdigit() and os.path.exists(os.path.join(directory, d, DIGEST_FILE))
        ]
    except OSError:
        steps = []
    if not steps:
        return f"no checkpoint had been saved in {directory} yet"
    return (
        f"the last complete checkpoint is step {max(steps)} in {directory}; rerun the same "
        "command on every process to resume from it"
    )


class PeerWatch:
    """The watch thread of one process (see the module docstring)."""

    def __init__(
        self,
        prog: str,
        client,
        process_id: int,
        num_processes: int,
        lost_after: float = LOST_AFTER_S,
        period: float = PERIOD_S,
    ):
        self.prog, self.client = prog, client
        self.me, self.n = process_id, num_processes
        self.lost_after, self.period = lost_after, period
        self.workdir: str | None = None
        self.ended: dict[int, tuple[str, float]] = {}  # peers that ended: 'done' or 'error'
        self._count = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="stlight-peer-watch", daemon=True)

    def start(self) -> PeerWatch:
        self._post("alive")
        self._thread.start()
        return self

    def _post(self, status: str) -> None:
        self._count += 1
        self.client.key_value_set(
            _KEY.format(self.me), f"{status}:{self._count}", allow_overwrite=True
        )

    def _read(self, peer: int) -> str | None:
        try:
            return self.client.key_value_try_get(_KEY.format(peer))
        except Exception as e:  # NOT_FOUND before the peer's first post; else the service
            if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
                return None
            raise

    def _run(self) -> None:
        now = time.monotonic()
        last = {p: (None, now) for p in range(self.n) if p != self.me}
        unreachable_since = None
        while not self._stop.wait(self.period):
            now = time.monotonic()
            try:
                self._post("alive")
                values = {p: self._read(p) for p in last}
                unreachable_since = None
            except Exception as e:
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.lost_after:
                    lost = "process 0 (the coordinator)" if self.me else "the coordination service"
                    self.stop_job(f"lost {lost}: it stopped answering ({_short(e)})")
                continue
            for p, value in values.items():
                status = (value or "").partition(":")[0]
                if status in ("done", "error"):
                    # A peer that stopped with an error leaves this process waiting in its next
                    # collective: it stops too, after a grace period in which a process that
                    # met the same error (a bad setting) ends with its own message.
                    since = self.ended.setdefault(p, (status, now))[1]
                    if status == "error" and now - since > self.lost_after:
                        self.stop_job(
                            f"process {p} of {self.n} stopped with an error (see its output)"
                        )
                    continue
                if value != last[p][0]:
                    last[p] = (value, now)
                elif now - last[p][1] > self.lost_after:
                    self.stop_job(
                        f"lost process {p} of {self.n}: no sign of life for "
                        f"{self.lost_after:.0f} s (killed, crashed or unreachable)"
                    )

    def stop_job(self, what: str) -> None:
        """One line on stderr, then the process ends at once (any thread may call it)."""
        with self._lock:
            where = latest_checkpoint(self.workdir)
            line = f"{self.prog}: error: {what}; process {self.me} stops too"
            line += f"; {where}" if where else ""
            try:
                sys.stdout.flush()
            except Exception:  # noqa: S110 - ending anyway
                pass
            os.write(2, (line + "\n").encode())
            os._exit(EXIT_PEER_LOST)

    def await_verdict(self, error: BaseException) -> None:
        """A collective failed in this process: waits (silently) for the watch to find the
        lost peer, and ends the process either way."""
        deadline = time.monotonic() + self.lost_after + 5 * self.period
        while time.monotonic() < deadline:
            for p, (status, _) in sorted(self.ended.items()):
                if status == "error":
                    self.stop_job(f"process {p} of {self.n} stopped with an error (see its output)")
            time.sleep(0.1)
        self.stop_job(f"a collective operation failed ({_short(error)})")

    def end(self, status: str) -> None:
        """Posts this process's end ('done' or 'error'), so the others do not wait for it."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self._post(status)


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] + (" ..." if len(text) > 300 else "")


def is_collective_failure(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(s in str(error) for s in _COLLECTIVE_FAILURE):
            return True
        error = error.__cause__ or error.__context__
    return False


def start(prog: str) -> PeerWatch | None:
    """Starts the watch after `jax.distributed.initialize` (nothing with one process)."""
    global _watch
    import jax
    from jax._src import distributed

    client = distributed.global_state.client
    if jax.process_count() == 1 or client is None or _watch is not None:
        return _watch
    _watch = PeerWatch(prog, client, jax.process_index(), jax.process_count()).start()
    return _watch


@contextlib.contextmanager
def watched(workdir: str | None = None) -> Iterator[None]:
    """Wraps a job's work (see the module docstring); `workdir`: where its checkpoints are,
    for the message."""
    watch = _watch
    if watch is None:
        yield
        return
    watch.workdir = workdir
    try:
        yield
    except BaseException as e:
        if is_collective_failure(e):
            watch.await_verdict(e)
        watch.end("error")
        raise
    watch.end("done")


# ---------------------------------------------------------------------------------------------
# The coordination service in a helper process.
#
# JAX runs the coordination service inside process 0, and every other process's client ends
# itself with a C++ abort the moment that service stops answering: with process 0 dead, no
# survivor could report anything. So process 0 starts the service in a small helper process
# of its own, which outlives a killed process 0 by GRACE_S (the others' watches find process
# 0 lost and stop cleanly meanwhile); a normal end (jax.distributed.shutdown) stops it at once.

GRACE_S = LOST_AFTER_S + 10.0

_SERVICE_HELPER = r"""
import os, sys, time
from jaxlib import _jax
bind, n, parent, heartbeat, grace = sys.argv[1:6]
service = _jax.get_distributed_runtime_service(bind, int(n), heartbeat_timeout=int(heartbeat))
parent, grace = int(parent), float(grace)
print("serving", flush=True)
while os.getppid() == parent:
    time.sleep(0.5)
time.sleep(grace)  # process 0 is gone: the others' watches stop them meanwhile
os._exit(0)
"""


class _HelperService:
    """Stands for the service in process 0's `jax.distributed` state; `shutdown` (after every
    client has passed the shutdown barrier) ends the helper."""

    def __init__(self, proc):
        self.proc = proc

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()


def initialize(coordinator_address: str, num_processes: int, process_id: int, **kwargs) -> None:
    """`jax.distributed.initialize`, with process 0's coordination service in a helper process
    (see above); falls back to JAX's own service where that cannot be arranged."""
    import subprocess

    import jax
    from jax._src import distributed

    kwargs.setdefault("heartbeat_timeout_seconds", HEARTBEAT_TIMEOUT_S)
    start_helper = (
        process_id == 0
        and (num_processes or 0) > 1
        and hasattr(getattr(distributed, "_jax", None), "get_distributed_runtime_service")
    )
    if not start_helper:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
        return
    bind = "[::]:" + coordinator_address.rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SERVICE_HELPER,
            bind,
            str(num_processes),
            str(os.getpid()),
            str(kwargs["heartbeat_timeout_seconds"]),
            str(GRACE_S),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in the terminal reaches the job, which ends it
    )
    if proc.stdout.readline().strip() != b"serving":
        proc.kill()
        proc.wait()
        from stlight_jax.errors import RunCannotContinue

        raise RunCannotContinue(
            f"could not start the coordination service on {bind}: is the port of "
            f"--coordinator_address={coordinator_address} in use? (After a killed job it "
            f"stays taken for {GRACE_S:.0f} s.)"
        )
    proc.stdout.close()
    real = distributed._jax.get_distributed_runtime_service
    distributed._jax.get_distributed_runtime_service = lambda *a, **k: _HelperService(proc)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
    except BaseException:
        _HelperService(proc).shutdown()
        raise
    finally:
        distributed._jax.get_distributed_runtime_service = real
