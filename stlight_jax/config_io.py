"""Reading configs: config files ('configs/x.py:arg'), a workdir's saved config.json, and the
resolved copy (absolute paths) that training saves so the workdir works from anywhere."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import ml_collections

from stlight_jax.models import ModelConfig

CONFIG_FILE = "config.json"  # a training workdir's resolved config
_PATH_FIELDS = ("data_dir", "path", "test_file", "mnist_path", "tfds_dir")  # of config.data


def load_config(spec: str) -> Any:
    """The one way configs are read by path: 'configs/x.py[:arg]' -> get_config(arg); a saved
    'config.json' (or a training workdir, meaning its config.json) -> that resolved ConfigDict.
    A config module missing from the working directory ('configs/mmnist.py:S', 'mmnist:S') is
    read from the installed package (`packaged_configs`)."""
    from stlight_jax.packaged_configs import resolve

    spec = resolve(spec)
    if os.path.isdir(spec):
        spec = os.path.join(spec, CONFIG_FILE)
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"config file {spec!r} does not exist")
        with open(spec) as f:
            return ml_collections.ConfigDict(json.load(f))
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_stlight_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote to `<workdir>/config.json`."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: is {workdir!r} a training workdir? Otherwise pass --config"
        )
    return load_config(path)


def resolved_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with every path field made absolute, so the saved config.json works from any
    working directory (evaluate.py, export)."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    for field in _PATH_FIELDS:
        if resolved.data.get(field):
            resolved.data[field] = os.path.abspath(resolved.data[field])
    for field in ("init_from", "init_from_key_map"):
        if resolved.get(field):
            resolved[field] = os.path.abspath(resolved[field])
    return resolved


def save_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config to `<workdir>/config.json` (call it on process 0 only)."""
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(resolved_config(config).to_json_best_effort(indent=2))


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The validated network sizes of a run config (`config.model`)."""
    return ModelConfig.from_config(config.model)
