"""The trained models shipped with the package: `pretrained/<name>.safetensors` (the paper's
Figure 10 keys, float32; loads into the PyTorch listing with `strict=True`), `<name>.json` (the
run's resolved config under `config`, its test metrics with the baselines, steps, wall time and
the weights' SHA-256) and `<name>.metrics.jsonl` (the training log).

`stlight_jax.load('NAME')` and `evaluate.py --pretrained=NAME` find them by name, in the
checkout or wherever `pip install` put the package, and refuse a weights file whose digest is
not the recorded one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import ml_collections

WEIGHTS_SUFFIX = ".safetensors"
RECORD_SUFFIX = ".json"
METRICS_SUFFIX = ".metrics.jsonl"


def pretrained_dir() -> str:
    """The `pretrained` folder beside the `stlight_jax` package: the checkout's, or the copy
    `pip install` put in site-packages (it installs as package data, like `configs`)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(here, "pretrained")


def available() -> list[str]:
    """Names of the shipped models (those with both a weights file and a record)."""
    folder = pretrained_dir()
    if not os.path.isdir(folder):
        return []
    names = [f[: -len(RECORD_SUFFIX)] for f in os.listdir(folder) if f.endswith(RECORD_SUFFIX)]
    return sorted(n for n in names if os.path.isfile(weights_path(n)))


def weights_path(name: str) -> str:
    return os.path.join(pretrained_dir(), name + WEIGHTS_SUFFIX)


def record_path(name: str) -> str:
    return os.path.join(pretrained_dir(), name + RECORD_SUFFIX)


def is_name(source: Any) -> bool:
    """True when `source` is meant as a shipped model's name: a bare word (no folder, no file
    suffix) that is not a file or folder in the working directory."""
    if not isinstance(source, str) or not source or os.path.exists(source):
        return False
    return os.sep not in source and "/" not in source and "." not in source


def name_of_path(path: str) -> str | None:
    """The shipped model whose weights file `path` is, if any (so loading it by path checks
    its digest too)."""
    stem = os.path.basename(path)
    if not stem.endswith(WEIGHTS_SUFFIX):
        return None
    name = stem[: -len(WEIGHTS_SUFFIX)]
    if name in available() and os.path.samefile(path, weights_path(name)):
        return name
    return None


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(name: str) -> dict[str, Any]:
    """The JSON record of shipped model `name`; ValueError naming the known ones if unknown."""
    if not is_name(name) or name not in available():
        known = ", ".join(available()) or "none (the package was installed without them)"
        raise ValueError(
            f"{name!r} is neither a file or folder here nor a shipped pretrained model "
            f"(shipped: {known})"
        )
    path = record_path(name)
    try:
        with open(path) as f:
            record = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file is damaged") from None
    for key in ("config", "weights"):
        if key not in record:
            raise ValueError(f"{path} has no {key!r} entry; the file is damaged")
    return record


def verify(name: str, record: dict[str, Any] | None = None) -> str:
    """The weights path of `name` after checking its size and SHA-256 against the record;
    ValueError in one line if they differ (a damaged, truncated or replaced file)."""
    record = record or read_record(name)
    path = weights_path(name)
    want = record["weights"]
    size = os.path.getsize(path)
    if size != want["bytes"]:
        raise ValueError(
            f"{path} is {size} bytes, not the {want['bytes']} recorded in {record_path(name)}: "
            "the file is damaged or truncated (restore it: git checkout or reinstall)"
        )
    got = sha256_of(path)
    if got != want["sha256"]:
        raise ValueError(
            f"{path} has SHA-256 {got}, not the {want['sha256']} recorded in "
            f"{record_path(name)}: the file is damaged or was replaced (restore it: git "
            "checkout or reinstall)"
        )
    return path


def config_of(record: dict[str, Any]) -> ml_collections.ConfigDict:
    """The run's resolved config from a record (data_dir relative: where the test set that
    evaluation generates is cached, under the working directory)."""
    return ml_collections.ConfigDict(record["config"])


def resolve(name: str) -> tuple[str, ml_collections.ConfigDict, dict[str, Any]]:
    """(verified weights path, config, record) of shipped model `name`."""
    record = read_record(name)
    return verify(name, record), config_of(record), record


# ---------------------------------------------------------------------------------------------
# Shipping a finished training run: python -m stlight_jax.pretrained ship ...

FIRST_TEST_SEQUENCES = 256  # what tests/test_pretrained.py re-scores (the JSON's test_first_256)


def score_first_sequences(
    weights: str, config: ml_collections.ConfigDict, data_dir: str, num: int, out_dir: str
) -> dict[str, Any]:
    """Metrics of the model and the baselines on the first `num` test sequences (generated
    into `data_dir`), from the weights file as shipped: what the test reproduces."""
    from stlight_jax.evaluation import runner as evaluation
    from stlight_jax.weights import loading as weights_lib

    config = ml_collections.ConfigDict(config.to_dict())
    config.data.num_test = num
    config.data.data_dir = data_dir
    loaded = weights_lib.load_model(config, weights=weights)
    result = evaluation.evaluate(loaded, "test", out_dir, num_samples=0)
    return {
        name: {k: v for k, v in m.items() if k != "per_frame"}
        for name, m in result["metrics"].items()
    }


def ship(
    workdir: str,
    name: str,
    *,
    command: str,
    hardware: str,
    wall_seconds: float,
    note: str = "",
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Writes `<name>.safetensors`, `<name>.json` and `<name>.metrics.jsonl` from a finished
    training workdir (its best-validation checkpoint, which its test pass scored)."""
    import shutil
    import tempfile

    from stlight_jax.config import files as config_io
    from stlight_jax.model_size import model_size
    from stlight_jax.weights import torch_files as convert
    from stlight_jax.writers import to_json

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(
            f"--name={name!r}: use letters, digits, '_' and '-' (it is loaded by name)"
        )
    if not os.path.isfile(os.path.join(workdir, "test_metrics.json")):
        raise ValueError(f"{workdir} has no test_metrics.json: ship a run that finished training")
    out_dir = out_dir or pretrained_dir()
    os.makedirs(out_dir, exist_ok=True)
    config = config_io.load_workdir_config(workdir)
    with open(os.path.join(workdir, "test_metrics.json")) as f:
        test = json.load(f)
    weights = os.path.join(out_dir, name + WEIGHTS_SUFFIX)
    where = convert.export_from_checkpoint(workdir, config, weights, step="best")
    if f"(step {test['checkpoint_step']}," not in where:
        raise ValueError(
            f"exported {where}, but the test pass scored step {test['checkpoint_step']}"
        )
    shipped = ml_collections.ConfigDict(config.to_dict())
    shipped.data.data_dir = "data"  # the run's absolute cache folder means nothing elsewhere
    with tempfile.TemporaryDirectory() as tmp:
        first = score_first_sequences(
            weights, shipped, os.path.join(tmp, "data"), FIRST_TEST_SEQUENCES, tmp
        )
    steps = None
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            steps = json.loads(line).get("step", steps)
    size = model_size(config_io.model_config(config))
    record = {
        "name": name,
        "description": (
            f"STLight trained on Moving MNIST (10 -> 10 frames, 64x64) on a CPU; "
            f"{size.params:,} parameters"
        ),
        "weights": {
            "file": name + WEIGHTS_SUFFIX,
            "sha256": sha256_of(weights),
            "bytes": os.path.getsize(weights),
            "layout": "paper Figure 10 state_dict keys (docs/conventions.md §1), float32",
            "params": size.params,
        },
        "training": {
            "command": command,
            "hardware": hardware,
            "wall_seconds": wall_seconds,
            "wall_note": note,
            "train_seconds": test["train_seconds"],
            "steps": steps,
            "checkpoint_step": test["checkpoint_step"],
            "metrics_log": name + METRICS_SUFFIX,
        },
        "test": {
            "data_source": test["data_source"],
            "num_sequences": test["model"]["num_samples"],
            "metrics": {
                n: {k: v for k, v in test[n].items() if k != "per_frame"}
                for n in ("model", "last_frame", "zeros")
            },
            "per_frame": {n: test[n]["per_frame"] for n in ("model", "last_frame", "zeros")},
        },
        "test_first_256": {
            "note": "the first 256 test sequences, scored from this weights file "
            "(tests/test_pretrained.py reproduces them)",
            "metrics": first,
        },
        "config": shipped.to_dict(),
    }
    with open(os.path.join(out_dir, name + RECORD_SUFFIX), "w") as f:
        json.dump(to_json(record), f, indent=1, allow_nan=False)
        f.write("\n")
    shutil.copyfile(
        os.path.join(workdir, "metrics.jsonl"), os.path.join(out_dir, name + METRICS_SUFFIX)
    )
    return record


if __name__ == "__main__":
    from stlight_jax.cli.pretrained import main

    main()
