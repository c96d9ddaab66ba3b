"""Moving MNIST pipeline throughput at batch 16 vs. the STLight train step that consumes it.

Usage: python benchmarks/data_throughput.py [--batches 200] [--steps 3] [--skip_model]
The issue asks for a pipeline at least 5x faster than the MMNIST-S train step on this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

# Run as a script from anywhere: the repo root holds `configs` and `stlight_jax`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stlight_jax import data  # noqa: E402
from stlight_jax.configs.common import get_base_config  # noqa: E402


def pipeline_rate(config, batches: int) -> float:
    """Batches per second from a warm train iterator (digits loaded, threads started)."""
    it = data.create_train_iterator(config)
    for _ in range(5):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t)


def train_step_rate(config, steps: int) -> float | None:
    """Train steps per second of a jitted Adam/MSE step on the config's model, or None."""
    try:
        import jax
        import optax
        from flax import nnx

        from stlight_jax import models
    except ImportError as e:
        print(f"train step: skipped ({e}); only the pipeline rate is measured")
        return None
    model = models.create_model(models.ModelConfig.from_config(config.model))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(config.optimizer.learning_rate)
    opt_state = tx.init(params)

    def loss_fn(p, rest, batch):
        m = nnx.merge(graphdef, p, rest, copy=True)
        pred = m(batch["inputs"])
        new_rest = nnx.state(m, nnx.Not(nnx.Param))
        return ((pred - batch["targets"]) ** 2).mean(), new_rest

    @jax.jit
    def step(p, rest, opt_state, batch):
        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, rest, batch)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), rest, opt_state, loss

    batch = next(data.create_train_iterator(config))
    params, rest, opt_state, loss = step(params, rest, opt_state, batch)  # compile
    jax.block_until_ready(loss)
    t = time.perf_counter()
    for _ in range(steps):
        params, rest, opt_state, loss = step(params, rest, opt_state, batch)
    jax.block_until_ready(loss)
    assert np.isfinite(float(loss))
    return steps / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip_model", action="store_true")
    args = parser.parse_args()
    config = get_base_config()  # Moving MNIST, STLight-S, batch 16
    config.data.data_dir = tempfile.mkdtemp()
    rate = pipeline_rate(config, args.batches)
    print(f"pipeline: {rate:.1f} Moving MNIST batches/s at batch {config.data.batch_size}")
    if args.skip_model:
        return
    step_rate = train_step_rate(config, args.steps)
    if step_rate is not None:
        print(f"train step ({config.name}): {step_rate:.3f} steps/s on {_device()}")
        print(f"pipeline / train step: {rate / step_rate:.0f}x (target: >= 5x)")


def _device() -> str:
    import jax

    return f"{jax.devices()[0].platform} x{jax.device_count()}"


if __name__ == "__main__":
    main()
