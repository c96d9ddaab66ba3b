"""What the compiled train step does in each precision: convolution and dot dtypes, XLA's FLOPs
and bytes-accessed estimates. Picks the GPU suite's training precision from the HLO, not a guess.

    python benchmarks/precision_hlo.py --config configs/mmnist.py:L            # this backend
    python benchmarks/precision_hlo.py --config configs/mmnist.py:cpu --out x.json

For each of float32 and bfloat16 compute (parameters and BatchNorm statistics stay float32 in
both), the train step of `steps.create_train_step` is lowered and compiled on the default
backend; the script counts the convolutions and dots of the optimised HLO by operand dtype and
reads `cost_analysis()`. On an NVIDIA GPU, float32 convolutions run as TF32 (JAX's default
precision) at half the bf16 tensor-core rate, so the step whose convolutions are all bf16 and
whose bytes are fewer is the faster one wherever the step is bound by either.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Optimised HLO: "%conv.2 = bf16[2,32,32,8]{3,2,1,0} convolution(%a, %b), ...".
_HLO_OP = re.compile(r"= (\w+)\[[^\]]*\]\{[^}]*\} (convolution|dot)\(")
# StableHLO: "%5 = stablehlo.convolution(...) ... -> tensor<2x32x32x8xbf16>" (the result type
# closes the line; dot_general likewise).
_MLIR_OP = re.compile(r"stablehlo\.(convolution|dot_general)\b.*-> tensor<[^>]*x(\w+)>")


def count_ops(compiled_hlo: str, lowered_mlir: str) -> dict[str, dict[str, int]]:
    """Convolutions and dots by result dtype, as the program asks for them (StableHLO) and as
    the backend runs them (optimised HLO; XLA:CPU computes bf16 in float32, a GPU does not)."""
    asked: collections.Counter = collections.Counter()
    for op, dtype in _MLIR_OP.findall(lowered_mlir):
        asked[f"{op} {dtype}"] += 1
    run: collections.Counter = collections.Counter()
    for dtype, op in _HLO_OP.findall(compiled_hlo):
        run[f"{op} {dtype}"] += 1
    return {"stablehlo": dict(sorted(asked.items())), "compiled": dict(sorted(run.items()))}


def analyse(config_spec: str, compute_dtype: str, batch: int | None, conv_impl: str) -> dict:
    import jax
    import numpy as np
    import optax

    from stlight_jax import sharding, steps
    from stlight_jax.config.files import load_config

    config = load_config(config_spec)
    config.compute_dtype = compute_dtype
    config.model.conv_impl = conv_impl
    b = batch or config.data.batch_size
    tx = optax.adam(1e-3)  # the optimizer is elementwise: the convolutions are the question
    graphdef, state = steps.create_train_state(config, tx)
    mesh = sharding.create_mesh(jax.devices()[:1])
    step = steps.create_train_step(graphdef, tx, lambda s: 1e-3, mesh)
    m = config.model
    shape = (b, m.frames_in, *m.image_size, m.channels)
    rng = np.random.default_rng(0)
    batch_arrays = {
        "inputs": rng.random(shape, dtype=np.float32),
        "targets": rng.random((b, m.frames_out, *m.image_size, m.channels), dtype=np.float32),
    }
    state = sharding.replicate(state, mesh)
    batch_arrays = sharding.global_batch(batch_arrays, mesh)
    lowered = step.lower(state, batch_arrays)
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return {
        "compute_dtype": compute_dtype,
        "batch": b,
        "ops": count_ops(compiled.as_text(), lowered.as_text()),
        "xla_flops": float(cost.get("flops", 0.0)),
        "xla_bytes_accessed": float(cost.get("bytes accessed", 0.0)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/mmnist.py:L", help="config file[:arg]")
    p.add_argument("--batch", type=int, default=None, help="default: the config's batch")
    p.add_argument(
        "--conv-impl",
        default="lax",
        choices=["auto", "lax", "shifted"],
        help="depthwise formulation (default 'lax': grouped convolutions, what a GPU runs)",
    )
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    args = p.parse_args(argv)

    import jax

    result = {
        "config": args.config,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "conv_impl": args.conv_impl,
        "runs": [
            analyse(args.config, d, args.batch, args.conv_impl) for d in ("float32", "bfloat16")
        ],
    }
    f32, bf16 = result["runs"]
    if f32["xla_bytes_accessed"]:
        result["bf16_bytes_over_f32"] = bf16["xla_bytes_accessed"] / f32["xla_bytes_accessed"]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
