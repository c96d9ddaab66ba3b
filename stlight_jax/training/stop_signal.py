"""SIGTERM/SIGINT during training as a flag the loop checks, so it can checkpoint and exit;
the same flag stops a validation or test pass within one batch (on every process alike)."""

from __future__ import annotations

import os
import signal

import jax
import numpy as np


class EvaluationInterrupted(Exception):
    """A stop signal arrived during a validation or test pass (named by the message)."""


class StopSignal:
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
        if self.received is None:
            # Said at once (os.write is safe in a handler; logging's locks are not).
            os.write(
                2,
                f"signal {signum} received: stopping after the current step or "
                "evaluation batch, with a checkpoint\n".encode(),
            )
        self.received = signum

    def agree_across_processes(self) -> None:
        """Raises the flag on every process when any process got a signal, so that all stop at
        the same step (a collective: every process calls it at the same step)."""
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.received is not None))
        if np.any(flags) and self.received is None:
            self.received = signal.SIGTERM

    def batch_hook(self, what: str):
        """An `evaluate_split` hook that stops a validation or test pass within one batch of a
        signal (raising EvaluationInterrupted); all processes stop at the same batch."""
        n_proc = jax.process_count()

        def on_batch(batch, gbatch) -> None:
            stop = self.received is not None
            if n_proc > 1:
                from jax.experimental import multihost_utils

                stop = bool(np.any(multihost_utils.process_allgather(np.int32(stop))))
                if stop and self.received is None:
                    self.received = signal.SIGTERM
            if stop:
                raise EvaluationInterrupted(what)

        return on_batch

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
