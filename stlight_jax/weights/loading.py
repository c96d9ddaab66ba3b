"""Where a network's weights come from: a training workdir or Orbax checkpoint (any step), or a
PyTorch state_dict file through the converter. Used by evaluation, prediction and init_from."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections
from flax import nnx

from stlight_jax.checkpoints import weights_only
from stlight_jax.config.files import model_config
from stlight_jax.models import ModelConfig, STLight, model_from_config
from stlight_jax.weights import torch_files as convert

PYTORCH_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


@dataclasses.dataclass
class LoadedModel:
    """A restored network: its config, the NNX graph and weights, and where they came from."""

    config: ml_collections.ConfigDict
    graphdef: nnx.GraphDef
    params: Any
    batch_stats: Any
    source: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return model_config(self.config)


def parse_step(step: str | int | None) -> str | int | None:
    """'best' | 'latest' | an integer (as str or int) | None (best if validated, else latest)."""
    if step is None or step == "":
        return None
    if isinstance(step, int) or step in ("best", "latest"):
        return step
    try:
        return int(step)
    except ValueError:
        raise ValueError(f"step={step!r}: expected 'best', 'latest' or a step number") from None


def rebuild_model(graphdef: nnx.GraphDef, params: Any, batch_stats: Any) -> STLight:
    """The one way back from split weights (a `LoadedModel`'s graphdef, params and batch_stats)
    to an STLight module: a new module holding them, in the mode it was split in."""
    return nnx.merge(graphdef, params, batch_stats)


def read_pytorch(
    graphdef: nnx.GraphDef, params: Any, batch_stats: Any, path: str, key_map: str | None = None
):
    """(params, batch_stats, layout name) of the model with the weights of PyTorch file `path`,
    in any layout `weight_layouts` recognises (`key_map`: JSON key map file(s) for others)."""
    model = rebuild_model(graphdef, params, batch_stats)
    state_dict, layout = convert.read_state_dict(path, key_map)
    convert.load_into_model(model, state_dict, source=path)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return params, batch_stats, layout


def load_model(
    config: ml_collections.ConfigDict,
    *,
    workdir: str | None = None,
    checkpoint: str | None = None,
    weights: str | None = None,
    step: str | int | None = None,
    key_map: str | None = None,
) -> LoadedModel:
    """Builds the network of `config` and loads weights from exactly one place.

    `weights`: a PyTorch state_dict file (.pt/.pth/.ckpt/.safetensors) through the converter;
    `checkpoint`: an Orbax checkpoints dir or converted weights checkpoint; otherwise
    `workdir`. `step` ('best' | 'latest' | N) picks an Orbax step
    (`checkpoints.weights_only.restore_weights`).
    """
    if checkpoint and weights:
        raise ValueError("give either a checkpoint (Orbax) or weights (PyTorch), not both")
    step = parse_step(step)
    model = model_from_config(config)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    if weights:
        if step is not None:
            raise ValueError("step selects an Orbax checkpoint step; it does not apply to weights")
        params, batch_stats, layout = read_pytorch(graphdef, params, batch_stats, weights, key_map)
        source = {
            "kind": "pytorch_weights",
            "path": os.path.abspath(weights),
            "layout": layout,
            "step": None,
        }
        return LoadedModel(config, graphdef, params, batch_stats, source)
    path = checkpoint or workdir
    if not path:
        raise ValueError("nothing to load: give a workdir, a checkpoint or a weights file")
    params, batch_stats, chosen = weights_only.restore_weights(path, params, batch_stats, step)
    source = {
        "kind": "orbax",
        "path": os.path.abspath(path),
        "step": int(chosen),
        "step_requested": "best if any step has validation metrics, else latest"
        if step is None
        else step,
    }
    return LoadedModel(config, graphdef, params, batch_stats, source)


def load_init_from(
    path: str,
    graphdef: nnx.GraphDef,
    params: Any,
    batch_stats: Any,
    key_map: str | None = None,
):
    """(params, batch_stats, description) of `config.init_from`: a PyTorch weights file (by
    extension; `key_map` as in `read_pytorch`) or an Orbax checkpoint (best step if validated,
    else latest)."""
    if path.endswith(PYTORCH_EXTENSIONS):
        params, batch_stats, layout = read_pytorch(graphdef, params, batch_stats, path, key_map)
        return params, batch_stats, f"PyTorch weights {path} ({layout} layout)"
    params, batch_stats, step = weights_only.restore_weights(path, params, batch_stats)
    return params, batch_stats, f"Orbax checkpoint {path} (step {step})"
