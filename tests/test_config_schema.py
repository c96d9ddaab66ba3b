"""One config schema (stlight_jax/config/schema.py): the base config's fields and defaults, the
validation rules, `models.ModelConfig` and the allowed choices all come from it, so a field is
added in one place."""

from __future__ import annotations

import dataclasses

import pytest

from stlight_jax import models, ops
from stlight_jax.config import schema
from stlight_jax.config import validation as config_validation
from stlight_jax.configs.common import get_base_config


def _flat(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_base_config_is_the_schema_with_its_defaults():
    base = get_base_config()
    want = {key: spec.default for key, spec in schema.fields().items()}
    got = _flat(base)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == value and type(got[key]) is type(value), key
    # Nested the same way: a section of the schema is a ConfigDict of the base config.
    assert base.to_dict() == schema.defaults()
    for key in ("model", "data", "optimizer"):
        assert hasattr(base[key], "items")


def test_validation_rules_cover_exactly_the_schema():
    specs = schema.fields()
    assert set(config_validation.rules()) | set(config_validation._schema_defaults()) == set(specs)
    assert config_validation.known_keys() == list(specs)
    for key, rule in config_validation.rules().items():
        assert rule is specs[key].rule, key
    assert config_validation.problems(get_base_config()) == []  # every default follows its rule


def test_model_config_is_the_schema_model_section():
    section = {f.name: f.default for f in dataclasses.fields(schema.Model)}
    ours = {f.name: f.default for f in dataclasses.fields(models.ModelConfig)}
    assert ours == section
    assert set(ours) == set(get_base_config().model)
    assert dataclasses.asdict(models.ModelConfig()) == get_base_config().model.to_dict()
    assert models.ModelConfig.from_config(get_base_config().model) == models.ModelConfig()


def test_choices_come_from_the_schema():
    assert set(ops.DEPTHWISE_IMPLS) == set(schema.CONV_IMPLS) - {"auto"}
    model_rules = {key: spec.rule for key, spec in schema.fields(schema.Model).items()}
    for name, choices in models.ABLATIONS.items():
        assert model_rules[name].options == choices
    for name, spec in schema.fields().items():
        if isinstance(spec.rule, schema.OneOf):
            assert spec.default in spec.rule.options, name


def test_model_config_checks_follow_the_schema_rules():
    for name, spec in schema.fields(schema.Model).items():
        if isinstance(spec.rule, schema.Integer):
            bad = dataclasses.replace(models.ModelConfig(), **{name: spec.rule.lo - 1})
            with pytest.raises(ValueError, match=rf"model\.{name} must be a"):
                bad.validate()
        elif isinstance(spec.rule, schema.OneOf):
            bad = dataclasses.replace(models.ModelConfig(), **{name: "nope"})
            with pytest.raises(ValueError, match=rf"model\.{name}='nope' is not one of \("):
                bad.validate()


@dataclasses.dataclass(frozen=True)
class _DataPlus(schema.Data):
    shuffle_window: int = schema.field(64, schema.POSITIVE, "a field added for this test")
    tag: str = schema.field("x", None, "a field without a rule: its default's type only")


@dataclasses.dataclass(frozen=True)
class _RunPlus(schema.Run):
    data: _DataPlus = schema.section(_DataPlus)


def test_a_field_added_to_the_schema_is_a_default_and_is_validated(monkeypatch):
    monkeypatch.setattr(schema, "Run", _RunPlus)
    base = get_base_config()
    assert base.data.shuffle_window == 64 and base.data.tag == "x"
    keys = list(schema.fields())  # in its section, after the fields it extends
    at = keys.index("data.num_digits") + 1
    assert keys[at : at + 2] == ["data.shuffle_window", "data.tag"]
    assert config_validation.validate(base) is None
    assert "data.shuffle_window" in config_validation.rules()
    assert config_validation._schema_defaults() == {"data.tag": "x"}
    bad = base.to_dict()  # (a ConfigDict keeps each field's type: a config.json need not)
    bad["data"].update(shuffle_window=0, tag=3)
    with pytest.raises(config_validation.ConfigError) as err:
        config_validation.validate(bad)
    assert str(err.value) == (
        "invalid config: config.data.shuffle_window=0: must be >= 1; "
        "config.data.tag=3: must be a string"
    )
    assert config_validation.unknown_key_message("data.shufle_window") == (
        "config.data.shufle_window is not a known config field; the closest known key is "
        "config.data.shuffle_window"
    )
    monkeypatch.undo()
    assert "shuffle_window" not in get_base_config().data
    assert "data.shuffle_window" not in config_validation.rules()
    assert config_validation.unknown_key_message("data.shuffle_window").startswith(
        "config.data.shuffle_window is not a known config field"
    )


def test_model_from_config_is_the_one_way_to_build_a_model():
    config = get_base_config()
    config.model.update(dict(frames_in=2, frames_out=2, image_size=(8, 8), dim=8, depth=2))
    config.seed, config.compute_dtype = 3, "bfloat16"
    model = models.model_from_config(config)
    assert model.config == models.ModelConfig.from_config(config.model)
    assert str(model.dtype) == "bfloat16"
    same = models.create_model(model.config, seed=3, dtype="bfloat16")
    assert (model.mixer.dw1_kernel[...] == same.mixer.dw1_kernel[...]).all()
    other = models.model_from_config(config, seed=4, dtype="float32")
    assert str(other.dtype) == "float32"
    assert not (other.mixer.dw1_kernel[...] == same.mixer.dw1_kernel[...]).all()


def test_rebuild_model_is_the_one_way_back_from_split_weights():
    from flax import nnx

    from stlight_jax.weights.loading import rebuild_model

    cfg = models.ModelConfig(frames_in=2, frames_out=2, image_size=(8, 8), dim=8, depth=2)
    model = models.create_model(cfg, seed=1)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    again = rebuild_model(graphdef, params, batch_stats)
    assert isinstance(again, models.STLight) and again is not model
    assert (again.mixer.pw_kernel[...] == model.mixer.pw_kernel[...]).all()
