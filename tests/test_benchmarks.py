"""The benchmark scripts run end to end on tiny sizes and write the JSON their READMEs show."""

from __future__ import annotations

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from benchmarks import bench, compare, eval_throughput  # noqa: E402


@pytest.mark.slow  # both frameworks timed: ~17 s on 2 cores
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
    # One executable each: the timed calls never recompiled (uncommitted first inputs did).
    assert step["compiles"] == 1 and cases["stlight-jax forward"]["compiles"] == 1
    # Compiling alone, from JAX's events: part of the first call, and for JAX cases only.
    assert 0 < step["jax_compile_s"] < step["compile_s"]
    assert cases["torch eager train step"]["jax_compile_s"] is None
    assert "paper_schedule_h" not in step  # only at the paper's batch of 16
    # XLA's accounting of the train step covers at least params + Adam's two moments.
    assert step["xla_memory_mb"] > cases["stlight-jax forward"]["xla_memory_mb"] > 0
    # XLA's bytes estimate (the GPU suite's bandwidth share): the step reads and writes more.
    assert step["xla_bytes_accessed"] > cases["stlight-jax forward"]["xla_bytes_accessed"] > 0
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


def test_bench_skips_the_xla_probes_when_asked(tmp_path):
    """--no-xla-probes (each probe compiles the case again: 20 s for L on a GPU) leaves the
    timings and drops only XLA's memory and bytes figures."""
    out = tmp_path / "jax.json"
    bench.main(
        ["--dim", "8", "--depth", "1", "--batch", "2", "--repeats", "1", "--warmup", "0",
         "--side", "jax", "--no-xla-probes", "--out", str(out)]
    )  # fmt: skip
    cases = json.loads(out.read_text())["runs"][0]["cases"]
    assert set(cases) == {"stlight-jax forward", "stlight-jax train step"}
    for c in cases.values():
        assert c["median_s"] > 0
        assert c["xla_memory_mb"] is None and c["xla_bytes_accessed"] is None


def test_bench_side_times_one_framework_only(tmp_path):
    out = tmp_path / "eager.json"
    bench.main(
        ["--dim", "8", "--depth", "1", "--batch", "2", "--repeats", "1", "--warmup", "0",
         "--side", "torch-eager", "--out", str(out)]
    )  # fmt: skip
    cases = json.loads(out.read_text())["runs"][0]["cases"]
    assert set(cases) == {"torch eager forward", "torch eager train step"}


def test_train_flops_convention_matches_torch_flop_counter():
    """compare.py counts a train step as 3x the forward's conv/matmul FLOPs. PyTorch's counter
    over forward + backward of the reference agrees conv by conv: each dense conv's backward is
    2x its forward (input + weight gradient), the first conv's 1x (no input gradient; the
    convention keeps it). Depthwise convs are left out: the counter ignores `groups` in
    convolution_backward (it reports 17x the forward for them here)."""
    torch = pytest.importorskip("torch", reason="torch's FlopCounterMode is the cross-check")
    from torch.utils.flop_counter import FlopCounterMode

    from stlight_jax.models import ModelConfig
    from stlight_jax.reference import reference_from_config

    cfg = ModelConfig(frames_in=3, frames_out=2, image_size=(16, 16), dim=16, depth=3)
    ref = reference_from_config(cfg).train()
    counter = FlopCounterMode(display=False)
    with counter:
        ref(torch.rand(2, 3, 1, 16, 16)).square().mean().backward()
    counts = counter.get_flop_counts()
    fwd, bwd = torch.ops.aten.convolution, torch.ops.aten.convolution_backward
    assert counts["Global"][fwd] == compare.case_flops(cfg, 2, "forward")
    assert compare.case_flops(cfg, 2, "train step") == 3 * compare.case_flops(cfg, 2, "forward")
    dense = [f"STLight.net.{i}.1" for i in range(cfg.depth)] + ["STLight.patch_reassemble"]
    for name in dense:
        assert counts[name][bwd] == 2 * counts[name][fwd], name
    encoder = counts["STLight.patch_encoder"]
    assert encoder[bwd] == encoder[fwd]


@pytest.mark.slow
def test_compare_runs_each_side_in_its_own_process(tmp_path, capsys):
    out = tmp_path / "compare.json"
    result = compare.main(
        ["--dim", "8", "--depth", "1", "--batch", "2", "--rounds", "2", "--repeats", "1",
         "--sides", "jax", "torch-eager", "--peak-n", "128", "--peak-repeats", "2",
         "--malloc", "default", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["rounds"] == {"2": 2} and (tmp_path / "compare.log").exists()
    run = saved["runs"][0]
    # Every round started one process per side: each round's JSON holds one framework.
    for rnd in run["per_round"]:
        assert set(rnd) == {"jax", "torch-eager"}
        assert set(rnd["jax"]["runs"][0]["cases"]) == {
            "stlight-jax forward",
            "stlight-jax train step",
        }
    peak = saved["matmul_peak"]
    assert peak["measurements"] == 4 and peak["gflops"] > 0  # jax + torch per round
    for name in ("stlight-jax train step", "torch eager forward"):
        c = run["cases"][name]
        assert len(c["times_s"]) == 2 and c["median_s"] > 0  # pooled: 2 rounds x 1 repeat
        assert c["gflops_per_s"] == pytest.approx(c["gflop"] / c["median_s"])
        assert c["share_of_peak"] == pytest.approx(c["gflops_per_s"] / peak["gflops"])
    jax_step = run["cases"]["stlight-jax train step"]["median_s"]
    torch_step = run["cases"]["torch eager train step"]["median_s"]
    assert run["ratios"]["train step: torch eager / stlight-jax"] == torch_step / jax_step
    assert "stlight-jax: train step / forward" in run["ratios"]
    assert "% peak" in capsys.readouterr().out
    assert result["wall_s"] > 0


@pytest.mark.slow
def test_time_to_accuracy_trains_both_sides_from_the_same_start(tmp_path):
    from benchmarks import time_to_accuracy
    from tests import tiny_config

    data = tiny_config.write_data(str(tmp_path / "tiny.npz"))
    out = tmp_path / "tta.json"
    result = time_to_accuracy.main(
        ["--config", os.path.join(ROOT, f"tests/tiny_config.py:{data}"), "--budget", "2",
         "--eval-every", "1", "--num-val", "8", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert set(saved["sides"]) == {"jax", "torch"}
    assert "error" not in saved["sides"]["jax"], saved["sides"]["jax"]
    assert saved["same_first_batch"] is True
    assert (tmp_path / "tta.png").stat().st_size > 0
    jax_side, torch_side = saved["sides"]["jax"], saved["sides"]["torch"]
    # The same converted initial weights: identical val MSE before the first step.
    assert jax_side["curve"][0]["val_mse"] == pytest.approx(
        torch_side["curve"][0]["val_mse"], rel=1e-4
    )
    for side in (jax_side, torch_side):
        assert "error" not in side, side
        assert side["steps"] >= 1 and side["val_sequences"] == 8
        assert side["curve"][-1]["step"] == side["steps"]
        # it stopped on its budget or at the schedule's end, never past either
        assert side["train_seconds"] - side["first_step_s"] < 2 + side["curve"][-1]["seconds"]
    assert result["budget_s"] == 2


def test_compare_summarises_a_stopped_run(tmp_path):
    """A time limit that stops compare.py leaves its raw rounds (written after every side);
    --summarise-partial turns what finished into medians, ratios and shares of the peak."""

    def side(cases):
        compiling = {"jax_compile_s": 0.5} if "stlight-jax forward" in cases else {}
        timed = {n: {"times_s": t, "compile_s": 1.0, **compiling} for n, t in cases.items()}
        return {"runs": [{"batch": 2, "cases": timed}]}

    rounds = [
        {
            "jax": side({"stlight-jax forward": [1.0, 3.0], "stlight-jax train step": [4.0]}),
            "torch-eager": side({"torch eager forward": [2.0], "torch eager train step": [8.0]}),
        },
        {"jax": side({"stlight-jax forward": [2.0], "stlight-jax train step": [6.0]})},
    ]
    partial = {
        "partial": True,
        "machine": {"backend": "cpu", "cpu": "test", "cpu_count": 2},
        "size": "S",
        "precision": "float32",
        "rounds": {"2": 2},
        "repeats": {"2": 1},
        "malloc": "default",
        "config": {
            "dim": 8,
            "depth": 1,
            "frames_in": 10,
            "frames_out": 10,
            "channels": 1,
            "image_size": [64, 64],
            "patch": 2,
            "conv_impl": "auto",
        },
        "peaks": [{"best_gflops": 10.0}, {"best_gflops": 20.0}, {"error": "killed"}],
        "runs": [{"batch": 2, "rounds": rounds}],
    }
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(partial))
    result = compare.main(["--summarise-partial", str(path)])
    assert json.loads((tmp_path / "partial.summary.json").read_text())["runs"]
    assert result["matmul_peak"]["gflops"] == 20.0 and result["matmul_peak"]["measurements"] == 2
    run = result["runs"][0]
    assert run["cases"]["stlight-jax forward"]["median_s"] == 2.0  # pooled over both rounds
    assert run["cases"]["stlight-jax train step"]["median_s"] == 5.0
    assert run["ratios"]["train step: torch eager / stlight-jax"] == 8.0 / 5.0
    assert run["cases"]["stlight-jax train step"]["jax_compile_median_s"] == 0.5
    assert run["cases"]["torch eager train step"]["jax_compile_median_s"] is None
    step = run["cases"]["torch eager train step"]
    assert step["share_of_peak"] == pytest.approx(step["gflop"] / 8.0 / 20.0)
    with pytest.raises(SystemExit, match="not a partial result"):
        path.write_text(json.dumps({**partial, "partial": False}))
        compare.main(["--summarise-partial", str(path)])


def test_profile_step_summarises_a_traced_step(tmp_path, capsys):
    from benchmarks import profile_step

    for mode, flags in (("train step", []), ("forward", ["--forward"])):
        profile_step.main(
            ["--dim", "8", "--depth", "2", "--batch", "1", "--steps", "1", "--top", "5",
             "--trace-dir", str(tmp_path / mode), *flags]
        )  # fmt: skip
        out = capsys.readouterr().out
        assert f"{mode}:" in out and "ms per call" in out
        # At least one XLA op row (ms/call, share, count, name) came out of the trace.
        assert re.search(r"^\s*[\d.]+\s+[\d.]+%\s+\d+\s+\S", out, re.M), out
