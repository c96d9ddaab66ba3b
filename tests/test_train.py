"""End to end `train_and_evaluate` on a tiny config: outputs and resume; train.py overrides."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from stlight_jax import data, steps
from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.training import loop as train
from stlight_jax.training import optimizer as optim
from stlight_jax.training import schedules
from tests import tiny_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_jsonl(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_steps(records) -> list[int]:
    return [r["step"] for r in records if "train_loss" in r]


def abstract_state(config):
    tx = optim.create_optimizer(
        config, schedules.create_schedules(config, data.steps_per_epoch(config))
    )
    _, state = steps.create_train_state(config, tx)
    return checkpoint.abstract_like(state)


def test_end_to_end_writes_everything_and_resumes(config, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    config.num_epochs = 2

    def stop_after_step_4(run, step, log_every):  # as a SIGTERM during step 4 would
        if step == 4:
            run.stop.received = signal.SIGTERM
        return run.stop.received is not None

    monkeypatch.setattr(train, "_stop_requested", stop_after_step_4)
    first = train.train_and_evaluate(config, workdir)
    monkeypatch.undo()
    assert first == {"interrupted_at_step": 4}  # 32 samples / batch 8 = 4 steps an epoch
    assert train_steps(read_jsonl(workdir)) == [1, 2, 3, 4]

    result = train.train_and_evaluate(config, workdir)
    records = read_jsonl(workdir)
    # Resumed at step 4: steps 1-4 are not trained again, 5-8 follow.
    assert {"step": 4, "resumed_from_step": 4} in records
    assert train_steps(records) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r["step"] for r in records if "val_mse" in r] == [4, 8]

    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["num_epochs"] == 2
    # Paths are saved absolute so evaluate.py works from any working directory.
    assert os.path.isabs(saved["data"]["data_dir"]) and os.path.isabs(saved["data"]["path"])
    with open(os.path.join(workdir, "test_metrics.json")) as f:
        test = json.load(f)
    for name in ("model", "zeros", "last_frame"):
        assert {"mse", "mae", "ssim", "psnr"} <= set(test[name])
        assert test[name]["num_samples"] == 8
        assert np.isfinite(test[name]["mse"]) and test[name]["mse"] > 0
    assert test["model"]["mse"] == pytest.approx(result["model"]["mse"])
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))

    # The test set was evaluated on the best-validation step, found from metrics saved on
    # disk (run 2 did not see epoch 1's validation in memory) and kept by BestN.
    vals = {r["step"]: r["val_mse"] for r in records if "val_mse" in r}
    best = min(vals, key=vals.get)
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    assert checkpoint.best_step(manager) == best == result["checkpoint_step"]
    assert set(manager.all_steps()) == {4, 8}
    manager.close()

    # A third call with nothing left to train restarts nothing and re-tests the same step.
    again = train.train_and_evaluate(config, workdir)
    assert train_steps(read_jsonl(workdir)) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert again["model"]["mse"] == pytest.approx(result["model"]["mse"])


def run_cli(args, timeout, **kw):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def test_cli_misspelled_override_fails(config):
    proc = run_cli(
        [
            f"--config=tests/tiny_config.py:{config.data.path}",
            "--workdir=/nonexistent/never",
            "--config.optimizer.learnig_rate=1e-3",
        ],
        timeout=60,
    )
    assert proc.returncode != 0
    assert "learnig_rate" in proc.stderr


def test_training_loss_adds_the_weighted_mean_absolute_error_to_the_papers_mse():
    """config.l1_weight: 0 is the paper's element-mean MSE; w adds w * element-mean |error|, and
    the jitted train step reports (and differentiates) exactly that loss."""
    import jax
    import optax
    from flax import nnx

    from stlight_jax import sharding
    from stlight_jax.models import ModelConfig, create_model

    err = np.random.default_rng(1).normal(size=(2, 3, 4, 4, 1)).astype(np.float32)
    mse, mae = np.mean(err**2), np.mean(np.abs(err))
    assert np.isclose(float(steps.training_loss(err)), mse, rtol=1e-6)
    assert np.isclose(float(steps.training_loss(err, 0.3)), mse + 0.3 * mae, rtol=1e-6)

    cfg = ModelConfig(frames_in=2, frames_out=2, image_size=(8, 8), dim=8, depth=1, patch=2)
    model = create_model(cfg, seed=0)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    rng = np.random.default_rng(2)
    x = rng.random((2, 2, 8, 8, 1), dtype=np.float32)
    y = rng.random((2, 2, 8, 8, 1), dtype=np.float32)
    pred, _ = steps.apply_model(graphdef, params, stats, x, train=True)
    err = np.asarray(pred) - y
    tx = optax.sgd(0.0)
    mesh = sharding.create_mesh(jax.devices()[:1])
    for weight in (0.0, 0.5):
        _, state = steps.split_model(create_model(cfg, seed=0), tx)
        step = steps.create_train_step(graphdef, tx, lambda s: 0.0, mesh, l1_weight=weight)
        batch = sharding.global_batch({"inputs": x, "targets": y}, mesh)
        _, out = step(sharding.replicate(state, mesh), batch)
        want = np.mean(err**2) + weight * np.mean(np.abs(err))
        assert np.isclose(float(out["loss"]), want, rtol=1e-5), (weight, out["loss"], want)


def _first_step_loss(config, init_from: str | None) -> float:
    """The loss of train.py's first step from `init_from`'s weights (None: a fresh init),
    computed here with the same train step on the same first batch."""
    from stlight_jax import sharding
    from stlight_jax.weights import loading as weights

    scheds = schedules.create_schedules(config, data.steps_per_epoch(config))
    tx = optim.create_optimizer(config, scheds)
    graphdef, state = steps.create_train_state(config, tx)
    if init_from:
        params, stats, _ = weights.load_init_from(
            init_from, graphdef, state["params"], state["batch_stats"]
        )
        state = {**state, "params": params, "batch_stats": stats, "opt_state": tx.init(params)}
    mesh = sharding.create_mesh(jax.devices()[:1])
    step = steps.create_train_step(graphdef, tx, scheds.lr, mesh)
    it = data.create_train_iterator(config)
    _, metrics = step(jax.device_put(state), sharding.global_batch(next(it), mesh))
    it.close()
    return float(metrics["loss"])


@pytest.mark.slow  # train.py and a resumed run: ~30 s on 2 cores
def test_bfloat16_init_from_trains_in_float32_and_resumes(config, tmp_path):
    """train.py --config.init_from= a bfloat16 .safetensors: training starts from those
    weights (its first loss is theirs, not a fresh init's); params, BN stats and Adam state
    are float32, so the next rerun restores the checkpoint instead of starting over."""
    from safetensors.numpy import save_file

    weights = str(tmp_path / "half.safetensors")
    save_file(tiny_weights.state_dict(config, ml_dtypes.bfloat16), weights)
    workdir = str(tmp_path / "run")
    args = [
        f"--config=tests/tiny_config.py:{config.data.path}",
        f"--workdir={workdir}",
        f"--config.init_from={weights}",
        "--config.num_epochs=1",
    ]
    proc = run_cli(args, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Initialised from PyTorch weights {weights}" in proc.stderr, proc.stderr[-3000:]
    first = next(r["train_loss"] for r in read_jsonl(workdir) if "train_loss" in r)
    imported, fresh = _first_step_loss(config, weights), _first_step_loss(config, None)
    assert first == pytest.approx(imported, rel=1e-6)
    assert abs(first - fresh) > 1e-3 * fresh, (first, fresh)
    config.init_from = weights
    config.num_epochs = 1

    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    restored = checkpoint.restore_latest_readable(manager, abstract_state(config))
    manager.close()
    assert restored is not None and restored[0] == 4
    assert tiny_weights.floating_dtypes(restored[1]) == {np.dtype(np.float32)}

    # The same command again (the same experiment): it restores step 4 rather than setting it
    # aside and training from init_from again.
    train.train_and_evaluate(config, workdir)
    records = read_jsonl(workdir)
    assert {"step": 4, "resumed_from_step": 4} in records
    assert train_steps(records) == [1, 2, 3, 4]
    assert not os.path.exists(os.path.join(workdir, checkpoint.UNREADABLE_DIR))
