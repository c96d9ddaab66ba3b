"""benchmarks/gpu_suite.sh --dry-run: the GPU suite's every step on CPU at tiny sizes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_suite_dry_run_passes_every_step(tmp_path):
    out = tmp_path / "suite"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out))
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=4800,
    )
    log = (out / "suite.log").read_text() if (out / "suite.log").exists() else proc.stderr
    assert proc.returncode == 0, log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert summary["steps"] == {
        "parity": "ok",
        "bench_float32": "ok",
        "bench_bf16": "ok",
        "train": "ok",
        "eval": "ok",
    }
    for key in ("bench_float32_tf32", "bench_bf16"):
        cases = summary[key]["batches"]["2"]["cases"]
        assert cases["stlight-jax train step"]["median_s"] > 0
        assert 0 < cases["stlight-jax train step"]["jax_compile_median_s"]
        assert cases["torch eager train step"]["share_of_peak"] > 0
    train = summary["train"]
    assert train["steps_done"] == 4 and train["steps_per_s"] > 0  # 32 sequences / batch 8
    assert train["paper_schedule_h"] == pytest.approx(125_000 / train["steps_per_s"] / 3600)
    assert summary["eval"]["sequences"] == 16
    # What the device tool returns: at most 8 files, plain names, no folders.
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert all((out / f).is_file() for f in files)


def test_gpu_suite_rejects_unknown_arguments():
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), "--fast"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "gpu_suite.sh: unexpected argument '--fast' (usage: gpu_suite.sh [--dry-run])"
    )
