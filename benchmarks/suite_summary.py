"""Summarises a gpu_suite.sh run into one summary.json: each step's status and its figures.

    python benchmarks/suite_summary.py --out OUT --work WORK [--dry-run 1]

Reads the JSON the suite's steps wrote in OUT (compare-*.json, eval.json) and the logs it kept
in WORK (steps.txt, machine.txt, train.log, gpu_mem.txt); prints and writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PAPER_STEPS = 125_000  # 200 epochs x 625 steps of 16 (Moving MNIST, 10,000 sequences)
_RATE = re.compile(r"step (\d+)/(\d+) loss \S+ \| ([\d.]+) steps/s")
_FIRST = re.compile(r"first step \(compile \+ run\) took ([\d.]+) s")


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
            if name.endswith("train step"):
                cases[name]["paper_schedule_h"] = c["median_s"] * PAPER_STEPS / 3600
        out["batches"][str(run["batch"])] = {"cases": cases, "ratios": run["ratios"]}
    return out


def train_summary(work: Path) -> dict[str, Any] | None:
    log = _read(work / "train.log")
    if log is None:
        return None
    rates = _RATE.findall(log)
    first = _FIRST.search(log)
    out: dict[str, Any] = {
        "first_step_s": float(first.group(1)) if first else None,
        "steps_done": int(rates[-1][0]) if rates else 0,
        # train.py's rate counts from the end of the first step (compile excluded).
        "steps_per_s": float(rates[-1][2]) if rates else None,
        "interrupted": "signal 15 received" in log,
    }
    if out["steps_per_s"]:
        out["paper_schedule_h"] = PAPER_STEPS / out["steps_per_s"] / 3600
    mem = _read(work / "gpu_mem.txt")
    if mem:
        used = [int(x) for x in mem.split() if x.isdigit()]
        out["device_memory_peak_mib"] = max(used) if used else None
    return out


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
        evaluation = {k: ev.get(k) for k in ("sequences", "sequences_per_s", "median_pass_s")}
    summary = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run == "1",
        "machine": (_read(work / "machine.txt") or "").strip(),
        "steps": steps,
        "bench_float32_tf32": bench_summary(out / "compare-float32.json"),
        "bench_bf16": bench_summary(out / "compare-bf16.json"),
        "train": train_summary(work),
        "eval": evaluation,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
