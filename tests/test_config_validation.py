"""The one config validation pass before any work (config/validation.py): impossible settings
refused in one line naming every bad field, a misspelled key named with the closest known
one, and every shipped config valid."""

from __future__ import annotations

import pytest

from stlight_jax.config import validation as config_validation
from stlight_jax.training import loop as train


@pytest.mark.parametrize(
    "field, value, rule",
    [
        ("optimizer.learning_rate", -0.01, "must be a finite number > 0"),
        ("optimizer.learning_rate", 0.0, "must be a finite number > 0"),
        ("checkpoint_every_steps", -1, "must be >= 0"),
        ("data.batch_size", 0, "must be >= 1"),
        ("data.batch_size", -4, "must be >= 1"),
        ("num_epochs", 0, "must be >= 1"),
        ("optimizer.pct_start", 1.0, "must be a finite number > 0 and < 1"),
        ("optimizer.final_div_factor", float("nan"), "must be a finite number > 0"),
        ("optimizer.schedule", "linear", "must be one of ['onecycle', 'cosine']"),
    ],
)
def test_impossible_settings_are_refused_before_any_work(config, tmp_path, field, value, rule):
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    workdir = tmp_path / "run"
    with pytest.raises(config_validation.ConfigError) as err:
        train.train_and_evaluate(config, str(workdir))
    assert f"config.{field}={value!r}: {rule}" in str(err.value)
    assert "\n" not in str(err.value)
    assert not workdir.exists()  # refused before the workdir, data or compilation


def test_several_bad_fields_are_all_named_in_one_line(config, tmp_path):
    config.optimizer.learning_rate = -0.01
    config.data.batch_size = 0
    config.num_epochs = 0
    config.optimizer.schedule = "linear"
    workdir = tmp_path / "run"
    with pytest.raises(config_validation.ConfigError) as err:
        train.train_and_evaluate(config, str(workdir))
    msg = str(err.value)
    for bad in (
        "config.optimizer.learning_rate=-0.01: must be a finite number > 0",
        "config.data.batch_size=0: must be >= 1",
        "config.num_epochs=0: must be >= 1",
        "config.optimizer.schedule='linear': must be one of ['onecycle', 'cosine']",
    ):
        assert bad in msg, msg
    assert "\n" not in msg and msg.count("; ") >= 3
    assert not workdir.exists()


def test_misspelled_key_in_a_config_names_the_closest_known_key(config, tmp_path):
    config.optimizer.learnig_rate = 1e-3  # a config file's typo adds a field silently
    with pytest.raises(
        config_validation.ConfigError,
        match=r"config.optimizer.learnig_rate is "
        r"not a known config field; the closest known key is "
        r"config.optimizer.learning_rate",
    ):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_every_shipped_config_passes_validation():
    import importlib

    args = {
        "mmnist": importlib.import_module("stlight_jax.configs.mmnist").SIZES,
        "taxibj": importlib.import_module("stlight_jax.configs.taxibj").SIZES,
        "kth": tuple(importlib.import_module("stlight_jax.configs.kth").DIMS),
        "kth40": (None,),
        "kitticaltech": tuple(importlib.import_module("stlight_jax.configs.kitticaltech").SIZES),
        "custom": (None,),
        "ablations": tuple(importlib.import_module("stlight_jax.configs.ablations").ROWS),
    }
    for name, choices in args.items():
        for arg in choices:
            config = importlib.import_module(f"stlight_jax.configs.{name}").get_config(arg)
            config_validation.validate(config)
    # Every field of the base schema has a rule (a new field without one is type-checked only).
    assert not config_validation._schema_defaults()
