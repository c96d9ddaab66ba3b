"""Reliability round 3 (issue 22): degenerate data files, predict mode's long horizons,
evaluate.py's whole output sets; each as the README's "Reliability" table says."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stlight_jax.training import loop as train
from tests import tiny_config
from tests.test_reliability import REPO, _half_state_dict, _run, assert_one_line_error


@pytest.fixture
def config(tmp_path):
    return tiny_config.get_config(tiny_config.write_data(str(tmp_path / "data.npz")))


@pytest.fixture
def weights(config, tmp_path) -> str:
    from safetensors.numpy import save_file

    path = str(tmp_path / "w.safetensors")
    save_file(_half_state_dict(config, np.float32), path)
    return path


# ---------------------------------------------------------------------------------------------
# Degenerate data.


def test_degenerate_data_is_one_line_before_training_in_train_and_predict(
    config, weights, tmp_path
):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    workdir = tmp_path / "run"
    proc = _run(["train.py"], f"--config=tests/tiny_config.py:{empty}", f"--workdir={workdir}")
    assert_one_line_error(proc, "train.py", f"{empty}: config.data.path is an empty file")
    assert not os.path.exists(workdir / "checkpoints")
    np.save(tmp_path / "complex.npy", np.full((1, 4, 16, 16, 1), 0.5 + 0j, np.complex64))
    predict = ["--mode=predict", f"--config=tests/tiny_config.py:{config.data.path}"]
    for name, needle in (
        ("empty.npy", f"{empty}: --input is an empty file (0 bytes)"),
        ("complex.npy", "complex.npy: input dtype complex64 is not supported"),
    ):
        proc = _run(
            ["evaluate.py"],
            *predict,
            f"--weights={weights}",
            f"--input={tmp_path / name}",
            f"--out={tmp_path / 'pred'}",
        )
        assert_one_line_error(proc, "evaluate.py", needle)
    assert not os.path.exists(tmp_path / "pred" / "predictions.npy")


def test_lone_npy_trains_and_scores_its_held_out_test_set(config, tmp_path):
    """configs/custom.py's usage, a lone .npy, ends with test metrics (its last num_val
    samples), instead of failing "no test samples" after every epoch."""
    with np.load(config.data.path) as z:
        lone = np.concatenate([z["train"], z["val"], z["test"]])  # 48 samples
    config.data.path = str(tmp_path / "lone.npy")
    np.save(config.data.path, lone)
    config.num_epochs = 1  # 48 - 8 test - 8 val = 32 training samples: 4 steps
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["model"]["num_samples"] == 8, result


# ---------------------------------------------------------------------------------------------
# evaluate.py's outputs: one whole set, or the previous one untouched.


def _listing(out) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}


def _leftovers(out) -> list[str]:
    return [e for e in os.listdir(out.parent) if e.startswith(f".{out.name}.") and "lock" not in e]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_evaluate_output_set_is_whole_after_a_full_disk_an_interrupt_or_a_second_run(
    config, weights, tmp_path, monkeypatch
):
    from stlight_jax.evaluation import runner as evaluation
    from stlight_jax.evaluation import output_set
    from stlight_jax.evaluation import visualize

    out = tmp_path / "look[1] é"  # any folder name works
    options = evaluation.EvalOptions(
        config=config, weights=weights, out=str(out), num_samples=1, save_arrays=True
    )
    first = evaluation.run(options)
    assert first["out"] == str(out) and sorted(os.listdir(out)) == sorted(
        ["metrics.json", "metrics_vs_lead_time.png", "sample_000.png", "sample_000.gif"]
        + ["inputs.npy", "targets.npy", "predictions.npy"]
    )
    before = _listing(out)
    options = dataclasses.replace(options, num_samples=2)

    def partial_gif(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"GIF89a")  # a partial file, then the disk is full
        _no_space()

    # A full disk names the file; nothing of the new set is left, the old one is whole.
    for target, name, fake in (
        (visualize, "save_gif", partial_gif),
        (evaluation, "write_json", _no_space),
        (os, "posix_fallocate", _no_space),
    ):
        with monkeypatch.context() as m:
            m.setattr(target, name, fake)
            with pytest.raises(OSError) as err:
                evaluation.run(options)
        msg = str(err.value)
        culprit = {"save_gif": "sample_000.gif", "write_json": "metrics.json"}.get(
            name, "inputs.npy"
        )
        assert f"cannot write {out / culprit}: No space left on device" in msg, msg
        assert f"{out} keeps its previous outputs" in msg and "\n" not in msg
        assert _listing(out) == before and not _leftovers(out), name

    # Ctrl-C part-way: the same.
    with monkeypatch.context() as m:
        m.setattr(visualize, "plot_lead_time", lambda *a, **k: _raise(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            evaluation.run(options)
    assert _listing(out) == before and not _leftovers(out)

    # A second evaluation into an --out being written stops at once, naming the holder.
    held = output_set._lock(str(out))  # as the first evaluation holds it
    try:
        with pytest.raises(output_set.OutputInUseError, match=r"is being written by another "):
            evaluation.run(options)
    finally:
        os.close(held)
    assert _listing(out) == before

    # A folder holding files evaluate.py does not write is not replaced: they stay.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    evaluation.run(dataclasses.replace(options, out=str(tmp_path / "mine")))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert (tmp_path / "mine" / "metrics.json").exists() and not _leftovers(tmp_path / "mine")

    # A run that completes replaces the whole set (two samples now, none stale).
    second = evaluation.run(options)
    assert "sample_001.gif" in os.listdir(out) and second["files"]["samples"][1]["gif"]
    assert not _leftovers(out)


def _raise(error):
    raise error


_OUT_HOLDER = """
import sys, time
from stlight_jax.evaluation import output_set
output_set._lock(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def test_evaluate_cli_ctrl_c_and_a_second_run_are_one_line_and_keep_the_previous_set(
    config, weights, tmp_path
):
    from stlight_jax.evaluation import runner as evaluation

    rng = np.random.default_rng(0)
    data = str(tmp_path / "big.npz")  # 2,000 test sequences: a pass long enough to interrupt
    np.savez(
        data,
        train=rng.random((16, 8, 16, 16, 1), dtype=np.float32),
        val=rng.random((8, 8, 16, 16, 1), dtype=np.float32),
        test=rng.random((2000, 8, 16, 16, 1), dtype=np.float32),
    )
    out = tmp_path / "look"
    cfg = tiny_config.get_config(data)
    evaluation.run(evaluation.EvalOptions(config=cfg, weights=weights, out=str(out)))
    before = _listing(out)
    args = [f"--config=tests/tiny_config.py:{data}", f"--weights={weights}", f"--out={out}"]

    holder = subprocess.Popen(
        [sys.executable, "-c", _OUT_HOLDER, str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_one_line_error(
            _run(["evaluate.py"], *args),
            "evaluate.py",
            f"--out {out} is being written by another evaluation (pid {holder.pid} on host",
        )
    finally:
        holder.kill()
        holder.wait()

    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    env.pop("STLIGHT_VERBOSE_ERRORS", None)
    proc = subprocess.Popen(
        [sys.executable, "evaluate.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not _leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the new set's temporary folder: the run is writing
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == (
        f"evaluate.py: interrupted; nothing written: {out} keeps its previous outputs, if any"
    )
    assert _listing(out) == before and not _leftovers(out)


# ---------------------------------------------------------------------------------------------
# Predict mode: long horizons stream to disk; pictures are capped.


def test_predict_long_horizon_streams_to_disk_memory_flat_pictures_capped(
    config, weights, tmp_path
):
    import tracemalloc

    from PIL import Image

    from stlight_jax.evaluation import predict
    from stlight_jax.weights.loading import load_model

    loaded = load_model(config, weights=weights)
    with np.load(config.data.path) as z:
        np.save(tmp_path / "in.npy", z["test"][:4, :4])
    peaks = {}
    for horizon in (8, 808):
        out = tmp_path / f"h{horizon}"
        predict.predict(loaded, str(tmp_path / "in.npy"), str(out), horizon, num_samples=1)
        tracemalloc.start()
        result = predict.predict(loaded, str(tmp_path / "in.npy"), str(out), horizon, num_samples=1)
        peaks[horizon] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # 808 frames of 4 sequences are 3.3 MB of predictions; memory holds one pass of them.
    assert peaks[808] - peaks[8] < 1_000_000, peaks
    saved = np.load(out / "predictions.npy")
    assert saved.shape == (4, 808, 16, 16, 1) and result["files"]["pictures_frames"] == 100
    whole, passes = predict.rollout(
        predict.make_predict_fn(loaded), np.load(tmp_path / "in.npy"), 808, 4, 4
    )
    np.testing.assert_array_equal(saved, whole)
    assert passes == result["forward_passes"] == 202
    with Image.open(out / "sequence_000.gif") as gif:
        assert gif.n_frames == 4 + 100  # the inputs, then the first 100 predicted frames
    assert "the first 100 of the 808 predicted frames" in " ".join(result["notes"])
    # A horizon the disk cannot hold is refused before any work, in one line.
    with pytest.raises(ValueError, match=r"--horizon=10000000000: predictions.npy would take"):
        predict.predict(loaded, str(tmp_path / "in.npy"), str(tmp_path / "huge"), 10**10)
    assert not os.path.exists(tmp_path / "huge")


# ---------------------------------------------------------------------------------------------
# A dead peer in a multi-process job.


@pytest.mark.slow  # two jax.distributed training processes on 2 cores: a minute or more
@pytest.mark.parametrize("victim", [1, 0], ids=["process_1_dies", "process_0_dies"])
def test_a_dead_peer_stops_the_survivor_in_one_line_naming_it_and_the_last_checkpoint(
    config, tmp_path, victim
):
    from stlight_jax import peers
    from tests.test_distributed import free_port

    port, workdir = free_port(), tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "STLIGHT_VERBOSE_ERRORS")}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    procs, logs = [], []
    for pid in (0, 1):
        logs.append(tmp_path / f"p{pid}.log")
        with open(logs[-1], "w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "train.py",
                        f"--config=tests/tiny_config.py:{config.data.path}",
                        f"--workdir={workdir}",
                        "--config.num_epochs=1000",
                        f"--coordinator_address=127.0.0.1:{port}",
                        "--num_processes=2",
                        f"--process_id={pid}",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        first = workdir / "checkpoints" / "4" / "stlight_sha256.json"
        deadline = time.monotonic() + 1200  # compiling took 5 min under a load of 19
        while not first.exists() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
            time.sleep(0.2)
        assert first.exists(), logs[0].read_text()[-3000:]
        procs[victim].kill()  # kill -9: no goodbye (process 0 also hosts the coordinator)
        killed = time.monotonic()
        survivor = 1 - victim
        rc = procs[survivor].wait(timeout=120)
        took = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    text = logs[survivor].read_text()
    assert rc == peers.EXIT_PEER_LOST, text[-3000:]
    assert took < peers.LOST_AFTER_S + 20, took
    for noise in ("Traceback", "Fatal Python error", "Check failure", "terminate called"):
        assert noise not in text, text[-3000:]
    errors = [ln for ln in text.splitlines() if ln.startswith("train.py: error:")]
    assert len(errors) == 1 and text.rstrip().endswith(errors[0]), text[-3000:]
    assert f"lost process {victim} of 2: no sign of life for 15 s" in errors[0]
    assert f"process {survivor} stops too" in errors[0]
    assert "the last complete checkpoint is step " in errors[0]
    assert f"in {workdir / 'checkpoints'}; rerun the same command" in errors[0]
