"""The parameter layout table against the built NNX model and the PyTorch reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax import nnx

from stlight_jax.models import ModelConfig, create_model
from stlight_jax.weights import param_table as layout

TINY = ModelConfig(
    frames_in=3, frames_out=2, channels=2, image_size=(8, 12), dim=8, depth=4, patch=2
)
CONFIGS = [TINY, dataclasses.replace(TINY, patch=1, overlap=3, k1=5, k2=4, depth=5)]


def _leaves(tree: dict, prefix: tuple = ()) -> dict[tuple, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = np.asarray(v)
    return out


@pytest.mark.parametrize("cfg", CONFIGS)
def test_layout_covers_every_model_variable_with_its_shape(cfg):
    model = create_model(cfg)
    variables = {
        "params": _leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
        "batch_stats": _leaves(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))),
    }
    rows: dict[tuple, list[int | None]] = {}
    for e in layout.parameter_layout(cfg):
        ours = variables[e.collection][e.path]
        row_shape = ours.shape if e.index is None else ours.shape[1:]
        converted = e.kind.to_ours(np.zeros(e.torch_shape, ours.dtype))
        assert converted.shape == row_shape, e.torch_key
        assert e.kind.to_torch(converted).shape == e.torch_shape, e.torch_key
        rows.setdefault((e.collection, e.path), []).append(e.index)
    every = {(c, p) for c, leaves in variables.items() for p in leaves}
    assert set(rows) == every  # nothing in the model the table misses, nothing extra
    for (coll, path), indices in rows.items():
        stacked = variables[coll][path]
        want = [None] if indices == [None] else list(range(stacked.shape[0]))
        assert indices == want, path


def test_layout_keys_are_the_reference_state_dict():
    pytest.importorskip("torch", reason="the PyTorch reference needs torch")
    from stlight_jax.reference import reference_from_config

    for cfg in CONFIGS:
        ref = reference_from_config(cfg)
        want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        got = layout.expected_torch_shapes(cfg)
        assert list(got) == list(want)  # same keys in the same order
        assert got == want
