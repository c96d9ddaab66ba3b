"""After a resume, the logs hold each step once: metrics.jsonl loses the records of steps the
resumed run writes again, and TensorBoard is told to hide them (its `purge_step`)."""

from __future__ import annotations

import json
import logging
import os

TEST_PREFIX = "test_"


def _redone(record: dict, resume_step: int) -> bool:
    """Whether the run resumed at `resume_step` writes this record again: every later step,
    the test pass at the resume step (redone when the run ends there), and at a fresh start
    (step 0) the model-size record."""
    step = record.get("step")
    if not isinstance(step, int):
        return False
    if step > resume_step:
        return True
    if step == resume_step:
        return resume_step == 0 or any(k.startswith(TEST_PREFIX) for k in record)
    return False


def drop_redone_records(path: str, resume_step: int) -> int:
    """Rewrites `path` (atomically) without the records a run resumed at `resume_step` writes
    again, and without a torn last line from a killed run; returns how many it dropped."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill: its step is redone anyway
                dropped += 1
                continue
            if isinstance(record, dict) and _redone(record, resume_step):
                dropped += 1
            else:
                kept.append(json.dumps(record) + "\n")
    if dropped:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        logging.info(
            "%s: dropped %d record(s) of steps redone after step %d", path, dropped, resume_step
        )
    return dropped


def records_at(path: str, step: int) -> list[dict]:
    """The records of `step` in metrics.jsonl (after `drop_redone_records`)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if isinstance(r, dict) and r.get("step") == step]
