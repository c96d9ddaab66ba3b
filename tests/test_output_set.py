"""evaluate.py's outputs are one whole set or the previous one untouched
(evaluation/output_set.py): after a full disk, an interrupt (Ctrl-C: one line, exit 130), or a
second evaluation writing the same --out at the same time."""

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

from tests import tiny_config
from tests.cli_runs import REPO, assert_one_line_error, run_script


def _listing(out) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}


def _leftovers(out) -> list[str]:
    return [e for e in os.listdir(out.parent) if e.startswith(f".{out.name}.") and "lock" not in e]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.slow  # five evaluations: ~25 s on 2 cores
def test_evaluate_output_set_is_whole_after_a_full_disk_an_interrupt_or_a_second_run(
    config, weights, tmp_path, monkeypatch
):
    from stlight_jax.evaluation import output_set, visualize
    from stlight_jax.evaluation import runner as evaluation

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


@pytest.mark.slow  # evaluate.py runs on 2,000 sequences: ~30 s on 2 cores
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
            run_script(["evaluate.py"], *args),
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
