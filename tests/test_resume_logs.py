"""After a resume, metrics.jsonl and TensorBoard hold each step once (resume_logs.py)."""

from __future__ import annotations

import glob
import os

import pytest

from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.training import loop as train
from tests.test_train import read_jsonl, train_steps


def _tensorboard_steps(workdir: str) -> dict[str, list[int]]:
    """Steps per scalar tag as TensorBoard shows them (it applies the purge events)."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="reading event files as TensorBoard does needs the tensorboard package",
    )
    acc = accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow  # three training runs: ~20 s on 2 cores
def test_steps_redone_after_a_resume_are_logged_once(config, tmp_path):
    workdir = str(tmp_path / "run")
    config.num_epochs = 1
    config.checkpoint_every_steps = 2
    train.train_and_evaluate(config, workdir)
    # Damage step 4 (its biggest array chunk): the rerun sets it aside, resumes at step 2 and
    # trains, validates and tests steps 3-4 again.
    chunks = glob.glob(
        os.path.join(checkpoint.checkpoint_dir(workdir), "4", "state", "*", "d", "*")
    )
    with open(max(chunks, key=os.path.getsize), "r+b") as f:
        f.seek(100)
        f.write(bytes(200))
    train.train_and_evaluate(config, workdir)
    records = read_jsonl(workdir)
    assert {"step": 2, "resumed_from_step": 2} in records
    # And once more with nothing left to train: only the test pass is redone.
    train.train_and_evaluate(config, workdir)

    records = read_jsonl(workdir)
    assert train_steps(records) == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_mse" in r] == [4]
    assert [r["step"] for r in records if "test_mse" in r] == [4]
    tb = _tensorboard_steps(workdir)
    assert tb["train_loss"] == [1, 2, 3, 4] and tb["val_mse"] == [4] and tb["test_mse"] == [4]
