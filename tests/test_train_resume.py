"""Exact resume: a run SIGKILLed after step 7 and rerun ends bit-identical to a straight run."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from stlight_jax.checkpoints import manager as checkpoint
from tests import tiny_config
from tests.test_train import abstract_state, read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs the tiny config for 3 epochs (12 steps) with a checkpoint every 3 steps (and at each
# epoch end); with KILL_AT > 0 it SIGKILLs itself when asked for batch KILL_AT + 1, i.e. with
# steps 1..KILL_AT done and the last checkpoint at step 6.
WORKER = """
import os, signal, sys
from stlight_jax import data
from stlight_jax.training import loop as train
from tests import tiny_config

data_path, workdir, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = tiny_config.get_config(data_path)
config.num_epochs = 3
config.checkpoint_every_steps = 3

if kill_at:
    make = data.create_train_iterator

    class Killer:
        def __init__(self, it):
            self.it, self.n = it, 0

        def __next__(self):
            if self.n == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            self.n += 1
            return next(self.it)

        def get_state(self):
            return self.it.get_state()

        def set_state(self, state):
            self.it.set_state(state)

        def close(self):
            self.it.close()

    data.create_train_iterator = lambda *a, **k: Killer(make(*a, **k))
train.train_and_evaluate(config, workdir)
"""


def start(tmp_path, workdir, kill_at):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    log = open(tmp_path / f"{os.path.basename(workdir)}_{kill_at}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "data.npz"), workdir, str(kill_at)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=log,
    )


def wait(proc, timeout=120):
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def final_state(config, workdir):
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    try:
        assert manager.latest_step() == 12
        state, data_state = checkpoint.restore(manager, 12, abstract_state(config))
    finally:
        manager.close()
    return state, data_state


@pytest.mark.slow  # a killed run, its rerun and a straight run: ~80 s on 2 cores
def test_sigkill_and_rerun_is_bit_identical(tmp_path):
    config = tiny_config.get_config(tiny_config.write_data(str(tmp_path / "data.npz")))
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    # The straight run and the run to be killed go side by side (2 cores).
    p_straight, p_killed = start(tmp_path, straight, 0), start(tmp_path, killed, 7)
    assert wait(p_killed) == -9
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(killed), read_only=True)
    assert manager.latest_step() == 6  # steps 7.. were trained but never saved
    manager.close()
    assert [r["step"] for r in read_jsonl(killed) if "train_loss" in r][-1] == 7
    assert wait(start(tmp_path, killed, 0)) == 0
    assert wait(p_straight) == 0

    assert {"step": 6, "resumed_from_step": 6} in read_jsonl(killed)
    want, want_data = final_state(config, straight)
    got, got_data = final_state(config, killed)
    assert got_data == want_data
    flat_want, tree_want = jax.tree.flatten(want)
    flat_got, tree_got = jax.tree.flatten(got)
    assert tree_got == tree_want
    for a, b in zip(flat_got, flat_want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit-identical
    # The losses of the steps redone after the kill match the straight run's exactly.
    losses = {}
    for name in ("straight", "killed"):
        for r in read_jsonl(str(tmp_path / name)):
            if "train_loss" in r:
                losses[name, r["step"]] = r["train_loss"]
    assert all(losses["killed", s] == losses["straight", s] for s in range(7, 13))
