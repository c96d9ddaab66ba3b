"""A process of a multi-process job dies (peers.py): the survivor stops within seconds with one
line naming the lost process and the last complete checkpoint, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.cli_runs import REPO


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
