"""bf16 compute keeps float32 parameters, optimizer state and BatchNorm statistics."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from stlight_jax import sharding
from stlight_jax.steps import create_train_state, create_train_step
from stlight_jax.training import optimizer as optim
from stlight_jax.training import schedules


def _train_step(compute_dtype: str, data_path: str):
    """(initial state, jitted train step, mesh) of the tiny config in `compute_dtype`."""
    config = tiny_config.get_config(data_path)
    config.compute_dtype = compute_dtype
    scheds = schedules.create_schedules(config, 4)
    tx = optim.create_optimizer(config, scheds)
    graphdef, state = create_train_state(config, tx)
    mesh = sharding.create_mesh(jax.devices()[:1])
    return state, create_train_step(graphdef, tx, scheds.lr, mesh), mesh


def _run(compute_dtype: str, data_path: str, steps: int = 3):
    state, step, mesh = _train_step(compute_dtype, data_path)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        batch = {
            "inputs": rng.random((8, 4, 16, 16, 1), np.float32),
            "targets": rng.random((8, 4, 16, 16, 1), np.float32),
        }
        state, m = step(state, sharding.global_batch(batch, mesh))
        losses.append(float(m["loss"]))
    return state, losses


@pytest.mark.slow  # a bf16 training run: ~30 s on 2 cores
def test_bf16_compute_with_float32_state(tmp_path):
    path = tiny_config.write_data(str(tmp_path / "data.npz"))
    state16, losses16 = _run("bfloat16", path)
    state32, losses32 = _run("float32", path)
    for tree in (state16["params"], state16["batch_stats"], state16["opt_state"]):
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32
    assert all(np.isfinite(losses16))
    # Same model, same data: bf16 rounding moves the loss a little, not a lot.
    np.testing.assert_allclose(losses16, losses32, rtol=0.05)
    assert losses16 != losses32


def _conv_and_dot_operand_types(compute_dtype: str, data_path: str) -> list[str]:
    """The element types of every convolution and matmul in the train step's program."""
    state, step, _ = _train_step(compute_dtype, data_path)
    batch = {k: np.zeros((8, 4, 16, 16, 1), np.float32) for k in ("inputs", "targets")}
    text = step.lower(state, batch).as_text()
    ops = [
        line.rsplit(":", 1)[1]
        for line in text.splitlines()
        if re.search(r"stablehlo\.(convolution|dot_general)\b", line)
    ]
    return [",".join(sorted(set(re.findall(r"x(bf16|f16|f32|f64)>", sig)))) for sig in ops]


def test_bf16_compute_runs_every_conv_and_matmul_in_bf16(tmp_path):
    """What the step asks XLA for: with compute_dtype=bfloat16 every convolution and matmul,
    forward and backward, takes and gives bf16 (an f32 computation rounded to bf16 at the end
    would still move the loss a little); with float32, none does."""
    path = tiny_config.write_data(str(tmp_path / "data.npz"))
    bf16 = _conv_and_dot_operand_types("bfloat16", path)
    f32 = _conv_and_dot_operand_types("float32", path)
    assert len(bf16) == len(f32) >= 6, (bf16, f32)  # 8 here: the depthwise taps are slices on CPU
    assert set(bf16) == {"bf16"}, bf16
    assert set(f32) == {"f32"}, f32
