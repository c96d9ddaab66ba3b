"""Evaluation throughput: a whole test split through stlight-jax's own evaluation path.

Runs `evaluation.loop.evaluate_split`, the eval loop evaluate.py and training use (the Grain eval
pipeline, the jitted eval step with OpenSTL's metrics and both baselines, data-parallel over
all local devices; evaluate.py adds only its picture hook) on a synthetic test set of
`--sequences` random uint8 videos stored as a custom-data .npz, so it needs no dataset. The
first pass includes compilation; the reported figure is the median of the later passes.

    python benchmarks/eval_throughput.py --config configs/mmnist.py:L        # 10,000 sequences
    python benchmarks/eval_throughput.py --config configs/mmnist.py:cpu --sequences 256
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def synthetic_test_set(path: Path, sequences: int, frames: int, size: tuple, channels: int):
    """An .npz of random uint8 videos (N, T, H, W, C): 'train' is a token 2 sequences."""
    rng = np.random.default_rng(0)
    shape = (sequences, frames, *size, channels)
    test = rng.integers(0, 256, size=shape, dtype=np.uint8)
    np.savez(path, train=test[:2], test=test)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/mmnist.py:L", help="config file[:arg]")
    p.add_argument("--sequences", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=None, help="eval batch (default: the config's)")
    p.add_argument("--passes", type=int, default=3, help="timed passes after the first")
    p.add_argument("--precision", default=None, choices=["float32", "bf16"])
    p.add_argument("--no-baselines", action="store_true", help="model metrics only")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    p.add_argument("--no-json", action="store_true")
    args = p.parse_args(argv)
    if args.sequences < 1:
        p.error(f"--sequences must be >= 1, got {args.sequences}")
    if args.passes < 1:
        p.error(f"--passes must be >= 1, got {args.passes}")

    import jax
    from flax import nnx

    from benchmarks.bench import write_result
    from stlight_jax import sharding, steps
    from stlight_jax.config.files import load_config, model_config
    from stlight_jax.evaluation import loop as eval_loop
    from stlight_jax.models import create_model

    config = load_config(args.config)
    if args.batch:
        config.data.eval_batch_size = args.batch
    if args.precision:
        config.compute_dtype = "bfloat16" if args.precision == "bf16" else "float32"
    m = config.model
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.npz"
        t = time.perf_counter()
        synthetic_test_set(
            path, args.sequences, m.frames_in + m.frames_out, tuple(m.image_size), m.channels
        )
        make_s = time.perf_counter() - t
        config.data.name = "custom"
        config.data.path = str(path)
        config.data.layout = "NTHWC"
        config.data.value_range = (0, 255)
        config.data.num_val = 0

        mesh = sharding.create_mesh()
        model = create_model(model_config(config), seed=config.seed, dtype=config.compute_dtype)
        graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        eval_step = steps.create_eval_step(graphdef, mesh)
        times, result = [], None
        for _ in range(1 + args.passes):
            t = time.perf_counter()
            predictors = ("model",) if args.no_baselines else steps.PREDICTORS
            result = eval_loop.evaluate_split(
                config, eval_step, params, batch_stats, mesh, "test", predictors
            )
            times.append(time.perf_counter() - t)

    median = statistics.median(times[1:])
    out = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "hostname": socket.gethostname(),
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "device_count": jax.device_count(),
            "cpu_count": os.cpu_count(),
        },
        "python": platform.python_version(),
        "jax": jax.__version__,
        "config": args.config,
        "model": {k: m[k] for k in ("dim", "depth", "patch", "frames_in", "frames_out")},
        "compute_dtype": config.compute_dtype,
        "sequences": args.sequences,
        "eval_batch_size": int(config.data.eval_batch_size),
        "baselines": not args.no_baselines,
        "first_pass_s": times[0],
        "pass_times_s": times[1:],
        "median_pass_s": median,
        "sequences_per_s": args.sequences / median,
        "synthetic_data_s": make_s,
        "model_mse_on_noise": result["model"]["mse"],
    }
    print(
        f"{args.config}: {args.sequences} sequences at eval batch {out['eval_batch_size']} on "
        f"{jax.device_count()} x {out['machine']['device']} ({config.compute_dtype}): first pass "
        f"{times[0]:.1f} s (with compile), then median {median:.2f} s = "
        f"{out['sequences_per_s']:.1f} sequences/s"
    )
    if not args.no_json:
        write_result(out, args.out, suffix="-eval")
    return out


if __name__ == "__main__":
    from stlight_jax import runtime

    runtime.reexec_with_malloc_hugepages()  # as evaluate.py does
    main()
