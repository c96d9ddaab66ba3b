"""Output of a run: metrics.jsonl + TensorBoard, the progress bar and strict JSON files (the
library log filters the entry points install are in `log_noise`)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np


def to_json(value: Any) -> Any:
    """A strict-JSON copy: numpy scalars become Python numbers, non-finite floats the strings
    'inf' / '-inf' / 'nan', tuples lists, dict keys strings."""
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_json(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(x) for x in value]
    return value


def write_json(path: str, obj: Any) -> None:
    """Writes `to_json(obj)`, indented, ending in a newline."""
    with open(path, "w") as f:
        json.dump(to_json(obj), f, indent=2, allow_nan=False)
        f.write("\n")


class MetricWriter:
    """metrics.jsonl plus TensorBoard event files (tensorboardX: no TensorFlow needed).

    Only process 0 writes.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        """`resume_step`: the step the run resumes from (0: a fresh start); records of later
        steps, which the run writes again, are dropped (`resume_logs`)."""
        self.active = jax.process_index() == 0
        self._tb = None
        if self.active:
            from stlight_jax import resume_logs

            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            resume_logs.drop_redone_records(path, resume_step)
            self._jsonl = open(path, "a")  # noqa: SIM115
            from tensorboardX import SummaryWriter

            # TensorBoard hides earlier events at steps >= purge_step; those of the resume step
            # that stay valid are written again from metrics.jsonl, so each shows once.
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step)
            for record in resume_logs.records_at(path, resume_step):
                self._add_scalars(resume_step, record)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.active:
            return
        record = {"step": int(step), **to_json(values)}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        self._add_scalars(step, values)
        self._tb.flush()

    def _add_scalars(self, step: int, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if k in ("step", "resumed_from_step"):  # a marker, kept in metrics.jsonl only
                continue
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._tb.close()


class Progress:
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
                format_duration(eta),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_duration(seconds: float) -> str:
    """h:mm:ss, or '?' when unknown (infinite)."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
