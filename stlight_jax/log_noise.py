"""The one place that mutes library log noise: what Orbax, absl, JAX and asyncio print that
says nothing to a user, or says in pages what this package reports in one line.

What is muted, and why:

- Orbax's per-save INFO chatter, its notes that a read-only manager is read only (evaluation
  and `stlight_jax.load` open one on purpose), its warning on saves without metrics (mid-epoch
  and signal checkpoints have no validation MSE, deliberately), its dump of a damaged step
  metadata file (`checkpoints.integrity.saved_digests` names the step in one line) and the
  items it says it skipped when only a step's metadata is read. Other warnings and errors show.
- JAX's note that it could not start a TPU backend because libtpu is not installed (every start
  on a CPU or GPU machine); a TPU that fails to start still says so.
- What a failed Orbax read leaves for Python to report at random moments: the "Exception
  ignored in <coroutine>" tracebacks of its other pending reads and asyncio's "Task exception
  was never retrieved" records, each pages of TensorStore spec. Checkpoint code drops them
  once it has its one-line reason (`drop_failed_reads`); the command lines hold them back
  and drop them when a user error ends the process (`hold_asyncio_records`).

Nothing is filtered on import: entry points call `quiet_library_logs` once at start-up, and
the rest applies only inside the blocks that use it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Iterator

_ORBAX_BENIGN = ("read_only=True", "is read only", "Given directory is read only")
# Dropped at any level: a damaged step metadata file (Orbax logs its whole content as an
# error; `checkpoints.integrity.saved_digests` reports the step in one line) and the items
# Orbax says it skipped when only a step's metadata (its digest copy) is read.
_ORBAX_HANDLED = (
    "did not provide metrics",
    "Failed to json parse Metadata file",
    "was found in the checkpoint, but could not be restored",
)
_READ_ONLY_NOTE = "Given directory is read only"


class _OrbaxFilter(logging.Filter):
    """Drops Orbax's per-save INFO chatter, its notes on read-only managers (which evaluation
    opens on purpose) and its warning on saves without metrics (mid-epoch and signal
    checkpoints have no validation MSE, deliberately); other warnings and errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(n in record.getMessage() for n in _ORBAX_HANDLED):
            return False
        if "/orbax/" not in record.pathname or record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and not any(
            b in str(record.msg) for b in _ORBAX_BENIGN
        )


class _NoTpuFilter(logging.Filter):
    """Drops JAX's note that it could not start a TPU backend because libtpu is not installed
    (every start on a CPU or GPU machine); a TPU that fails to start still says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            record.levelno < logging.WARNING
            and message.startswith("Unable to initialize backend 'tpu'")
            and "libtpu.so" in message
        )


def quiet_library_logs() -> None:
    """Installs `_OrbaxFilter` on the root and absl loggers and their handlers, and
    `_NoTpuFilter` on JAX's backend logger (entry points call it once at start-up)."""
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(_OrbaxFilter())
    logging.getLogger("absl").addFilter(_OrbaxFilter())
    logging.getLogger("jax._src.xla_bridge").addFilter(_NoTpuFilter())


class _ReadOnlyNoteFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _READ_ONLY_NOTE not in str(record.msg)


@contextlib.contextmanager
def orbax_read_only_note_dropped() -> Iterator[None]:
    """Inside: Orbax's warning that a read-only manager is read only is dropped (evaluation and
    `stlight_jax.load` open one on purpose), whether or not `quiet_library_logs` ran."""
    note = _ReadOnlyNoteFilter()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(note)
    try:
        yield
    finally:
        absl_logger.removeFilter(note)


def drop_failed_reads() -> None:
    """Collects the read coroutines and tasks a failed Orbax restore (or save) leaves behind,
    with their reports dropped; each would otherwise print its TensorStore spec (pages of it)
    when collected, as an "Exception ignored" or as asyncio's "Task exception was never
    retrieved"."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    asyncio_logger = logging.getLogger("asyncio")
    was_disabled, asyncio_logger.disabled = asyncio_logger.disabled, True
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
        asyncio_logger.disabled = was_disabled


class HeldRecords(logging.Filter):
    """Keeps asyncio's log records back (returning False stops them) until `release`d."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def release(self) -> None:
        """Stops holding and hands the held records to the asyncio logger, as usual."""
        asyncio_logger = logging.getLogger("asyncio")
        asyncio_logger.removeFilter(self)
        records, self.records = self.records, []
        for record in records:
            asyncio_logger.handle(record)


def hold_asyncio_records() -> HeldRecords:
    """Starts holding asyncio's log records back ("Task exception was never retrieved" after a
    failed Orbax read); `release()` reports them, leaving them held drops them for good."""
    held = HeldRecords()
    logging.getLogger("asyncio").addFilter(held)
    return held
