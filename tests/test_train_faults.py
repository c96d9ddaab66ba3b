"""Faults in training: non-finite loss, corrupted checkpoints, SIGTERM through train.py."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from stlight_jax import data
from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.training import loop as train
from stlight_jax.training import run_parts
from tests.cli_runs import run_script
from tests.test_train import abstract_state, read_jsonl, run_cli, train_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(config, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    config.checkpoint_every_steps = 1
    make_iter = data.create_train_iterator

    class NaNAtThirdBatch:
        def __init__(self, it):
            self.it, self.n = it, 0

        def __next__(self):
            batch = next(self.it)
            self.n += 1
            if self.n == 3:
                batch = {**batch, "inputs": batch["inputs"].copy()}
                batch["inputs"][0, 0, 0, 0, 0] = np.nan
            return batch

        def get_state(self):
            return self.it.get_state()

        def set_state(self, s):
            self.it.set_state(s)

        def close(self):
            self.it.close()

    monkeypatch.setattr(
        data, "create_train_iterator", lambda *a, **k: NaNAtThirdBatch(make_iter(*a, **k))
    )
    with pytest.raises(run_parts.NonFiniteLossError, match=r"at step 3;.* is step 2 "):
        train.train_and_evaluate(config, workdir)

    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir))
    assert manager.latest_step() == 2
    step, state, _ = checkpoint.restore_latest_readable(manager, abstract_state(config))
    manager.close()
    assert step == 2 and int(state["step"]) == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_non_finite_parameters_stop_and_keep_last_good_checkpoint(config, tmp_path, monkeypatch):
    """A finite loss but an update that leaves Inf/NaN weights: a learning rate of Inf for the
    third update (0-based 2). Its loss is that of the finite weights before it; the check of
    the updated parameters stops the run, and step 3 is never saved."""
    from stlight_jax.training import schedules

    workdir = str(tmp_path / "run")
    config.checkpoint_every_steps = 1
    make = schedules.create_schedules

    def inf_lr_at_update_2(*args, **kwargs):
        s = make(*args, **kwargs)
        lr = s.lr
        return s._replace(lr=lambda k: jax.numpy.where(k == 2, jax.numpy.inf, lr(k)))

    monkeypatch.setattr(schedules, "create_schedules", inf_lr_at_update_2)
    with pytest.raises(
        run_parts.NonFiniteLossError,
        match=r"non-finite parameters \(after the update\) at step 3;.* is step 2 ",
    ):
        train.train_and_evaluate(config, workdir)
    losses = [r["train_loss"] for r in read_jsonl(workdir) if "train_loss" in r]
    assert len(losses) <= 2 and np.isfinite(losses).all()  # step 3's loss is never logged
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir))
    assert manager.latest_step() == 2
    step, state, _ = checkpoint.restore_latest_readable(manager, abstract_state(config))
    manager.close()
    assert step == 2 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_huge_learning_rate_is_caught(config, tmp_path):
    config.optimizer.learning_rate = 1e30
    with pytest.raises(run_parts.NonFiniteLossError, match=r"at step \d+"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_corrupted_latest_checkpoint_is_skipped(config, tmp_path, caplog):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    ckpt = checkpoint.checkpoint_dir(workdir)
    # Garble bytes inside the biggest data file of the newest step: Orbax reads it back
    # without error (no checksums), so only the saved digests can tell.
    chunks = glob.glob(os.path.join(ckpt, "8", "state", "ocdbt.process_0", "d", "*"))
    biggest = max(chunks, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.seek(100)
        f.write(bytes(200))

    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(config, workdir)
    assert "checkpoint at step 8" in caplog.text and "unreadable" in caplog.text
    records = read_jsonl(workdir)
    assert {"step": 4, "resumed_from_step": 4} in records
    assert train_steps(records)[-4:] == [5, 6, 7, 8]  # steps 5-8 trained again, step 8 saved
    assert len(glob.glob(os.path.join(workdir, checkpoint.UNREADABLE_DIR, "8.*"))) == 1

    # Now truncate a file of the new step 8: the restore itself fails.
    chunks = glob.glob(os.path.join(ckpt, "8", "state", "ocdbt.process_0", "d", "*"))
    biggest = max(chunks, key=os.path.getsize)
    os.truncate(biggest, os.path.getsize(biggest) // 2)
    manager = checkpoint.create_manager(ckpt)
    warnings = []
    step, state, data_state = checkpoint.restore_latest_readable(
        manager, abstract_state(config), log=warnings.append
    )
    manager.close()
    assert step == 4 and int(state["step"]) == 4 and data_state
    assert "step 8" in warnings[0]


@pytest.mark.slow  # train.py stopped and rerun: ~75 s on 2 cores
def test_cli_sigterm_saves_exits_cleanly_and_rerun_completes(config, tmp_path):
    workdir = str(tmp_path / "run")
    args = [
        f"--config=tests/tiny_config.py:{config.data.path}",
        f"--workdir={workdir}",
        "--config.optimizer.learning_rate=1e-3",
        "--config.num_epochs=30",  # 120 steps: seconds, so the signal lands mid-training
        "--config.eval_every_epochs=15",
        "--config.log_every_steps=1",  # metrics.jsonl shows the first step at once
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    log = open(tmp_path / "log1.txt", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.time() + 60
        metrics = os.path.join(workdir, "metrics.jsonl")
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(metrics) and train_steps(read_jsonl(workdir)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before the signal"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    text = log.read()
    assert rc == 0, text[-3000:]
    # Mostly lands mid-training; a slow machine can let it reach the step-60 validation.
    assert re.search(r"signal 15 received( during validation)?: saved step", text), text[-3000:]
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    stopped = manager.latest_step()
    manager.close()
    assert 0 < stopped < 120
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["optimizer"]["learning_rate"] == 1e-3  # the override took effect
    assert not os.path.exists(os.path.join(workdir, "test_metrics.json"))

    proc = run_cli(args, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(workdir)
    assert {"step": stopped, "resumed_from_step": stopped} in records
    assert train_steps(records)[-1] == 120
    assert os.path.exists(os.path.join(workdir, "test_metrics.json"))


def _start_train(args, log_path):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    log = open(log_path, "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=log, stderr=log
    )
    return proc, log


def _wait_for(predicate, proc, what, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"{what}: not seen (exit status {proc.poll()})")


@pytest.mark.slow  # two train.py runs
def test_cli_ctrl_c_saves_and_exits_0_a_second_ctrl_c_stops_at_once(config, tmp_path):
    """SIGINT as a terminal's Ctrl-C sends it. Once: said at once, a checkpoint after the
    current step, exit 0. In the rerun, twice (the second after the first was said): the
    program stops at once (KeyboardInterrupt, a non-zero exit), without waiting for the
    checkpoint or the test pass, and the workdir still holds a readable checkpoint at least as
    new as the first run's."""
    workdir = str(tmp_path / "run")
    metrics = os.path.join(workdir, "metrics.jsonl")
    args = [
        f"--config=tests/tiny_config.py:{config.data.path}",
        f"--workdir={workdir}",
        "--config.num_epochs=30",  # 120 steps: the signals land mid-training
        "--config.eval_every_epochs=15",
        "--config.log_every_steps=1",
    ]

    def trained_past(step):
        return lambda: os.path.exists(metrics) and train_steps(read_jsonl(workdir))[-1:] > [step]

    proc, log = _start_train(args, tmp_path / "log1.txt")
    try:
        _wait_for(trained_past(0), proc, "a first training step")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    text = log.read()
    assert rc == 0, text[-3000:]
    assert "signal 2 received: stopping after the current step" in text, text[-3000:]
    assert re.search(r"signal 2 received( during validation)?: saved step", text), text[-3000:]
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    first = manager.latest_step()
    manager.close()
    assert 0 < first < 120

    proc, log = _start_train(args, tmp_path / "log2.txt")
    try:
        _wait_for(trained_past(first), proc, "a step of the rerun")
        proc.send_signal(signal.SIGINT)
        said = lambda: "signal 2 received" in (tmp_path / "log2.txt").read_text()
        _wait_for(said, proc, "the first Ctrl-C")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    text = log.read()
    assert rc != 0 and "KeyboardInterrupt" in text, text[-3000:]
    assert not os.path.exists(os.path.join(workdir, "test_metrics.json"))
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    restored = checkpoint.restore_latest_readable(manager, abstract_state(config))
    manager.close()
    assert restored is not None and first <= restored[0] < 120


@pytest.mark.slow  # train.py stopped and rerun: ~50 s each on 2 cores
@pytest.mark.parametrize("phase", ["validation", "the test pass"])
def test_sigterm_during_an_evaluation_pass_saves_exits_0_and_the_rerun_redoes_it(tmp_path, phase):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "data.npz")
    # 2,000 validation and test sequences (250 batches each): passes that last long enough
    # for the signal to land inside them.
    np.savez(
        path,
        train=rng.random((32, 8, 16, 16, 1), dtype=np.float32),
        val=rng.random((2000, 8, 16, 16, 1), dtype=np.float32),
        test=rng.random((2000, 8, 16, 16, 1), dtype=np.float32),
    )
    workdir = str(tmp_path / "run")
    args = [
        f"--config=tests/tiny_config.py:{path}",
        f"--workdir={workdir}",
        "--config.num_epochs=1",
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            text = log_path.read_text()
            # Logged once the loop has checked for a signal after step 4 (the epoch's end); a
            # signal sent on the train loss record alone could land before that check.
            if phase == "validation" and "step 4: validating" in text:
                break
            if phase == "the test pass" and "val MSE" in text:  # logged before the test pass
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before the signal"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text()
    assert rc == 0, text[-3000:]
    assert "signal 15 received: stopping after the current step or evaluation batch" in text
    assert f"signal 15 received during {phase}" in text, text[-3000:]
    assert not os.path.exists(os.path.join(workdir, "test_metrics.json"))
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    assert manager.latest_step() == 4
    val_saved = checkpoint.VAL_METRIC in (manager.metrics(4) or {})
    manager.close()
    assert val_saved == (phase == "the test pass")

    proc = run_script(["train.py"], *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(workdir)
    assert train_steps(records) == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_mse" in r] == [4]
    assert [r["step"] for r in records if "test_mse" in r] == [4]
    with open(os.path.join(workdir, "test_metrics.json")) as f:
        assert json.load(f)["checkpoint_step"] == 4
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    assert checkpoint.best_step(manager) == 4
    manager.close()
