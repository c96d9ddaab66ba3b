"""Summarises a gpu_suite.sh run into one summary.json: each step's status and its figures.

    python benchmarks/suite_summary.py --out OUT --work WORK [--dry-run 1]

Reads what the suite's steps wrote in OUT (test_metrics.json, compare-bf16.json, eval.json) and
kept in WORK (steps.txt, machine.txt, train.log, run/metrics.jsonl, run/config.json,
gpu_mem.txt); prints and writes OUT/summary.json. Step times come from the absl timestamps of
train.log's progress lines: the median per-step time of the intervals between them (those
holding a checkpoint or a validation are the minority), and the wall time per step overall.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PAPER_STEPS = 125_000  # 200 epochs x 625 steps of 16 (Moving MNIST, 10,000 sequences)
_RATE = re.compile(r"step (\d+)/(\d+) loss \S+ \| ([\d.]+) steps/s")
_FIRST = re.compile(r"first step \(compile \+ run\) took ([\d.]+) s")
_SAVED = re.compile(r"saved step (\d+) to ")
_STAMP = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+) ")
STEPS_PER_EPOCH = 625  # 10,000 sequences / batch 16
# The H200's ceilings as measured on such a machine (the device tool's notes): an 8192^3 bf16
# matmul at about 790 TFLOP/s and device-to-device copies at about 4.3 TB/s.
BF16_PEAK_TFLOPS = 790.0
COPY_BANDWIDTH_TBS = 4.3


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def bench_summary(path: Path) -> dict[str, Any] | None:
    text = _read(path)
    if text is None:
        return None
    res = json.loads(text)
    partial = bool(res.get("partial"))
    if partial:  # the step's time limit stopped compare.py: summarise the rounds it finished
        from benchmarks.compare import summarise_partial

        res = summarise_partial(str(path))
    out: dict[str, Any] = {
        "matmul_peak_gflops": res["matmul_peak"]["gflops"],
        "stopped_early": partial,
        "batches": {},
    }
    for run in res["runs"]:
        cases = {}
        for name, c in run["cases"].items():
            if "median_s" not in c:
                cases[name] = {"error": c.get("error")}
                continue
            kept = (
                "median_s",
                "first_call_median_s",
                "jax_compile_median_s",
                "gflops_per_s",
                "share_of_peak",
            )
            cases[name] = {k: c.get(k) for k in kept}
            cases[name]["device_peak_mb"] = c.get("device_peak_mb")
            cases[name]["share_of_bf16_790_tflops"] = c["gflops_per_s"] / (BF16_PEAK_TFLOPS * 1e3)
            if c.get("xla_gbytes_per_s"):
                cases[name]["xla_gbytes_per_s"] = c["xla_gbytes_per_s"]
                cases[name]["share_of_4_3_tbs"] = c["xla_gbytes_per_s"] / (COPY_BANDWIDTH_TBS * 1e3)
            if name.endswith("train step"):
                cases[name]["paper_schedule_h"] = c["median_s"] * PAPER_STEPS / 3600
        out["batches"][str(run["batch"])] = {"cases": cases, "ratios": run["ratios"]}
    return out


def _log_time(line: str) -> float | None:
    """Seconds since midnight from an absl log line ('I1204 16:55:04.616211 ...')."""
    m = _STAMP.match(line)
    if not m:
        return None
    h, mi, sec = m.groups()
    return int(h) * 3600 + int(mi) * 60 + float(sec)


def train_summary(work: Path) -> dict[str, Any] | None:
    """The training run's figures from train.log (absl timestamps) and metrics.jsonl."""
    log = _read(work / "train.log")
    if log is None:
        return None
    points = []  # (seconds, step) of each progress line
    for line in log.splitlines():
        m = _RATE.search(line)
        t = _log_time(line)
        if m and t is not None:
            points.append((t, int(m.group(1))))
    # Per-step time of each interval between progress lines; the median skips the intervals
    # that hold an epoch-end checkpoint or a validation.
    per_step = [
        (t1 - t0) / (s1 - s0)
        for (t0, s0), (t1, s1) in zip(points, points[1:], strict=False)
        if s1 > s0
    ]
    first = _FIRST.search(log)
    saved = _SAVED.search(log)
    last_step = int(saved.group(1)) if saved else (points[-1][1] if points else 0)
    out: dict[str, Any] = {
        "first_step_s": float(first.group(1)) if first else None,
        "steps_done": last_step,
        "epochs_reached": last_step / STEPS_PER_EPOCH,
        "completed_epochs": last_step // STEPS_PER_EPOCH,
        "step_median_s": statistics.median(per_step) if per_step else None,
        "interrupted": "signal 15 received" in log,
    }
    if len(points) > 1 and points[-1][1] > points[0][1]:
        # Everything between the first and last progress lines: steps, checkpoints, validations.
        wall = (points[-1][0] - points[0][0]) / (points[-1][1] - points[0][1])
        out["wall_per_step_s"] = wall
        out["paper_schedule_h"] = PAPER_STEPS * wall / 3600
    if out["step_median_s"]:
        out["paper_schedule_steps_only_h"] = PAPER_STEPS * out["step_median_s"] / 3600
    records = [json.loads(x) for x in (_read(work / "run" / "metrics.jsonl") or "").splitlines()]
    out["validations"] = [
        {k: r.get(k) for k in ("step", "epoch", "val_mse", "val_mae", "val_ssim", "val_psnr")}
        for r in records
        if "val_mse" in r
    ]
    header = next((r for r in records if "params" in r), None)
    if header:
        out["params"] = header["params"]
    config = _read(work / "run" / "config.json")
    if config:
        cfg = json.loads(config)
        out["compute_dtype"] = cfg.get("compute_dtype")
        out["config_name"] = cfg.get("name")
    mem = _read(work / "gpu_mem.txt")
    if mem:
        used = [int(x) for x in mem.split() if x.isdigit()]
        out["device_memory_peak_mib"] = max(used) if used else None
    return out


def test_summary(out_dir: Path) -> dict[str, Any] | None:
    """The last checkpoint's test metrics (evaluate.py's metrics.json), baselines beside."""
    text = _read(out_dir / "test_metrics.json")
    if text is None:
        return None
    res = json.loads(text)
    keep = ("mse", "mae", "ssim", "psnr")
    return {
        "sequences": res.get("num_samples"),
        "checkpoint_step": (res.get("checkpoint") or {}).get("step"),
        "data_source": res.get("data_source"),
        **{name: {k: m.get(k) for k in keep} for name, m in res["metrics"].items()},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--dry-run", default="0")
    args = p.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    steps = {}
    for line in (_read(work / "steps.txt") or "").splitlines():
        name, _, status = line.partition(" ")
        steps[name] = status
    evaluation = None
    if (out / "eval.json").exists():
        ev = json.loads((out / "eval.json").read_text())
        keep = ("sequences", "eval_batch_size", "compute_dtype", "sequences_per_s", "median_pass_s")
        evaluation = {k: ev.get(k) for k in keep}
    summary = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run == "1",
        "machine": (_read(work / "machine.txt") or "").strip(),
        "steps": steps,
        "train": train_summary(work),
        "test": test_summary(out),
        "bench_bf16": bench_summary(out / "compare-bf16.json"),
        "eval": evaluation,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
