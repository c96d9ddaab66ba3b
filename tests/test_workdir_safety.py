"""Reliability round 3 (issue 22), the workdir: a rerun of another experiment stops before
touching it; any path works as a workdir or --out; `--step=latest` survives a training run
removing steps; a quiet start. Each as the README's "Reliability" table says."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.checkpoints import weights_only
from stlight_jax.config import files as config_io
from stlight_jax.training import loop as train
from tests import tiny_config
from tests.cli_runs import REPO, assert_one_line_error, run_script
from tests.test_train import read_jsonl, train_steps


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (checkpoints at steps 4 and 8, test_metrics.json); tests change
    copies of it."""
    root = tmp_path_factory.mktemp("finished")
    config = tiny_config.get_config(tiny_config.write_data(str(root / "data.npz")))
    train.train_and_evaluate(config, str(root / "run"))
    return config, str(root / "run")


def _snapshot(workdir: str) -> dict[str, str]:
    """SHA-256 of every file in `workdir` (the lock file aside) by relative path."""
    out = {}
    for dirpath, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(dirpath, name)
            if name != ".lock":
                with open(path, "rb") as f:
                    out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------
# A rerun of another experiment.


def test_experiment_changes_name_each_field_and_skip_resume_safe_settings(finished_run):
    config, workdir = finished_run
    with open(os.path.join(workdir, config_io.CONFIG_FILE)) as f:
        saved = json.load(f)
    assert config_io.experiment_changes(saved, config) == []
    changed = config.copy_and_resolve_references()
    changed.model.dilation = 1
    changed.model.skip = "none"
    changed.num_epochs = 3
    changed.optimizer.learning_rate = 1e-3
    for field in config_io.RESUME_SAFE_FIELDS:  # none of these is reported
        section, _, key = field.rpartition(".")
        node = changed[section] if section else changed
        value = node[key]
        node[key] = "lax" if key == "conv_impl" else value + "x" if key == "name" else value + 1
    assert config_io.experiment_changes(saved, changed) == [
        "config.model.dilation: 3 -> 1",
        'config.model.skip: "thirds" -> "none"',
        "config.num_epochs: 2 -> 3",
        "config.optimizer.learning_rate: 0.01 -> 0.001",
    ]
    # A field an older run's config.json lacks compares as its default; one this code no
    # longer has is left out.
    del saved["model"]["skip"]
    saved["model"]["retired_field"] = 1
    assert config_io.experiment_changes(saved, config) == []
    assert (
        config_io.experiment_changes(saved, changed)[1] == 'config.model.skip: "thirds" -> "none"'
    )


@pytest.mark.slow  # several train.py runs: ~45 s on 2 cores
def test_rerun_of_another_experiment_stops_before_touching_the_workdir(finished_run, tmp_path):
    config, original = finished_run
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)
    before = _snapshot(workdir)
    base = [f"--config=tests/tiny_config.py:{config.data.path}", f"--workdir={workdir}"]
    proc = run_script(["train.py"], *base, "--config.model.dim=32", "--config.optimizer.b2=0.99")
    assert_one_line_error(
        proc,
        "train.py",
        f"workdir {workdir} holds a run of another experiment",
        "config.model.dim: 16 -> 32",
        "config.optimizer.b2: 0.999 -> 0.99",
        "give a new --workdir",
    )
    # The change that used to load the other architecture's weights silently.
    proc = run_script(["train.py"], *base, "--config.model.dilation=1")
    assert_one_line_error(proc, "train.py", "config.model.dilation: 3 -> 1")
    assert _snapshot(workdir) == before  # checkpoints, metrics, config and results untouched
    assert not os.path.exists(os.path.join(workdir, checkpoint.UNREADABLE_DIR))

    # Settings that do not change the experiment resume (the finished run: its test pass).
    proc = run_script(
        ["train.py"],
        *base,
        "--config.log_every_steps=3",
        "--config.eval_every_epochs=2",
        "--config.checkpoint_every_steps=5",
        "--config.data.read_threads=2",
        "--config.data.prefetch_buffer_size=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resuming from {workdir}/checkpoints at step 8" in proc.stderr
    assert "unreadable" not in proc.stderr
    assert {"step": 8, "resumed_from_step": 8} in read_jsonl(workdir)
    with open(os.path.join(workdir, config_io.CONFIG_FILE)) as f:
        assert json.load(f)["log_every_steps"] == 3


# ---------------------------------------------------------------------------------------------
# Any path as a workdir or --out.

ODD_NAME = "lr[1e-3] a\\b ñ漢 *?"  # brackets, a backslash, spaces, non-ASCII, glob characters


@pytest.mark.slow  # train.py killed, resumed, then evaluate.py: ~90 s on 2 cores
def test_any_path_works_as_workdir_and_out_through_kill_resume_and_evaluate(tmp_path):
    data_path = tiny_config.write_data(str(tmp_path / "data.npz"))
    workdir = str(tmp_path / "runs" / ODD_NAME)
    args = [
        f"--config=tests/tiny_config.py:{data_path}",
        f"--workdir={workdir}",
        "--config.num_epochs=30",  # 120 steps: the signal lands mid-training
        "--config.eval_every_epochs=15",
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    log = open(tmp_path / "first.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            metrics = os.path.join(workdir, "metrics.jsonl")
            if os.path.exists(metrics) and train_steps(read_jsonl(workdir)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before the signal"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    first = log.read()
    stopped = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert 0 < stopped < 120, first[-3000:]

    proc = run_script(["train.py"], *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resuming from {workdir}/checkpoints at step {stopped}" in proc.stderr
    for text in (first, proc.stderr):
        assert "unreadable" not in text and "Traceback" not in text, text[-3000:]
    assert not os.path.exists(os.path.join(workdir, checkpoint.UNREADABLE_DIR))
    assert train_steps(read_jsonl(workdir))[-1] == 120
    assert os.path.exists(os.path.join(workdir, "test_metrics.json"))

    out = str(tmp_path / "eval" / ODD_NAME)
    proc = run_script(["evaluate.py"], f"--workdir={workdir}", f"--out={out}", "--step=latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["checkpoint"]["step"] == 120


# ---------------------------------------------------------------------------------------------
# --step=latest while a training run removes steps.


def test_a_step_removed_while_it_is_read_is_chosen_again(finished_run, tmp_path, monkeypatch):
    config, original = finished_run
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)
    params, batch_stats = _model_target(config)
    restore = weights_only._restore_partial

    def removed_mid_read(manager, step, target):
        # What a training run saving here does to its oldest kept step, mid-read.
        shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
        return restore(manager, step, target)

    monkeypatch.setattr(weights_only, "_restore_partial", removed_mid_read)
    with pytest.raises(ValueError, match=r"has no step 8; it has \[4\]$"):
        weights_only.restore_weights(workdir, params, batch_stats, step=8)  # asked for by number

    shutil.rmtree(workdir)
    shutil.copytree(original, workdir)
    calls = []

    def removed_once(manager, step, target):
        calls.append(step)
        if len(calls) == 1:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
        return restore(manager, step, target)

    monkeypatch.setattr(weights_only, "_restore_partial", removed_once)
    _, _, step = weights_only.restore_weights(workdir, params, batch_stats, step="latest")
    assert calls == [8, 4] and step == 4  # the newest complete step left


def _model_target(config):
    from flax import nnx

    from stlight_jax.models import create_model

    model = create_model(config_io.model_config(config), seed=0)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return params, batch_stats


# ---------------------------------------------------------------------------------------------
# A quiet start.


@pytest.mark.slow  # an evaluate.py run: ~30 s on 2 cores
def test_quiet_start_no_tpu_line_and_no_orbax_read_only_warnings(finished_run, tmp_path, caplog):
    config, workdir = finished_run
    # JAX_PLATFORMS unset: JAX tries every backend it knows, the TPU one included.
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"--workdir={workdir}", f"--out={tmp_path / 'out'}"],
        cwd=REPO,
        env={**env, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("Unable to initialize backend", "read only", "read_only"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    # Loading from Python (stlight_jax.load, evaluation): no Orbax notes either.
    caplog.set_level(logging.WARNING)
    params, batch_stats = _model_target(config)
    weights_only.restore_weights(workdir, params, batch_stats, step="latest")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
