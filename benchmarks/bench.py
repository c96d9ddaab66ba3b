"""Times stlight-jax against the PyTorch reference in one process: forward, train step, compile.

Run `python benchmarks/bench.py --help`; see benchmarks/README.md for the table it prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MMNIST_SIZES = ["XS", "S", "M", "L"]  # paper Table 3; dims from stlight_jax.model_size
PAPER_STEPS = 125_000  # 200 epochs x 625 steps of 16 on Moving MNIST's 10,000 sequences


# ---------------------------------------------------------------------------------------------
# Memory: process peak RSS per phase (CPU) and allocator peaks (GPU).


def _reset_peak_rss() -> bool:
    """Resets VmHWM (Linux >= 4.0), so the next reading is the peak of the coming phase."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(backend: str, device: str | None = None) -> dict[str, Any]:
    """The 'machine' entry every benchmark JSON carries (device kind where one is known)."""
    info = {
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": backend,
    }
    if device is not None:
        info["device"] = device
    info["loadavg_start"] = os.getloadavg()
    return info


# ---------------------------------------------------------------------------------------------
# Timing.


@dataclasses.dataclass
class Case:
    """One timed callable: `run()` does one blocking step, `compile_s` its first-call cost."""

    name: str
    run: Callable[[], Any]
    batch: int
    compile_s: float | None = None
    times: list[float] = dataclasses.field(default_factory=list)
    peak_mb: float | None = None
    error: str | None = None
    # GPU: allocator peak of this case's first call (torch: reset before it; JAX cannot reset,
    # so its figure is the process's peak so far). Both: None on CPU.
    reset_device_peak: Callable[[], None] | None = None
    read_device_peak_mb: Callable[[], float | None] | None = None
    device_peak_mb: float | None = None
    # JAX: one AOT compile of the case, probed after timing (an AOT compile before the first
    # call could pre-empt its compile), giving XLA's own accounting of the executable
    # (arguments + outputs + temps) and its cost analysis's bytes read and written (an
    # estimate: what the fusions touch, caches ignored; for the memory-bandwidth share).
    xla_probe: Callable[[], tuple[float | None, float | None]] | None = None
    xla_memory_mb: float | None = None
    xla_bytes_accessed: float | None = None
    # JAX: executables the jitted function holds after timing (1: no call recompiled it).
    count_compiles: Callable[[], int] | None = None
    compiles: int | None = None
    # JAX: the compile share of the first call (tracing, lowering, XLA), from JAX's own events.
    jax_compile_s: float | None = None

    def summary(self) -> dict[str, Any]:
        if self.error is not None:
            return {"name": self.name, "error": self.error}
        med = statistics.median(self.times)
        out = {
            "name": self.name,
            "median_s": med,
            "min_s": min(self.times),
            "max_s": max(self.times),
            "times_s": self.times,
            "samples_per_s": self.batch / med,
            "compile_s": self.compile_s,
            "jax_compile_s": self.jax_compile_s,
            "peak_mem_mb": self.peak_mb,
            "device_peak_mb": self.device_peak_mb,
            "xla_memory_mb": self.xla_memory_mb,
            "xla_bytes_accessed": self.xla_bytes_accessed,
            "compiles": self.compiles,
        }
        if self.name.endswith("train step") and self.batch == 16:  # the paper's batch
            out["paper_schedule_h"] = med * PAPER_STEPS / 3600
        return out


# JAX's compile events; their durations summed over a first call are its compile time alone
# (compile_s is compile + one run). Recorded by a listener jax_cases registers.
JAX_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_jax_compile_durations: list[float] = []
_listening = False


def _listen_to_jax_compiles() -> None:
    global _listening
    if _listening:
        return
    from jax import monitoring

    def record(event: str, duration: float, **kwargs) -> None:
        if event in JAX_COMPILE_EVENTS:
            _jax_compile_durations.append(duration)

    monitoring.register_event_duration_secs_listener(record)
    _listening = True


def _first_call(case: Case) -> None:
    gc.collect()
    _reset_peak_rss()
    if case.reset_device_peak:
        case.reset_device_peak()
    seen = len(_jax_compile_durations)
    t = time.perf_counter()
    try:
        case.run()
    except Exception as e:  # reported as n/a in the table, with the reason
        case.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return
    case.compile_s = time.perf_counter() - t
    if case.count_compiles is not None:  # a JAX case
        case.jax_compile_s = sum(_jax_compile_durations[seen:])
    if case.read_device_peak_mb:
        case.device_peak_mb = case.read_device_peak_mb()


def _time_interleaved(cases: list[Case], warmup: int, repeats: int) -> None:
    """Warm-up, then `repeats` rounds that run every case once each, so load drifts on the
    shared machine hit all cases alike; the table reports medians."""
    live = [c for c in cases if c.error is None]
    for _ in range(warmup):
        for c in live:
            c.run()
    for c in live:
        c.peak_mb = None
    for _ in range(repeats):
        for c in live:
            gc.collect()
            t = time.perf_counter()
            c.run()
            c.times.append(time.perf_counter() - t)


# ---------------------------------------------------------------------------------------------
# PyTorch side.


def torch_cases(cfg, args, x: np.ndarray, y: np.ndarray, backend: str) -> tuple[list[Case], dict]:
    import torch

    from stlight_jax.reference import reference_from_config

    info: dict[str, Any] = {"torch": torch.__version__}
    dev = torch.device("cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        info["torch_threads"] = torch.get_num_threads()
    else:
        tf32 = args.precision == "float32" and args.matmul_precision != "highest"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        info["torch_tf32"] = tf32
    torch.manual_seed(0)
    # (B, T, H, W, C) -> the reference's (B, T, C, H, W)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))).to(dev)
    yt = torch.from_numpy(np.ascontiguousarray(y.transpose(0, 1, 4, 2, 3))).to(dev)
    bf16 = args.precision == "bf16"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def make(model, label: str) -> list[Case]:
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

        def fwd():
            model.eval()
            with torch.inference_mode(), autocast:
                model(xt)
            sync()

        def step():
            model.train()
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.mean(torch.square(model(xt).float() - yt))
            loss.backward()
            opt.step()
            sync()

        b = x.shape[0]
        peaks = {}
        if dev.type == "cuda":
            peaks = {
                "reset_device_peak": torch.cuda.reset_peak_memory_stats,
                "read_device_peak_mb": lambda: torch.cuda.max_memory_allocated() / 2**20,
            }
        return [
            Case(f"{label} forward", fwd, b, **peaks),
            Case(f"{label} train step", step, b, **peaks),
        ]

    eager = reference_from_config(cfg).to(dev)
    cases = make(eager, "torch eager") if args.side in ("all", "torch-eager") else []
    want_compile = args.torch_compile if args.side in ("all", "torch-compile") else "off"
    if args.side == "torch-compile" and want_compile == "off":
        raise SystemExit("bench.py: --side torch-compile needs --torch-compile auto or on")
    if want_compile == "auto":
        import shutil

        want_compile = "on" if (dev.type == "cuda" or shutil.which("g++")) else "off"
    if want_compile == "on":
        compiled_model = reference_from_config(cfg).to(dev)
        compiled_model.load_state_dict(eager.state_dict())
        try:
            compiled = torch.compile(compiled_model)
            cases += make(compiled, "torch.compile")
        except Exception as e:
            info["torch_compile"] = f"n/a: {type(e).__name__}: {e}"
    elif args.side == "all":
        info["torch_compile"] = "n/a: disabled (--torch-compile off, or no C++ compiler on CPU)"
    return cases, info


# ---------------------------------------------------------------------------------------------
# JAX side.


def jax_cases(cfg, args, x: np.ndarray, y: np.ndarray) -> tuple[list[Case], dict]:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from stlight_jax import ops, sharding, steps
    from stlight_jax.models import create_model

    if args.matmul_precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
    compute = "bfloat16" if args.precision == "bf16" else "float32"
    model = create_model(cfg, seed=0, dtype=compute)
    tx = optax.adam(args.lr)
    xj = jnp.asarray(x)
    info = {
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
        "jax_backend": jax.default_backend(),
        "jax_device": str(jax.devices()[0].device_kind),
        "conv_impl": ops.resolve_conv_impl(cfg.conv_impl),
        "jax_matmul_precision": args.matmul_precision,
    }
    try:
        import flax

        info["flax"] = flax.__version__
    except Exception:
        pass

    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    # The train step donates its state; the forward keeps its own copy of the weights.
    fwd_params, fwd_stats = jax.tree.map(jnp.copy, (params, batch_stats))

    @jax.jit
    def forward(params, batch_stats, inputs):
        m = nnx.merge(graphdef, params, batch_stats, copy=True)
        return m(inputs, use_running_average=True)

    _, state = steps.split_model(model, tx)
    mesh = sharding.create_mesh(jax.devices()[:1])
    jitted = steps.create_train_step(graphdef, tx, lambda s: args.lr, mesh)
    # Placed as train.py places them: the step's outputs are committed to the mesh, and
    # uncommitted first inputs would make the second call compile the step again.
    state = sharding.replicate(state, mesh)
    batch = sharding.global_batch({"inputs": x, "targets": y}, mesh)
    holder = {"state": state}

    def step_fn():
        holder["state"], out = jitted(holder["state"], batch)
        out["loss"].block_until_ready()

    info["train_step"] = "stlight_jax.steps.create_train_step"

    def fwd_fn():
        forward(fwd_params, fwd_stats, xj).block_until_ready()

    b = x.shape[0]
    peaks = {}
    if jax.default_backend() != "cpu":
        peaks["read_device_peak_mb"] = lambda: _jax_device_peak_mb(jax.devices()[0])
    cases = [
        Case("stlight-jax forward", fwd_fn, b, **peaks),
        Case("stlight-jax train step", step_fn, b, **peaks),
    ]
    cases[0].xla_probe = lambda: _xla_analyses(forward, fwd_params, fwd_stats, xj)
    cases[1].xla_probe = lambda: _xla_analyses(jitted, holder["state"], batch)
    _listen_to_jax_compiles()
    cases[0].count_compiles = forward._cache_size  # private, but the only count jax gives
    cases[1].count_compiles = jitted._cache_size
    return cases, info


def _xla_analyses(jitted, *args) -> tuple[float | None, float | None]:
    """(MB the compiled executable needs on the device: arguments + outputs + temps minus
    donated aliases, as XLA plans it; XLA's 'bytes accessed'), from one compile; either is
    None where the backend does not say."""
    try:
        compiled = jitted.lower(*args).compile()
    except Exception:
        return None, None
    try:
        m = compiled.memory_analysis()
        memory_mb = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        ) / 2**20
    except Exception:  # memory_analysis is optional per backend
        memory_mb = None
    return memory_mb, xla_bytes_accessed(compiled)


def xla_bytes_accessed(compiled) -> float | None:
    """'bytes accessed' from XLA's cost analysis of a compiled executable (None where the
    backend does not say)."""
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
            cost = cost[0]
        value = cost.get("bytes accessed")
    except Exception:  # cost_analysis is optional per backend
        return None
    return None if value is None else float(value)


def _jax_device_peak_mb(device) -> float | None:
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="S", choices=MMNIST_SIZES, help="MMNIST size (paper Table 3)")
    p.add_argument("--dim", type=int, help="override dim")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--batch", type=int, nargs="+", default=None, help="CPU: 4 16; GPU: 16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", default="float32", choices=["float32", "bf16"])
    p.add_argument(
        "--matmul-precision",
        default="default",
        choices=["default", "highest"],
        help="GPU: 'default' lets both sides use TF32 for float32; 'highest' disables it",
    )
    p.add_argument("--conv-impl", default="auto", choices=["auto", "lax", "shifted"])
    p.add_argument(
        "--no-xla-probes",
        dest="xla_probes",
        action="store_false",
        help="skip XLA's memory and cost analyses after timing (they compile the case again)",
    )
    p.add_argument("--torch-compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument(
        "--side",
        default="all",
        choices=["all", "jax", "torch-eager", "torch-compile"],
        help="which framework(s) this process times; compare.py runs one per process",
    )
    p.add_argument("--no-torch", action="store_true", help="= --side jax")
    p.add_argument("--no-jax", action="store_true", help="torch sides only")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--malloc",
        default="default",
        choices=["default", "hugepages", "tuned"],
        help="glibc malloc for both frameworks: 'default' leaves glibc as is (the headline "
        "tables), 'hugepages' restarts with the THP tunable as train.py does, 'tuned' keeps "
        "freed memory (runtime.tune_cpu_malloc; at batch 16 with torch it overflowed 24 GiB)",
    )
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    if args.no_torch:
        args.side = "jax"
    run_torch = args.side != "jax" and not args.no_torch
    run_jax = args.side in ("all", "jax") and not args.no_jax

    from stlight_jax import runtime

    if args.malloc == "hugepages" and argv is None:  # a restart needs our own command line
        runtime.reexec_with_malloc_hugepages()
    malloc_tuned = args.malloc == "tuned" and runtime.tune_cpu_malloc()

    import jax

    from stlight_jax.model_size import PAPER_SIZES
    from stlight_jax.models import ModelConfig

    backend = jax.default_backend()
    batches = args.batch or ([4, 16] if backend == "cpu" else [16])
    sizes = dict(PAPER_SIZES[f"mmnist_{args.size}"][0], depth=args.depth)
    if args.dim:
        sizes["dim"] = args.dim
    cfg = ModelConfig(**sizes, conv_impl=args.conv_impl)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(backend, str(jax.devices()[0].device_kind)),
        "python": platform.python_version(),
        "config": dataclasses.asdict(cfg),
        "precision": args.precision,
        "malloc": args.malloc,
        "malloc_tuned": malloc_tuned,
        "malloc_hugepages": runtime.malloc_hugepages_active(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "runs": [],
    }
    rows = []
    for b in batches:
        rng = np.random.default_rng(b)
        x = rng.random((b, 10, 64, 64, 1), dtype=np.float32)
        y = rng.random((b, 10, 64, 64, 1), dtype=np.float32)
        cases: list[Case] = []
        if run_torch:
            tc, tinfo = torch_cases(cfg, args, x, y, backend)
            cases += tc
            result.setdefault("versions", {}).update({k: v for k, v in tinfo.items()})
        if run_jax:
            jc, jinfo = jax_cases(cfg, args, x, y)
            cases += jc
            result.setdefault("versions", {}).update(jinfo)
        for c in cases:
            _first_call(c)
            c.peak_mb = _peak_rss_mb()
            compiling = f" ({c.jax_compile_s:.2f} s compiling)" if c.jax_compile_s else ""
            print(
                f"  first call {c.name:26s} {c.compile_s or float('nan'):8.2f} s{compiling}",
                flush=True,
            )
        peaks = {c.name: c.peak_mb for c in cases}
        _time_interleaved(cases, args.warmup, args.repeats)
        for c in cases:
            c.peak_mb = peaks[c.name]
            if c.count_compiles and c.error is None:
                c.compiles = c.count_compiles()
            if c.xla_probe and c.error is None and args.xla_probes:
                c.xla_memory_mb, c.xla_bytes_accessed = c.xla_probe()
        summaries = {c.name: c.summary() for c in cases}
        result["runs"].append({"batch": b, "cases": summaries})
        rows.append((b, summaries))
        print(format_table([(b, summaries)], result), flush=True)
        del cases
        gc.collect()
    result["machine"]["loadavg_end"] = os.getloadavg()
    if len(rows) > 1:
        print(format_table(rows, result))
    if not args.no_json:
        write_result(result, args.out)
    return result


def write_result(result: dict, out: str | None, suffix: str = "") -> Path:
    """Writes a run's JSON to `out`, by default results/<host>-<backend or cpuN>-<date><suffix>.json
    (shared with eval_throughput.py); needs result['date'] and result['machine']."""
    if out:
        path = Path(out)
    else:
        machine = result["machine"]
        kind = machine["backend"] if machine["backend"] != "cpu" else f"cpu{machine['cpu_count']}"
        name = f"{socket.gethostname().split('.')[0]}-{kind}-{result['date'][:10]}{suffix}.json"
        path = ROOT / "benchmarks" / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return path


def format_table(rows: list[tuple[int, dict]], result: dict) -> str:
    on_device = result["machine"]["backend"] != "cpu"
    mem_label = "dev peak MB" if on_device else "peak RSS MB"
    lines = [
        f"dim={result['config']['dim']} depth={result['config']['depth']} "
        f"precision={result['precision']} backend={result['machine']['backend']} "
        f"({result['machine']['cpu']}, {result['machine']['cpu_count']} cores)",
        f"{'batch':>5} {'case':28s} {'median ms':>10} {'samples/s':>10} {'1st call s':>10} "
        f"{mem_label:>12} {'XLA mem MB':>10} {'JAX speedup':>12}",
    ]
    for b, s in rows:
        for kind in ("forward", "train step"):
            jax_case = s.get(f"stlight-jax {kind}")
            for name in (f"torch eager {kind}", f"torch.compile {kind}", f"stlight-jax {kind}"):
                c = s.get(name)
                if c is None:
                    continue
                if "error" in c:
                    lines.append(f"{b:5d} {name:28s} n/a: {c['error']}")
                    continue
                ratio = ""
                if jax_case and "median_s" in jax_case and not name.startswith("stlight"):
                    ratio = f"{c['median_s'] / jax_case['median_s']:.2f}x"
                comp = f"{c['compile_s']:.2f}" if c.get("compile_s") is not None else "-"
                if c.get("jax_compile_s"):
                    comp = f"{c['jax_compile_s']:.1f}/{comp}"
                peak = c.get("device_peak_mb") if on_device else c.get("peak_mem_mb")
                peak = f"{peak:.0f}" if peak else "-"
                xla = f"{c['xla_memory_mb']:.0f}" if c.get("xla_memory_mb") else "-"
                lines.append(
                    f"{b:5d} {name:28s} {c['median_s'] * 1e3:10.1f} {c['samples_per_s']:10.2f} "
                    f"{comp:>10} {peak:>12} {xla:>10} {ratio:>12}"
                )
        for name, c in s.items():
            if "paper_schedule_h" in c:
                lines.append(
                    f"{b:5d} {name:28s} the paper's 200 epochs ({PAPER_STEPS:,} steps) take "
                    f"{c['paper_schedule_h']:.1f} h"
                )
    lines.append("JAX speedup = PyTorch median time / stlight-jax median time (>1: JAX faster).")
    lines.append(
        "1st call s: compile + one run; for stlight-jax, compiling alone / the whole first call."
    )
    if on_device:
        lines.append(
            "dev peak: allocator peak during the first call (torch: reset before each case; "
            "JAX: the process's peak so far)."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
