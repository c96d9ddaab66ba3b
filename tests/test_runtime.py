"""Process-wide malloc settings: each runs in a subprocess, as they would change the test's own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stlight_jax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_REUSE_PROBE = r"""
import ctypes, os, resource, sys, threading
sys.path.insert(0, {root!r})
if {tune!r} == 'keep':
    from stlight_jax import runtime
    assert runtime.tune_cpu_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 3 * 2**30 // 8  # 384 MB: above every glibc mmap threshold, like XLA's temp blocks
faults = []

def step():  # a worker thread, as XLA:CPU allocates its per-call temp block on one
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ptr = libc.malloc(size)
    ctypes.memset(ptr, 1, size)
    libc.free(ptr)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

for _ in range(3):
    t = threading.Thread(target=step)
    t.start()
    t.join()
print(faults[-1], size // 4096)
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", runtime.OPT_OUT_ENV)}
    return {**env, **extra}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
@pytest.mark.parametrize("mode", ["plain", "keep", "hugepages"])
def test_large_blocks_freed_by_worker_threads_stop_page_faulting(mode):
    """glibc as is unmaps a large block freed on a worker thread, so every reuse faults on all
    of its 4 KB pages (the control); tune_cpu_malloc keeps the block, and the hugetlb tunable
    maps it in 2 MB pages: either way the third use takes a small fraction of those faults."""
    env = _env()
    if mode == "hugepages":
        if not runtime.malloc_hugepages_possible():
            pytest.skip("needs glibc >= 2.35 and transparent huge pages not set to 'never'")
        env["GLIBC_TUNABLES"] = runtime.HUGETLB_TUNABLE
    code = _REUSE_PROBE.format(root=ROOT, tune=mode)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    faults, pages = map(int, out.stdout.split())
    if mode == "plain":
        assert faults > pages // 2, (faults, pages)
    else:
        assert faults < pages // 20, (faults, pages)


_REEXEC_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
from stlight_jax import runtime
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
runtime.reexec_with_malloc_hugepages()
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), flush=True)
"""


def _run_reexec_probe(tmp_path, **env) -> list[list[str]]:
    script = tmp_path / "probe.py"
    script.write_text(_REEXEC_PROBE.format(root=ROOT))
    out = subprocess.run(
        [sys.executable, str(script), "--flag=1", "x"],
        capture_output=True,
        text=True,
        check=True,
        env=_env(**env),
    )
    return [line.split(" ", 3) for line in out.stdout.splitlines()]


def test_reexec_restarts_once_with_the_tunable_and_the_same_command(tmp_path):
    lines = _run_reexec_probe(tmp_path, GLIBC_TUNABLES="glibc.malloc.check=0")
    if not runtime.malloc_hugepages_possible():
        assert [line[0] for line in lines] == ["start", "after"]  # nothing to do here
        pytest.skip("no restart expected: glibc < 2.35 or transparent huge pages 'never'")
    (s1, pid1, env1, argv1), (s2, pid2, env2, argv2), (s3, pid3, env3) = lines
    assert (s1, s2, s3) == ("start", "start", "after")
    assert pid1 == pid2 == pid3  # exec, not a child process
    assert argv1 == argv2 == "['--flag=1', 'x']"
    assert env1 == "glibc.malloc.check=0"
    assert env2 == env3 == "glibc.malloc.check=0:" + runtime.HUGETLB_TUNABLE


def test_reexec_opt_out(tmp_path):
    lines = _run_reexec_probe(tmp_path, **{runtime.OPT_OUT_ENV: "1"})
    assert [line[0] for line in lines] == ["start", "after"]
    assert lines[1][2] == ""
