"""evaluate.py in two jax.distributed CPU processes writes what one process writes.

A tiny workdir is trained here; eval mode (pictures and --save_arrays) and predict mode (an
autoregressive rollout) then run as one `evaluate.py` process and as two over loopback (gloo
collectives, as in test_distributed.py), and the outputs are compared file by file: the same
names, the same arrays, the same pixels, the same metrics up to float32 summation order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageSequence

from tests import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TEST = 10  # global eval batches of 4 (2 a process): the third is half padding, all of it
# in process 1's share
EVAL_BATCH = 4
NUM_PICTURES = 5  # spans the first two global batches and both processes' rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_evaluate(
    tmp_path, name: str, args: list[str], processes: int, check: bool = True, timeout: int = 240
) -> list[tuple[int, str]]:
    """`evaluate.py args --out=<tmp>/<name>_<pid>` as one process or a cluster of several,
    each with one CPU device (the reference runs on the CPU too, whatever this machine has).
    An arg may be a list: one value per process. Returns each process's (exit code, log)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")  # gloo is jax's default CPU collectives
    port = free_port()
    procs, logs = [], []
    for pid in range(processes):
        cluster = [
            f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={processes}",
            f"--process_id={pid}",
        ]
        log = tmp_path / f"{name}_{pid}.log"
        logs.append(log)
        with open(log, "w") as f:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        os.path.join(REPO, "evaluate.py"),
                        *(a if isinstance(a, str) else a[pid] for a in args),
                        f"--out={tmp_path / f'{name}_{pid}'}",
                        *(cluster if processes > 1 else []),
                    ],
                    cwd=tmp_path,
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        results = [
            (proc.wait(timeout=timeout), log.read_text())
            for proc, log in zip(procs, logs, strict=True)
        ]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rc, log in results:
        assert rc == 0 or not check, log[-3000:]
    return results


def pixels(path) -> list[np.ndarray]:
    with Image.open(path) as img:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(img)]


def assert_close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            assert_close(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_close(a, b, f"{where}[{k}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6), where
    else:
        assert got == want, where


def assert_same_outputs(got_dir, want_dir) -> None:
    names = sorted(os.listdir(want_dir))
    assert sorted(os.listdir(got_dir)) == names
    for name in names:
        got, want = os.path.join(got_dir, name), os.path.join(want_dir, name)
        if name.endswith(".npy"):
            g, w = np.load(got), np.load(want)
            assert g.shape == w.shape and g.dtype == w.dtype, name
            # Each sequence's forward pass is the same computation on 1 or 2 devices.
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-6, err_msg=name)
        elif name.endswith((".png", ".gif")):
            g, w = pixels(got), pixels(want)
            assert len(g) == len(w), name
            for k, (a, b) in enumerate(zip(g, w, strict=True)):
                if name == "metrics_vs_lead_time.png":
                    # The plotted metrics are equal only up to float32 summation order (see
                    # below), which can move a line's anti-aliasing by one level here and there.
                    diff = np.abs(a.astype(int) - b.astype(int))
                    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, name
                else:
                    np.testing.assert_array_equal(a, b, err_msg=f"{name} frame {k}")
        else:
            with open(got) as f:
                g = json.load(f)
            with open(want) as f:
                w = json.load(f)
            assert g.pop("out") == os.path.abspath(got_dir) and w.pop("out")
            if "metrics" in w:
                # Sums over the split's frames in another order: float32 rounding apart.
                assert_close(g.pop("metrics"), w.pop("metrics"), name)
            assert g == w, name


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    from stlight_jax.training.loop import train_and_evaluate

    root = tmp_path_factory.mktemp("multihost_eval")
    path = tiny_config.write_data(str(root / "data.npz"))
    parts = dict(np.load(path))
    parts["test"] = np.concatenate([parts["test"], parts["val"][: NUM_TEST - 8]])
    np.savez(path, **parts)
    config = tiny_config.get_config(path)
    config.num_epochs = 1
    config.data.eval_batch_size = EVAL_BATCH
    run = str(root / "run")
    train_and_evaluate(config, run)
    return run


@pytest.mark.slow  # about 30 s on 2 cores: four evaluate.py runs, two of them 2 processes
def test_two_processes_write_what_one_writes(workdir, tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 4, 16, 16, 1), dtype=np.uint8)  # tiny: frames_in 4
    np.save(tmp_path / "frames.npy", frames)
    eval_args = [f"--workdir={workdir}", f"--num_samples={NUM_PICTURES}", "--save_arrays"]
    predict_args = [
        f"--workdir={workdir}",
        "--mode=predict",
        f"--input={tmp_path / 'frames.npy'}",
        "--horizon=6",  # two passes of frames_out=4: the second is fed predictions
        "--num_samples=2",
    ]

    run_evaluate(tmp_path, "eval_one", eval_args, processes=1)
    run_evaluate(tmp_path, "eval_two", eval_args, processes=2)
    assert_same_outputs(tmp_path / "eval_two_0", tmp_path / "eval_one_0")
    assert not os.path.exists(tmp_path / "eval_two_1")  # process 1 writes nothing
    meta = json.loads((tmp_path / "eval_two_0" / "metrics.json").read_text())
    assert meta["num_samples"] == NUM_TEST and len(meta["files"]["samples"]) == NUM_PICTURES
    # The arrays are the split in order (padding dropped), not just the same multiset.
    inputs = np.load(tmp_path / "eval_two_0" / "inputs.npy")
    test = np.load(os.path.join(os.path.dirname(workdir), "data.npz"))["test"]
    np.testing.assert_array_equal(inputs, test[:, :4])

    run_evaluate(tmp_path, "predict_one", predict_args, processes=1)
    run_evaluate(tmp_path, "predict_two", predict_args, processes=2)
    assert_same_outputs(tmp_path / "predict_two_0", tmp_path / "predict_one_0")
    assert not os.path.exists(tmp_path / "predict_two_1")
    meta = json.loads((tmp_path / "predict_two_0" / "predictions.json").read_text())
    assert meta["forward_passes"] == 2 and meta["num_sequences"] == 5
    assert meta["files"]["pictures"] == [
        {"png": f"sequence_00{i}.png", "gif": f"sequence_00{i}.gif"} for i in (0, 1)
    ]


@pytest.mark.slow  # two evaluate.py processes: ~13 s on 2 cores
def test_predict_input_missing_on_one_process_fails_everywhere(workdir, tmp_path):
    # Each process reads the whole --input; a host without the file must not leave the others
    # waiting in a collective: every process exits with a one-line error.
    np.save(tmp_path / "frames.npy", np.zeros((1, 4, 16, 16, 1), np.float32))
    missing = str(tmp_path / "only_on_host_0.npy")
    args = [f"--workdir={workdir}", "--mode=predict"]
    args.append([f"--input={tmp_path / 'frames.npy'}", f"--input={missing}"])
    (rc0, log0), (rc1, log1) = run_evaluate(tmp_path, "p", args, processes=2, check=False)
    assert rc0 == 2 and "evaluate.py: error: input" in log0 and "process(es) [1]" in log0, log0
    assert rc1 == 2 and f"evaluate.py: error: input {missing!r} does not exist" in log1, log1
    assert not os.path.exists(tmp_path / "p_0")
