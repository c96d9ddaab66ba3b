"""One job per workdir (training/workdir_lock.py): a second job stops at once naming the
holder, a lock left by a killed job is taken over, and a two-process job locks on process 0
and is refused on every process together."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stlight_jax.training import loop as train
from stlight_jax.training import workdir_lock
from tests.cli_runs import REPO, assert_one_line_error, run_script

_HOLDER = """
import sys, time
from stlight_jax.training import workdir_lock
with workdir_lock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _start_holder(workdir: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, workdir],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_job_on_a_workdir_stops_at_once_naming_the_holder(config, tmp_path):
    import socket

    workdir = str(tmp_path / "run")
    holder = _start_holder(workdir)
    try:
        lock_file = os.path.join(workdir, workdir_lock.LOCK_FILE)
        with open(lock_file) as f:
            before = f.read()
        with pytest.raises(workdir_lock.WorkdirLockedError) as err:
            train.train_and_evaluate(config, workdir)
        msg = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started " in msg
        assert "\n" not in msg
        # The first job's workdir is untouched: no config.json, metrics or checkpoints written.
        assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE]
        with open(lock_file) as f:
            assert f.read() == before
        # The same through train.py: one line, exit status 2.
        assert_one_line_error(
            run_script(
                ["train.py"],
                f"--config=tests/tiny_config.py:{config.data.path}",
                f"--workdir={workdir}",
            ),
            "train.py",
            f"is in use by another job (pid {holder.pid}",
        )
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up, its lock file stays filled in
        holder.wait()

    warnings = []
    with workdir_lock.hold(workdir, log=warnings.append):
        with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert len(warnings) == 1 and f"left by a job that is gone (pid {holder.pid}" in warnings[0]
    with workdir_lock.hold(workdir, log=warnings.append):  # a clean exit leaves no stale lock
        pass
    assert len(warnings) == 1


_LOCK_WORKER = """
import sys
import jax
jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[3]))
from stlight_jax.training import workdir_lock
try:
    with workdir_lock.hold_for_job(sys.argv[1]):
        print("locked", jax.process_index(), flush=True)
except workdir_lock.WorkdirLockedError as e:
    print("refused", jax.process_index(), e, flush=True)
"""


@pytest.mark.slow  # two jax.distributed jobs: ~10 s on 2 cores
def test_two_process_job_takes_the_lock_on_process_0_and_every_process_is_refused_together(
    tmp_path,
):
    from tests.test_distributed import free_port

    workdir = str(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")

    def job() -> list[str]:
        port = str(free_port())
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _LOCK_WORKER, workdir, port, str(pid)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for pid in (0, 1)
        ]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        return outs

    outs = job()
    assert "locked 0" in outs[0] and "locked 1" in outs[1]
    holder = _start_holder(workdir)
    try:
        outs = job()
    finally:
        holder.kill()
        holder.wait()
    assert f"refused 0 workdir {workdir} is in use by another job (pid {holder.pid}" in outs[0]
    assert f"refused 1 process 0 found workdir {workdir} in use by another job" in outs[1]
