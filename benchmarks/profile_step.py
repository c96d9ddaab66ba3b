"""Where the JAX train step's time goes: a jax.profiler trace, summed per XLA op.

Runs `steps.create_train_step` (the step train.py runs) on MMNIST-S-shaped data, traces
`--steps` calls after a warm-up, and prints the ops that took the most time, summed over
the calls (ops inside the mixer's scan body are summed over the blocks too), with their
share of the step. The trace itself stays in `--trace-dir` for Perfetto / TensorBoard.

    python benchmarks/profile_step.py --size S --batch 4
    python benchmarks/profile_step.py --size S --batch 4 --forward   # the eval forward
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _trace_events(trace_dir: Path) -> list[dict]:
    files = sorted(trace_dir.rglob("perfetto_trace.json.gz")) or sorted(
        trace_dir.rglob("*.trace.json.gz")
    )
    if not files:
        raise SystemExit(f"profile_step.py: no trace file under {trace_dir}")
    with gzip.open(files[-1], "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def summarise(events: list[dict], calls: int, top: int) -> list[tuple[str, float, int]]:
    """(op name, ms per call, count per call) of complete events on XLA's worker threads."""
    names = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names[(e.get("pid"), e.get("tid"))] = e["args"]["name"]
    per_op: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        thread = names.get((e.get("pid"), e.get("tid")), "")
        # Python-side and launch events are not XLA ops.
        if "python" in thread.lower() or e["name"].startswith(("$", "PjitFunction")):
            continue
        per_op[e["name"]].append(e["dur"] / 1e3)
    rows = [(name, sum(d) / calls, len(d) // max(calls, 1)) for name, d in per_op.items()]
    rows.sort(key=lambda r: -r[1])
    return rows[:top]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="S", choices=["XS", "S", "M", "L"])
    p.add_argument("--dim", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--forward", action="store_true", help="profile the eval forward instead")
    p.add_argument("--trace-dir", default=None)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from stlight_jax import sharding, steps
    from stlight_jax.model_size import PAPER_SIZES
    from stlight_jax.models import ModelConfig, create_model

    fields = dict(PAPER_SIZES[f"mmnist_{args.size}"][0])
    fields.update({k: v for k, v in (("dim", args.dim), ("depth", args.depth)) if v})
    cfg = ModelConfig(**fields)
    rng = np.random.default_rng(0)
    shape = (args.batch, cfg.frames_in, *cfg.image_size, cfg.channels)
    x = rng.random(shape, dtype=np.float32)
    y = rng.random(shape, dtype=np.float32)
    model = create_model(cfg, seed=0)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    mesh = sharding.create_mesh(jax.devices()[:1])
    if args.forward:
        forward = steps.create_forward(graphdef, mesh)  # the evaluation forward

        def call():
            forward(params, stats, x).block_until_ready()
    else:
        tx = optax.adam(1e-3)
        _, state = steps.split_model(model, tx)
        step = steps.create_train_step(graphdef, tx, lambda s: 1e-3, mesh)
        holder = {"state": sharding.replicate(state, mesh)}
        batch = sharding.global_batch({"inputs": x, "targets": y}, mesh)

        def call():
            holder["state"], out = step(holder["state"], batch)
            jnp.asarray(out["loss"]).block_until_ready()

    t = time.perf_counter()
    call()
    print(f"first call (compile + run): {time.perf_counter() - t:.2f} s")
    call()
    trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix="stlight-profile-"))
    times = []
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(args.steps):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    wall = sum(times) / len(times) * 1e3
    print(
        f"{'forward' if args.forward else 'train step'}: {wall:.0f} ms per call "
        f"(traced, {args.steps} calls: {', '.join(f'{s * 1e3:.0f}' for s in times)} ms)"
    )
    rows = summarise(_trace_events(trace_dir), args.steps, args.top)
    print(f"{'ms/call':>9} {'share':>6} {'n':>4}  op")
    for name, ms, n in rows:
        print(f"{ms:9.1f} {ms / wall:6.1%} {n:4d}  {name}")
    print(f"trace: {trace_dir}")


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    main()
