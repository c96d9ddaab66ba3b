"""benchmarks/gpu_suite.sh --dry-run: the GPU suite's every step on CPU at tiny sizes (issue 20's
order: SIGTERM-stopped training, test of the last checkpoint, jax vs torch, eval throughput)."""

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
    assert summary["steps"] == {"train": "ok", "test": "ok", "bench_bf16": "ok", "eval": "ok"}
    # 1. Training was stopped by SIGTERM after at least one validation, and saved.
    train = summary["train"]
    assert train["interrupted"] is True and train["compute_dtype"] == "bfloat16"
    assert train["steps_done"] >= 4 and train["step_median_s"] > 0
    assert train["validations"] and all(v["val_mse"] > 0 for v in train["validations"])
    assert train["paper_schedule_h"] == pytest.approx(125_000 * train["wall_per_step_s"] / 3600)
    # 2. The test pass scored the last saved step, baselines beside.
    test = summary["test"]
    assert test["sequences"] == 8 and test["checkpoint_step"] == train["steps_done"]
    assert {"model", "last_frame", "zeros"} <= set(test)
    # 3. Both sides timed; XLA's bytes estimate gives the bandwidth share.
    cases = summary["bench_bf16"]["batches"]["2"]["cases"]
    jax_step = cases["stlight-jax train step"]
    assert jax_step["median_s"] > 0 and jax_step["jax_compile_median_s"] > 0
    assert jax_step["share_of_4_3_tbs"] > 0 and jax_step["share_of_bf16_790_tflops"] > 0
    assert cases["torch eager train step"]["share_of_peak"] > 0
    # 4. Evaluation throughput.
    assert summary["eval"]["sequences"] == 16 and summary["eval"]["sequences_per_s"] > 0
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
