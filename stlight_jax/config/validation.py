"""One pass over a whole run config at startup: every field's type and allowed range (the rules
config/schema.py declares), and the closest known key for a misspelled one; the first thing
`train_and_evaluate` does."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from stlight_jax.config import schema


class ConfigError(ValueError):
    """A config field has the wrong type, is out of range, or is not a known field."""


_Rule = Callable[[Any], str | None]  # value -> None when fine, else the rule it breaks


def rules() -> dict[str, _Rule]:
    """'<section>.<field>' -> its rule, for every field config/schema.py declares with one. A
    field a config adds beyond the schema is refused as unknown (with the closest known key),
    so a misspelled override cannot pass unnoticed."""
    return {key: spec.rule for key, spec in schema.fields().items() if spec.rule is not None}


def _schema_defaults() -> dict[str, Any]:
    """Fields the schema declares without a rule: known, and type-checked against their
    default."""
    return {key: spec.default for key, spec in schema.fields().items() if spec.rule is None}


def _flatten(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) or hasattr(v, "items") and not isinstance(v, (str, bytes)):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def known_keys() -> list[str]:
    return list(schema.fields())


def closest_key(key: str) -> str | None:
    """The known field nearest to `key` (a misspelling), or None when nothing is close."""
    known = known_keys()
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not match:  # 'optimizer.lr' -> compare the last part only
        tails = {k.rsplit(".", 1)[-1]: k for k in known if k.startswith(key.rsplit(".", 1)[0])}
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.6)
        match = [tails[close[0]]] if close else []
    return match[0] if match else None


def unknown_key_message(key: str, prefix: str = "config.") -> str:
    near = closest_key(key)
    hint = f"; the closest known key is {prefix}{near}" if near else ""
    return f"{prefix}{key} is not a known config field{hint}"


def _same_type(default: Any) -> _Rule:
    if isinstance(default, bool):
        return schema.BOOLEAN
    if isinstance(default, int):
        return schema.Integer()
    if isinstance(default, float):
        return schema.Number()
    if isinstance(default, str):
        return schema.STRING
    return lambda v: None


def problems(config: Mapping) -> list[str]:
    """Every problem of `config` as 'config.<field>=<value>: <rule>'; empty when valid.

    Fields the config lacks are not reported: a config.json of an older run may lack newer
    fields, which then keep their code defaults.
    """
    checks = {k: _same_type(v) for k, v in _schema_defaults().items()} | rules()
    out = []
    for key, value in _flatten(config):
        rule = checks.get(key)
        if rule is None:
            out.append(unknown_key_message(key))
        elif (broken := rule(value)) is not None:
            out.append(f"config.{key}={value!r}: {broken}")
    return out


def validate(config: Mapping) -> None:
    """Raises ConfigError, one line listing every bad field, when `config` is not valid."""
    found = problems(config)
    if found:
        raise ConfigError("invalid config: " + "; ".join(found))
