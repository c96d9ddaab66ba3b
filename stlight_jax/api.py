"""The Python entry point for notebooks and other programs: `stlight_jax.load(...)` returns a
trained STLight whose `.predict(frames, horizon)` forecasts, as `evaluate.py --mode=predict`."""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np


class Predictor:
    """A loaded STLight. `config` is the full run config, `params` / `batch_stats` the
    variables (NNX state), `source` where they came from."""

    def __init__(self, loaded: Any):
        self._loaded = loaded
        self._predict_fn = None

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self._loaded.config

    @property
    def model_config(self):
        return self._loaded.model_config

    @property
    def params(self) -> Any:
        return self._loaded.params

    @property
    def batch_stats(self) -> Any:
        return self._loaded.batch_stats

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self._loaded.params, "batch_stats": self._loaded.batch_stats}

    @property
    def source(self) -> dict[str, Any]:
        return self._loaded.source

    def model(self) -> Any:
        """A fresh `nnx` STLight module holding these weights (in eval mode)."""
        from stlight_jax.weights.loading import rebuild_model

        model = rebuild_model(self._loaded.graphdef, self.params, self.batch_stats)
        model.eval()
        return model

    def predict(self, frames: Any, horizon: int | None = None) -> np.ndarray:
        """Frames (N, frames_in, H, W, C), numpy or jax, float on [0, 1] or uint8 0..255 ->
        float32 numpy (N, horizon, H, W, C), raw model outputs on the [0, 1] scale.

        `horizon` defaults to frames_out; beyond it predictions are fed back as inputs
        (autoregressive, as evaluate.py). Inputs run in batches of
        `config.data.eval_batch_size`; each input shape compiles once.
        """
        from stlight_jax.evaluation import inputs, predict

        cfg = self.model_config
        x, _ = inputs.prepare_input(np.asarray(frames), cfg)
        if self._predict_fn is None:
            self._predict_fn = predict.make_predict_fn(self._loaded)
        horizon = int(horizon if horizon is not None else cfg.frames_out)
        return predict.rollout(self._predict_fn, x, horizon, cfg.frames_in, cfg.frames_out)[0]

    def __repr__(self) -> str:
        c = self.model_config
        return (
            f"Predictor({self.config.get('name', '?')}: {c.frames_in} -> {c.frames_out} frames "
            f"of {tuple(c.image_size)}x{c.channels}, from {self.source.get('path')})"
        )


def _find_workdir_config(path: str) -> str | None:
    """The config.json of the training workdir `path` is or lies in (a checkpoints dir or a
    step dir), if any."""
    here = os.path.abspath(path)
    for _ in range(3):
        if os.path.isfile(os.path.join(here, "config.json")):
            return os.path.join(here, "config.json")
        here = os.path.dirname(here)
    return None


def resolve_source(source: str) -> tuple[str, str | None]:
    """('weights' | 'workdir' | 'checkpoint', the config.json found next to it or None)."""
    source = os.fspath(source)
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source!r} does not exist")
    if os.path.isfile(source):
        return "weights", None
    if os.path.isfile(os.path.join(source, "config.json")) and os.path.isdir(
        os.path.join(source, "checkpoints")
    ):
        return "workdir", os.path.join(source, "config.json")
    return "checkpoint", _find_workdir_config(source)


def load_any_config(config: Any) -> ml_collections.ConfigDict:
    """A ConfigDict as is; a config file spec ('configs/mmnist.py:S', a config.json, a workdir)
    through `config_io.load_config`."""
    from stlight_jax.config import files as config_io

    if isinstance(config, ml_collections.ConfigDict):
        return config
    if isinstance(config, dict):
        return ml_collections.ConfigDict(config)
    if isinstance(config, (str, os.PathLike)):
        return config_io.load_config(os.fspath(config))
    raise ValueError(f"config must be a ConfigDict or a config file path, not {type(config)}")


def load_model_from(
    source: str,
    config: Any = None,
    step: str | int | None = None,
    key_map: str | None = None,
    conv_impl: str | None = None,
):
    """`source` (workdir, Orbax checkpoint or weights file) -> weights.LoadedModel.

    `conv_impl` overrides the config's depthwise conv formulation (same weights, same
    function; exports use the portable 'lax' one)."""
    from stlight_jax import pretrained
    from stlight_jax.weights import loading as weights

    if os.path.isfile(source) and pretrained.name_of_path(source):
        source = pretrained.name_of_path(source)
    if pretrained.is_name(source):
        path, shipped_config, _ = pretrained.resolve(source)  # checks the SHA-256
        if key_map or step is not None:
            raise ValueError(f"{source!r} is a shipped model: step= and key_map= do not apply")
        config = shipped_config if config is None else load_any_config(config)
        if conv_impl:
            config = ml_collections.ConfigDict(config.to_dict())
            config.model.conv_impl = conv_impl
        loaded = weights.load_model(config, weights=path)
        loaded.source.update(kind="pretrained", name=source)
        return loaded
    kind, found = resolve_source(source)
    if config is None:
        if found is None:
            raise ValueError(
                f"{source!r} is a {kind} without a training workdir's config.json around it; "
                "pass config= (a config file such as 'configs/mmnist.py:S', or a ConfigDict)"
            )
        config = found
    config = load_any_config(config)
    if conv_impl:
        config = ml_collections.ConfigDict(config.to_dict())
        config.model.conv_impl = conv_impl
    if kind == "weights":
        return weights.load_model(config, weights=source, step=step, key_map=key_map)
    if key_map:
        raise ValueError("key_map renames the keys of a PyTorch weights file, not of a checkpoint")
    if kind == "workdir":
        return weights.load_model(config, workdir=source, step=step)
    return weights.load_model(config, checkpoint=source, step=step)


def load(
    source: str | os.PathLike,
    config: Any = None,
    *,
    step: str | int | None = None,
    key_map: str | None = None,
) -> Predictor:
    """Loads a trained STLight for prediction.

    `source`: the name of a shipped model (`stlight_jax.pretrained.available()`, e.g.
    'mmnist_cpu_2h': its weights' SHA-256 is checked and its config comes with it), a
    training workdir (its best checkpoint, else its latest), an Orbax checkpoint
    (a workdir's checkpoints dir or step dir, or a `convert import` output), or a PyTorch /
    safetensors weights file in any layout `convert` reads (Figure 10, STF, wrappers).
    `config`: a config file spec ('configs/mmnist.py:S'), a config.json, a workdir or a
    ConfigDict; optional when `source` lies in a training workdir. `step`: 'best' | 'latest' | N
    for Orbax sources. `key_map`: JSON key map file(s) for weights in another layout.
    """
    return Predictor(load_model_from(os.fspath(source), config, step, key_map))
