"""Checkpoints written by earlier code still load: evaluation restores the weights, training
resumes from the full state (optimizer included), and the network computes what it did then.

`tests/data/workdir_e54521e` is a training workdir written at commit e54521e by
`train_and_evaluate` on `tests/tiny_config.py` (depth 3, dim 16, one epoch: checkpoint step 4;
its config.json names data files that no longer exist and are not read here). `expected.npz`
holds, from the same commit, two random input sequences, the restored model's predictions for
them and its Figure 10 state_dict (keys prefixed `torch/`).
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from stlight_jax import steps
from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.config import files as config_io
from stlight_jax.training import optimizer as optim
from stlight_jax.training import schedules
from stlight_jax.weights import loading as weights
from stlight_jax.weights import torch_files as convert

WORKDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "workdir_e54521e")


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(os.path.join(WORKDIR, "expected.npz")) as f:
        return dict(f)


def test_evaluation_loads_old_workdir(expected):
    loaded = weights.load_model(config_io.load_workdir_config(WORKDIR), workdir=WORKDIR)
    assert loaded.source["step"] == 4
    model = nnx.merge(loaded.graphdef, loaded.params, loaded.batch_stats)
    state_dict = convert.model_state_dict(model)
    torch_keys = {k[len("torch/") :] for k in expected if k.startswith("torch/")}
    assert set(state_dict) == torch_keys
    for key, value in state_dict.items():
        np.testing.assert_array_equal(value, expected[f"torch/{key}"], err_msg=key)
    pred, _ = steps.apply_model(
        loaded.graphdef, loaded.params, loaded.batch_stats, expected["inputs"], train=False
    )
    np.testing.assert_allclose(np.asarray(pred), expected["predictions"], rtol=1e-5, atol=1e-6)


def test_training_resumes_from_old_workdir(tmp_path, expected):
    workdir = str(tmp_path / "run")
    shutil.copytree(WORKDIR, workdir)
    config = config_io.load_config(workdir)
    tx = optim.create_optimizer(config, schedules.create_schedules(config, steps_per_epoch=4))
    graphdef, state = steps.create_train_state(config, tx)
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    try:
        restored = checkpoint.restore_latest_readable(
            manager, checkpoint.abstract_like(jax.device_put(state))
        )
    finally:
        manager.close()
    assert restored is not None, "the old checkpoint was set aside as unreadable"
    step, state, data_state = restored
    assert step == 4 and int(state["step"]) == 4
    assert int(state["opt_state"].count) == 4
    assert data_state  # the input iterator's position, for resuming mid-run
    mu_leaves = jax.tree.leaves(state["opt_state"].mu)
    assert mu_leaves and all(np.any(np.asarray(m) != 0) for m in mu_leaves)
    model = nnx.merge(graphdef, state["params"], state["batch_stats"])
    np.testing.assert_array_equal(
        convert.model_state_dict(model)["net.2.1.0.weight"], expected["torch/net.2.1.0.weight"]
    )
