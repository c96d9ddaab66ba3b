"""Headline benchmark: each framework in its own process, rounds alternated, medians, % of peak.

For every batch size, each round starts one fresh `bench.py --side X` process per side
(stlight-jax, torch eager, torch.compile), in an order rotated from round to round, so load
drifts on a shared machine hit every side alike and no framework shares a process with
another. The same run measures this machine's float32 matmul peak (a large square matmul in
JAX and in PyTorch, each in its own process, once per round; the best of all of them), and
every case reports its achieved GFLOP/s and that share of the peak. See benchmarks/README.md.

    python benchmarks/compare.py                               # CPU headline: MMNIST-S, batch 4 16
    python benchmarks/compare.py --size L --batch 16 --precision bf16       # on a GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIDES = {"jax": "stlight-jax", "torch-eager": "torch eager", "torch-compile": "torch.compile"}
KINDS = ("forward", "train step")
# A train step's FLOPs: the forward, then for each conv/matmul the input gradient and the
# weight gradient, each as many multiply-adds as the forward (the usual 3x convention; the
# first layer's input gradient, not needed, is still counted: 0.3% of MMNIST-S).
TRAIN_FLOPS_PER_FORWARD = 3


def case_flops(cfg, batch: int, kind: str) -> float:
    """Multiply-add FLOPs (2 per MAC) of every conv and matmul, from model_size.true_macs."""
    from stlight_jax.model_size import model_size

    forward = 2.0 * model_size(cfg).true_macs * batch
    return forward * (TRAIN_FLOPS_PER_FORWARD if kind == "train step" else 1)


# ---------------------------------------------------------------------------------------------
# Matmul peak workers: one framework per process, like the cases.


def matmul_peak_worker(framework: str, n: int, repeats: int, precision: str) -> dict:
    """Best and median GFLOP/s of an n x n x n matmul (2 n^3 FLOPs) after one warm-up call."""
    times = []
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        if precision == "highest":
            jax.config.update("jax_default_matmul_precision", "highest")
        dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
        k1, k2 = jax.random.split(jax.random.key(0))
        a = jax.random.normal(k1, (n, n), dtype)
        b = jax.random.normal(k2, (n, n), dtype)
        mm = jax.jit(jnp.matmul)
        mm(a, b).block_until_ready()
        for _ in range(repeats):
            t = time.perf_counter()
            mm(a, b).block_until_ready()
            times.append(time.perf_counter() - t)
        device = str(jax.devices()[0].device_kind)
    else:
        import torch

        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.backends.cuda.matmul.allow_tf32 = precision == "float32"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dev, dtype)
        b = torch.randn(n, n, generator=g).to(dev, dtype)

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        torch.mm(a, b)
        sync()
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            sync()
            times.append(time.perf_counter() - t)
        device = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    flops = 2.0 * n**3
    return {
        "framework": framework,
        "n": n,
        "precision": precision,
        "device": device,
        "times_s": times,
        "best_gflops": flops / min(times) / 1e9,
        "median_gflops": flops / statistics.median(times) / 1e9,
    }


# ---------------------------------------------------------------------------------------------
# Driver.


def _run(cmd: list[str], env: dict, log) -> tuple[int, str]:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    log.write(proc.stdout + proc.stderr)
    log.flush()
    return proc.returncode, (proc.stderr or proc.stdout)[-1500:]


def _worker_env(malloc: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if malloc == "default":
        env["STLIGHT_JAX_DEFAULT_MALLOC"] = "1"
    return env


def measure_peak(args, round_index: int, env: dict, log, tmp: Path) -> list[dict]:
    torch_too = any(side.startswith("torch") for side in args.sides)
    frameworks = ["jax", "torch"] if torch_too else ["jax"]
    if round_index % 2:
        frameworks.reverse()
    out = []
    for fw in frameworks:
        path = tmp / f"peak-{fw}-{round_index}.json"
        cmd = [sys.executable, str(Path(__file__)), "--peak-worker", fw,
               "--peak-n", str(args.peak_n), "--peak-precision", args.peak_precision,
               "--peak-repeats", str(args.peak_repeats), "--out", str(path)]  # fmt: skip
        rc, tail = _run(cmd, env, log)
        out.append(json.loads(path.read_text()) if rc == 0 else {"framework": fw, "error": tail})
    return out


def run_side(args, side: str, batch: int, env: dict, log, tmp: Path, tag: str) -> dict:
    path = tmp / f"{side}-{batch}-{tag}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--side", side,
           "--batch", str(batch), "--repeats", str(args.repeats[batch]),
           "--warmup", str(args.warmup),
           "--size", args.size, "--depth", str(args.depth), "--precision", args.precision,
           "--matmul-precision", args.matmul_precision, "--conv-impl", args.conv_impl,
           "--malloc", args.malloc, "--out", str(path)]  # fmt: skip
    if args.dim:
        cmd += ["--dim", str(args.dim)]
    if side == "torch-compile":
        cmd += ["--torch-compile", "on"]
    rc, tail = _run(cmd, env, log)
    if rc != 0:
        return {"error": tail}
    return json.loads(path.read_text())


def summarise(batch: int, rounds: list[dict], cfg, peak_gflops: float | None) -> dict:
    """Pools each case's timed runs over all rounds; medians, GFLOP/s, % of peak, ratios."""
    cases: dict[str, dict[str, Any]] = {}
    for side, label in SIDES.items():
        for kind in KINDS:
            name = f"{label} {kind}"
            times, first, compiling, errors, xla_mem, dev_peak, rss, xla_bytes = (
                [] for _ in range(8)
            )
            for rnd in rounds:
                res = rnd.get(side)
                if res is None:
                    continue
                if "error" in res:
                    errors.append(res["error"])
                    continue
                c = res["runs"][0]["cases"].get(name)
                if c is None or "error" in c:
                    errors.append((c or {}).get("error", "case missing"))
                    continue
                times += c["times_s"]
                first.append(c["compile_s"])
                if c.get("jax_compile_s") is not None:
                    compiling.append(c["jax_compile_s"])
                rss.append(c.get("peak_mem_mb"))
                xla_mem.append(c.get("xla_memory_mb"))
                xla_bytes.append(c.get("xla_bytes_accessed"))
                dev_peak.append(c.get("device_peak_mb"))
            if not times and not errors:
                continue
            if not times:
                cases[name] = {"error": errors[0]}
                continue
            med = statistics.median(times)
            bytes_accessed = next((m for m in xla_bytes if m), None)
            flops = case_flops(cfg, batch, kind)
            gflops = flops / med / 1e9
            cases[name] = {
                "median_s": med,
                "min_s": min(times),
                "max_s": max(times),
                "times_s": times,
                "samples_per_s": batch / med,
                "first_call_s": first,
                "first_call_median_s": statistics.median(first),
                # JAX only: the compile share of the first call (tracing, lowering, XLA);
                # the same key as bench.py's, per round.
                "jax_compile_s": compiling,
                "jax_compile_median_s": statistics.median(compiling) if compiling else None,
                "gflop": flops / 1e9,
                "gflops_per_s": gflops,
                "share_of_peak": gflops / peak_gflops if peak_gflops else None,
                "peak_rss_mb": max((r for r in rss if r), default=None),
                "xla_memory_mb": next((m for m in xla_mem if m), None),
                # JAX only: XLA's estimate of the bytes the compiled step reads and writes, and
                # that over the median time (compare with the device's copy bandwidth).
                "xla_bytes_accessed": bytes_accessed,
                "xla_gbytes_per_s": bytes_accessed / med / 1e9 if bytes_accessed else None,
                "device_peak_mb": max((m for m in dev_peak if m), default=None),
                "errors": errors,
            }
    ratios = {}
    labels = list(SIDES.values())
    for kind in KINDS:
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                ca, cb = cases.get(f"{a} {kind}"), cases.get(f"{b} {kind}")
                if ca and cb and "median_s" in ca and "median_s" in cb:
                    # > 1: `a` is faster than `b`.
                    ratios[f"{kind}: {b} / {a}"] = cb["median_s"] / ca["median_s"]
    for label in labels:
        fwd, step = cases.get(f"{label} forward"), cases.get(f"{label} train step")
        if fwd and step and "median_s" in fwd and "median_s" in step:
            ratios[f"{label}: train step / forward"] = step["median_s"] / fwd["median_s"]
    return {"batch": batch, "cases": cases, "ratios": ratios}


def finish(result: dict, peaks: list[dict], cfg) -> None:
    """Turns the raw rounds of `result['runs']` into the summary: peak, medians, ratios."""
    good = [pk for pk in peaks if "best_gflops" in pk]
    peak = max((pk["best_gflops"] for pk in good), default=None)
    result["matmul_peak"] = {
        "gflops": peak,
        "median_gflops": statistics.median(pk["best_gflops"] for pk in good) if good else None,
        "n": result.get("peak_n"),
        "precision": result.get("peak_precision"),
        "measurements": len(good),
        "per_process": peaks,
    }
    for run in result["runs"]:
        rounds = run.pop("rounds")
        run.update(summarise(run["batch"], rounds, cfg, peak))
        run["per_round"] = rounds


def summarise_partial(path: str) -> dict:
    """The summary of a run a time limit stopped: the rounds (and sides) that finished."""
    from stlight_jax.models import ModelConfig

    result = json.loads(Path(path).read_text())
    if not result.get("partial"):
        raise SystemExit(f"compare.py: {path} is not a partial result")
    peaks = result.pop("peaks")
    result["partial"] = "summary of the rounds that finished"
    finish(result, peaks, ModelConfig(**{**result["config"], "image_size": (64, 64)}))
    return result


def format_table(result: dict) -> str:
    m = result["machine"]
    peak = result["matmul_peak"]
    lines = [
        f"MMNIST-{result['size']} dim={result['config']['dim']} depth={result['config']['depth']} "
        f"{result['precision']}, {m['backend']} ({m['cpu']}, {m['cpu_count']} cores), "
        f"rounds {result['rounds']} x repeats {result['repeats']} per batch, "
        f"malloc {result['malloc']}",
        f"matmul peak ({peak['precision']}, n={peak['n']}): {peak['gflops']:.1f} GFLOP/s "
        f"(best of {peak['measurements']} processes; median {peak['median_gflops']:.1f})",
        f"{'batch':>5} {'case':28s} {'median ms':>10} {'min ms':>9} {'first s':>8} "
        f"{'GFLOP/s':>8} {'% peak':>7} {'compile s':>9}",
    ]
    for run in result["runs"]:
        b = run["batch"]
        for kind in KINDS:
            for label in SIDES.values():
                name = f"{label} {kind}"
                c = run["cases"].get(name)
                if c is None:
                    continue
                if "median_s" not in c:
                    lines.append(f"{b:5d} {name:28s} n/a: {c['error'].splitlines()[-1][:80]}")
                    continue
                share = f"{100 * c['share_of_peak']:.0f}%" if c["share_of_peak"] else "-"
                comp = c.get("jax_compile_median_s")
                comp = f"{comp:.2f}" if comp is not None else "-"
                lines.append(
                    f"{b:5d} {name:28s} {c['median_s'] * 1e3:10.1f} {c['min_s'] * 1e3:9.1f} "
                    f"{c['first_call_median_s']:8.2f} {c['gflops_per_s']:8.1f} {share:>7} "
                    f"{comp:>9}"
                )
        for k, v in run["ratios"].items():
            lines.append(f"{b:5d}   {k}: {v:.2f}x")
    lines.append(
        "Ratios 'X / Y' are median times: > 1 means Y is faster. 'first s': first call "
        "(trace + compile + one run), median over rounds; 'compile s' (stlight-jax): the "
        "tracing, lowering and XLA compile within it, from JAX's compile events."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="S", choices=["XS", "S", "M", "L"])
    p.add_argument("--dim", type=int, help="override dim (tests: tiny models)")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--batch", type=int, nargs="+", default=None, help="CPU: 4 16; GPU: 16")
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    p.add_argument(
        "--rounds", type=int, nargs="+", default=[2], help="fresh processes per side (per batch)"
    )
    p.add_argument(
        "--repeats", type=int, nargs="+", default=[2], help="timed runs per process (per batch)"
    )
    p.add_argument("--warmup", type=int, default=0, help="untimed runs after the first call")
    p.add_argument("--precision", default="float32", choices=["float32", "bf16"])
    p.add_argument("--matmul-precision", default="default", choices=["default", "highest"])
    p.add_argument("--conv-impl", default="auto", choices=["auto", "lax", "shifted"])
    p.add_argument(
        "--malloc",
        default="hugepages",
        choices=["default", "hugepages"],
        help="glibc malloc of every worker process, all sides alike ('hugepages': as train.py)",
    )
    p.add_argument("--peak-n", type=int, default=None, help="matmul size (CPU 3072, GPU 8192)")
    p.add_argument("--peak-precision", default=None, choices=["float32", "bf16", "highest"])
    p.add_argument("--peak-repeats", type=int, default=5)
    p.add_argument("--peak-worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    p.add_argument(
        "--summarise-partial",
        metavar="JSON",
        help="summarise what a stopped run wrote (its --out) into JSON.summary.json",
    )
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    p.add_argument("--log", default=None, help="workers' output (default: the JSON's .log)")
    args = p.parse_args(argv)
    if min(args.rounds) < 1 or min(args.repeats) < 1:
        p.error("--rounds and --repeats must be >= 1")
    if args.summarise_partial:
        result = summarise_partial(args.summarise_partial)
        print(format_table(result))
        out = Path(args.summarise_partial).with_suffix(".summary.json")
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {out}")
        return result
    if args.peak_worker:
        res = matmul_peak_worker(
            args.peak_worker, args.peak_n, args.peak_repeats, args.peak_precision
        )
        Path(args.out).write_text(json.dumps(res))
        return res

    import jax

    from benchmarks.bench import machine_info, write_result
    from stlight_jax.model_size import PAPER_SIZES
    from stlight_jax.models import ModelConfig

    backend = jax.default_backend()
    batches = args.batch or ([4, 16] if backend == "cpu" else [16])
    for name in ("rounds", "repeats"):
        values = getattr(args, name)
        if len(values) not in (1, len(batches)):
            p.error(f"--{name}: give one value, or one per batch ({len(batches)})")
        per_batch = values * len(batches) if len(values) == 1 else values
        setattr(args, name, dict(zip(batches, per_batch, strict=True)))
    args.peak_n = args.peak_n or (3072 if backend == "cpu" else 8192)
    if args.peak_precision is None:
        args.peak_precision = "bf16" if args.precision == "bf16" else (
            "highest" if args.matmul_precision == "highest" else "float32"
        )  # fmt: skip
    sizes = dict(PAPER_SIZES[f"mmnist_{args.size}"][0], depth=args.depth)
    if args.dim:
        sizes["dim"] = args.dim
    cfg = ModelConfig(**sizes, conv_impl=args.conv_impl)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "method": "compare.py: one process per side, rounds alternated, medians pooled",
        "machine": machine_info(backend, str(jax.devices()[0].device_kind)),
        "python": platform.python_version(),
        "size": args.size,
        "config": {**sizes, "conv_impl": args.conv_impl},
        "precision": args.precision,
        "matmul_precision": args.matmul_precision,
        "malloc": args.malloc,
        "rounds": {str(b): n for b, n in args.rounds.items()},
        "repeats": {str(b): n for b, n in args.repeats.items()},
        "warmup": args.warmup,
        "train_flops_per_forward": TRAIN_FLOPS_PER_FORWARD,
        "peak_n": args.peak_n,
        "peak_precision": args.peak_precision,
        "runs": [],
    }
    env = _worker_env(args.malloc)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        log_path = Path(args.log) if args.log else tmp / "workers.log"
        with open(log_path, "w") as log:
            peaks: list[dict] = []
            versions: dict[str, Any] = {}
            for b in batches:
                rounds = []
                for r in range(args.rounds[b]):
                    peaks += measure_peak(args, len(peaks), env, log, tmp)
                    k = r % len(args.sides)
                    order = args.sides[k:] + args.sides[:k]  # rotated: no side always first
                    rnd = {}
                    for side in order:
                        t = time.perf_counter()
                        rnd[side] = run_side(args, side, b, env, log, tmp, f"r{r}")
                        print(
                            f"batch {b} round {r + 1}/{args.rounds[b]} {side:13s} "
                            f"{time.perf_counter() - t:6.1f} s"
                            + (" FAILED" if "error" in rnd[side] else ""),
                            flush=True,
                        )
                        versions.update(rnd[side].get("versions", {}))
                        if args.out:  # raw so far, should a time limit stop the driver
                            now = {"batch": b, "rounds": [*rounds, rnd]}
                            partial = {**result, "partial": True, "peaks": peaks,
                                       "runs": [*result["runs"], now]}  # fmt: skip
                            Path(args.out).write_text(json.dumps(partial, default=str))
                    rounds.append(rnd)
                result["runs"].append({"batch": b, "rounds": rounds})
            result["versions"] = versions
            finish(result, peaks, cfg)
        log_text = None if args.log else log_path.read_text()
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - t_start
    print(format_table(result), flush=True)
    path = write_result(result, args.out, suffix="-compare")
    if log_text is not None:
        path.with_suffix(".log").write_text(log_text)
    return result


if __name__ == "__main__":
    main()
