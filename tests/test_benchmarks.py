"""The benchmark scripts run end to end on tiny sizes and write the JSON their READMEs show."""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import bench, eval_throughput  # noqa: E402


def test_bench_times_both_frameworks_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.main(
        ["--dim", "8", "--depth", "2", "--batch", "2", "--repeats", "2", "--warmup", "0",
         "--torch-compile", "off", "--malloc", "default", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["config"]["dim"] == 8 and saved["config"]["depth"] == 2
    cases = saved["runs"][0]["cases"]
    names = {
        "torch eager forward",
        "torch eager train step",
        "stlight-jax forward",
        "stlight-jax train step",
    }
    assert set(cases) == names
    for name in names:
        c = cases[name]
        assert "error" not in c, c
        assert len(c["times_s"]) == 2 and c["median_s"] > 0 and c["compile_s"] > 0
        assert c["samples_per_s"] == 2 / c["median_s"]
    step = cases["stlight-jax train step"]
    assert "paper_schedule_h" not in step  # only at the paper's batch of 16
    # XLA's accounting of the train step covers at least params + Adam's two moments.
    assert step["xla_memory_mb"] > cases["stlight-jax forward"]["xla_memory_mb"] > 0
    table = capsys.readouterr().out
    assert "JAX speedup" in table and "torch eager train step" in table
    assert result["runs"][0]["batch"] == 2


def test_eval_throughput_runs_the_evaluation_path(tmp_path):
    out = tmp_path / "eval.json"
    result = eval_throughput.main(
        ["--config", os.path.join(ROOT, "configs/mmnist.py:cpu"), "--sequences", "10",
         "--batch", "4", "--passes", "1", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["sequences"] == 10 and saved["eval_batch_size"] == 4
    assert saved["sequences_per_s"] == 10 / saved["median_pass_s"]
    assert len(saved["pass_times_s"]) == 1
    # Random weights on uniform noise in [0, 1]: a finite, positive per-frame MSE.
    assert 0 < result["model_mse_on_noise"] < 64 * 64


def test_paper_schedule_time_is_reported_at_the_papers_batch():
    case = bench.Case("stlight-jax train step", run=lambda: None, batch=16, times=[2.0, 3.0, 4.0])
    assert case.summary()["paper_schedule_h"] == 3.0 * 125_000 / 3600
    case.batch = 4
    assert "paper_schedule_h" not in case.summary()
