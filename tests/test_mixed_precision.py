"""bf16 compute keeps float32 parameters, optimizer state and BatchNorm statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import tiny_config

from stlight_jax import optim, schedules, sharding
from stlight_jax.steps import create_train_state, create_train_step


def _run(compute_dtype: str, data_path: str, steps: int = 3):
    config = tiny_config.get_config(data_path)
    config.compute_dtype = compute_dtype
    scheds = schedules.create_schedules(config, 4)
    tx = optim.create_optimizer(config, scheds)
    graphdef, state = create_train_state(config, tx)
    mesh = sharding.create_mesh(jax.devices()[:1])
    step = create_train_step(graphdef, tx, scheds.lr, mesh)
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
    assert losses16 != losses32  # and it really computed in bf16
