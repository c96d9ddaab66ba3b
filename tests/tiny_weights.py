"""The tiny model's weights as a PyTorch state_dict (the arrays a weights file holds), in any
dtype, and the floating dtypes a pytree of arrays holds."""

from __future__ import annotations

import jax
import numpy as np

from stlight_jax.config import files as config_io
from stlight_jax.models import create_model
from stlight_jax.weights import torch_files as convert


def state_dict(config, dtype) -> dict[str, np.ndarray]:
    """The model of `config` (seed 5) as Figure 10 keys, its float32 arrays cast to `dtype`."""
    model = create_model(config_io.model_config(config), seed=5)
    return {
        k: v.astype(dtype) if v.dtype == np.float32 else v
        for k, v in convert.model_state_dict(model).items()
    }


def floating_dtypes(tree) -> set[np.dtype]:
    return {
        np.dtype(x.dtype)
        for x in jax.tree.leaves(tree)
        if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
    }


def write_safetensors(config, path: str) -> str:
    """The float32 `state_dict(config)` written as a .safetensors file at `path`."""
    from safetensors.numpy import save_file

    save_file(state_dict(config, np.float32), path)
    return path
