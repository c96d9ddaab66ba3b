"""Reliability: real faults and real bad inputs (issue 10), each refused or survived as the
README's "Reliability" table says."""

from __future__ import annotations

import os

import jax
import ml_dtypes
import numpy as np
import pytest

from stlight_jax import checkpoint, config_io, convert, data, train
from stlight_jax.models import create_model
from tests import tiny_config
from tests.test_train import abstract_state, read_jsonl, train_steps


@pytest.fixture
def config(tmp_path):
    return tiny_config.get_config(tiny_config.write_data(str(tmp_path / "data.npz")))


def _half_state_dict(config, dtype) -> dict[str, np.ndarray]:
    model = create_model(config_io.model_config(config), seed=5)
    return {
        k: v.astype(dtype) if v.dtype == np.float32 else v
        for k, v in convert.model_state_dict(model).items()
    }


def _floating_dtypes(tree) -> set[np.dtype]:
    return {
        np.dtype(x.dtype)
        for x in jax.tree.leaves(tree)
        if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
    }


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bfloat16", "float16"])
def test_half_precision_weights_import_as_float32(config, tmp_path, dtype):
    from flax import nnx
    from safetensors.numpy import save_file

    path = str(tmp_path / "half.safetensors")
    save_file(_half_state_dict(config, dtype), path)
    model = create_model(config_io.model_config(config), seed=0)
    convert.load_into_model(model, convert.load_state_dict_file(path), source=path)
    assert _floating_dtypes(nnx.state(model, nnx.Param)) == {np.dtype(np.float32)}
    assert _floating_dtypes(nnx.state(model, nnx.BatchStat)) == {np.dtype(np.float32)}


def test_bfloat16_init_from_trains_in_float32_and_resumes(config, tmp_path):
    """init_from a bfloat16 .safetensors: params, BN stats and Adam state are float32, so the
    next rerun restores the checkpoint instead of setting it aside and starting over."""
    from safetensors.numpy import save_file

    weights = str(tmp_path / "half.safetensors")
    save_file(_half_state_dict(config, ml_dtypes.bfloat16), weights)
    workdir = str(tmp_path / "run")
    config.init_from = weights
    config.num_epochs = 1
    train.train_and_evaluate(config, workdir)

    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    restored = checkpoint.restore_latest_readable(manager, abstract_state(config))
    manager.close()
    assert restored is not None and restored[0] == 4
    assert _floating_dtypes(restored[1]) == {np.dtype(np.float32)}

    config.num_epochs = 2
    train.train_and_evaluate(config, workdir)
    records = read_jsonl(workdir)
    assert {"step": 4, "resumed_from_step": 4} in records
    assert train_steps(records) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert not os.path.exists(os.path.join(workdir, checkpoint.UNREADABLE_DIR))


# ---------------------------------------------------------------------------------------------
# Non-finite data is refused at load, naming the file, the split and the first bad index.


def test_nan_in_custom_val_split_is_refused(config, tmp_path):
    with np.load(config.data.path) as z:
        parts = {k: z[k].copy() for k in z.files}
    parts["val"][5, 2, 3, 4, 0] = np.nan
    parts["val"][6, 0, 0, 0, 0] = np.inf
    np.savez(config.data.path, **parts)
    with pytest.raises(ValueError) as err:
        data.steps_per_epoch(config)
    msg = str(err.value)
    assert "data.npz: val" in msg and "sample 5" in msg and "(5, 2, 3, 4, 0)" in msg
    assert "nan" in msg and "\n" not in msg


def test_inf_in_lone_custom_array_is_refused(config, tmp_path):
    with np.load(config.data.path) as z:
        train_part = z["train"].copy()
    train_part[31, 7, 15, 15, 0] = -np.inf
    config.data.path = str(tmp_path / "lone.npy")
    np.save(config.data.path, train_part)
    with pytest.raises(ValueError, match=r"lone.npy .*train part, sample 31 .*-inf.*\(31, 7"):
        data.steps_per_epoch(config)


def test_nan_in_taxibj_is_refused(tmp_path):
    from configs.common import get_base_config

    rng = np.random.default_rng(1)
    arrays = {
        f"{xy}_{s}": rng.uniform(-1, 1, (n, 4, 2, 32, 32)).astype(np.float32)
        for s, n in (("train", 6), ("test", 3))
        for xy in "XY"
    }
    arrays["Y_test"][2, 1, 0, 7, 9] = np.nan
    path = str(tmp_path / "dataset.npz")
    np.savez(path, **arrays)
    c = get_base_config()
    c.data.name, c.data.path, c.data.num_val = "taxibj", path, 2
    c.model.frames_in, c.model.frames_out, c.model.image_size, c.model.channels = 4, 4, (32, 32), 2
    with pytest.raises(ValueError, match=r"dataset.npz: Y_test: sample 2 .*nan.*\(2, 1, 0, 7, 9\)"):
        data.steps_per_epoch(c)
