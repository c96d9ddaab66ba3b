"""Reading configs: config files ('configs/x.py:arg'), a workdir's saved config.json, and the
resolved copy (absolute paths) that training saves so the workdir works from anywhere."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import ml_collections

from stlight_jax.errors import RunCannotContinue
from stlight_jax.models import ModelConfig

CONFIG_FILE = "config.json"  # a training workdir's resolved config
_PATH_FIELDS = ("data_dir", "path", "test_file", "mnist_path", "tfds_dir")  # of config.data


def load_config(spec: str) -> Any:
    """The one way configs are read by path: 'configs/x.py[:arg]' -> get_config(arg); a saved
    'config.json' (or a training workdir, meaning its config.json) -> that resolved ConfigDict.
    A config module missing from the working directory ('configs/mmnist.py:S', 'mmnist:S') is
    read from the installed package (`packaged_configs`)."""
    from stlight_jax.config.packaged import resolve

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
    """Writes the resolved config to `<workdir>/config.json` (call it on process 0 only),
    atomically: an evaluation reading it while a run (re)starts sees the old or the new one."""
    path = os.path.join(workdir, CONFIG_FILE)
    with open(f"{path}.tmp", "w") as f:
        f.write(resolved_config(config).to_json_best_effort(indent=2))
    os.replace(f"{path}.tmp", path)


# Settings a rerun may change and still resume the workdir's run: they do not change what its
# checkpoints mean (logging, validation and checkpoint cadence, input-pipeline parallelism,
# evaluation batch size, the depthwise-conv formulation: same weights, same function). Every
# other field is part of the experiment (`check_same_experiment`), num_epochs included: the
# OneCycle and cosine schedules are laid out over the whole run.
RESUME_SAFE_FIELDS = (
    "name",
    "log_every_steps",
    "eval_every_epochs",
    "checkpoint_every_steps",
    "data.eval_batch_size",
    "data.worker_count",
    "data.read_threads",
    "data.prefetch_buffer_size",
    "model.conv_impl",
)
_ABSENT = object()


class ExperimentChangedError(RunCannotContinue):
    """A rerun's config differs from the workdir's run in a field that changes what its
    checkpoints mean; raised before anything in the workdir is touched."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _schema_default(field: str) -> Any:
    """The value a field had before it existed (a config.json of an older run lacks it): its
    default in config/schema.py, as JSON reads it back; _ABSENT for a field it lacks."""
    from stlight_jax.config import schema

    spec = schema.fields().get(field)
    return _ABSENT if spec is None else json.loads(json.dumps(spec.default))


def experiment_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """'config.<field>: <saved value> -> <new value>' for each field outside
    RESUME_SAFE_FIELDS where `config` (resolved as training saves it) differs from `saved`, a
    workdir's config.json."""
    old = _flat(saved)
    new = _flat(json.loads(resolved_config(config).to_json_best_effort()))
    changes = []
    for field in sorted(new):  # a field this code no longer has cannot change what it does
        if field in RESUME_SAFE_FIELDS:
            continue
        a, b = old.get(field, _ABSENT), new[field]
        if a is _ABSENT:
            a = _schema_default(field)
        if a != b:
            shown = "(absent)" if a is _ABSENT else json.dumps(a)
            changes.append(f"config.{field}: {shown} -> {json.dumps(b)}")
    return changes


def check_same_experiment(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ExperimentChangedError naming every changed field (saved and new value) when
    `workdir` holds checkpoints or test results of a run whose config.json differs from
    `config` in an experiment field; does nothing for a new or empty workdir. Reads only."""
    path = os.path.join(workdir, CONFIG_FILE)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    has_steps = os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))
    has_results = os.path.exists(os.path.join(workdir, "test_metrics.json"))
    if not os.path.exists(path) or not (has_steps or has_results):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ExperimentChangedError(
            f"workdir {workdir} holds checkpoints but its {CONFIG_FILE} is unreadable "
            f"({type(e).__name__}: {e}), so this run cannot be checked against them; restore "
            f"the file, or give a new --workdir to start a new run"
        ) from e
    changes = experiment_changes(saved, config)
    if changes:
        raise ExperimentChangedError(
            f"workdir {workdir} holds a run of another experiment (its {CONFIG_FILE} -> this "
            f"command): {'; '.join(changes)}. Nothing was changed; to resume it, rerun with "
            "its settings; to start a new run, give a new --workdir"
        )


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The validated network sizes of a run config (`config.model`)."""
    return ModelConfig.from_config(config.model)
