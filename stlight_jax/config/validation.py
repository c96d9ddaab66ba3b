"""One pass over a whole run config at startup: every field's type and allowed range, and the
closest known key for a misspelled one; the first thing `train_and_evaluate` does."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any


class ConfigError(ValueError):
    """A config field has the wrong type, is out of range, or is not a known field."""


_Rule = Callable[[Any], str | None]  # value -> None when fine, else the rule it breaks


def _integer(lo: int | None = None) -> _Rule:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer" + (f" >= {lo}" if lo is not None else "")
        if lo is not None and v < lo:
            return f"must be >= {lo}"
        return None

    return check


def _number(
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> _Rule:
    bounds = [
        f"{op} {b:g}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None
    ]
    rule = "must be a finite number" + (f" {' and '.join(bounds)}" if bounds else "")

    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return rule
        ok = (
            (gt is None or v > gt)
            and (ge is None or v >= ge)
            and (lt is None or v < lt)
            and (le is None or v <= le)
        )
        return None if ok else rule

    return check


def _choice(*options: str) -> _Rule:
    return lambda v: None if v in options else f"must be one of {list(options)}"


def _string(v):
    return None if isinstance(v, str) else "must be a string"


def _boolean(v):
    return None if isinstance(v, bool) else "must be True or False"


def _pair(item: _Rule, what: str, increasing: bool = False) -> _Rule:
    def check(v):
        if not isinstance(v, (tuple, list)) or len(v) != 2 or any(item(x) for x in v):
            return f"must be a pair of {what}"
        if increasing and not v[0] < v[1]:
            return f"must be a pair of {what} with the first < the second"
        return None

    return check


# Every field of configs/common.py's schema. A field a config adds beyond these is refused
# as unknown (with the closest known key), so a misspelled override cannot pass unnoticed.
RULES: dict[str, _Rule] = {
    "name": _string,
    "seed": _integer(0),
    "model.frames_in": _integer(1),
    "model.frames_out": _integer(1),
    "model.channels": _integer(1),
    "model.image_size": _pair(_integer(1), "integers >= 1"),
    "model.dim": _integer(1),
    "model.depth": _integer(1),
    "model.patch": _integer(1),
    "model.overlap": _integer(0),
    "model.k1": _integer(1),
    "model.k2": _integer(1),
    "model.dilation": _integer(1),
    "model.conv_impl": _choice("auto", "lax", "shifted"),
    "model.init": _choice("hybrid", "kaiming_normal", "kaiming_uniform"),
    "model.decoder": _choice("shuffle_reassemble", "reassemble_shuffle"),
    "model.skip": _choice("thirds", "fifths", "none"),
    "data.name": _string,
    "data.data_dir": _string,
    "data.batch_size": _integer(1),
    "data.eval_batch_size": _integer(1),
    "data.seed": _integer(0),
    "data.num_train": _integer(1),
    "data.num_val": _integer(0),
    "data.num_test": _integer(1),
    "data.mnist_path": _string,
    "data.tfds_dir": _string,
    "data.test_file": _string,
    "data.test_source": _choice("auto", "tfds"),
    "data.path": _string,
    "data.layout": _choice("NTHWC", "NTCHW"),
    "data.value_range": _pair(_number(), "finite numbers", increasing=True),
    "data.worker_count": _integer(0),
    "data.read_threads": _integer(1),
    "data.prefetch_buffer_size": _integer(0),
    "data.num_digits": _integer(1),
    "optimizer.learning_rate": _number(gt=0),
    "optimizer.schedule": _choice("onecycle", "cosine"),
    "optimizer.pct_start": _number(gt=0, lt=1),
    "optimizer.div_factor": _number(gt=0),
    "optimizer.final_div_factor": _number(gt=0),
    "optimizer.cycle_momentum": _boolean,
    "optimizer.base_momentum": _number(ge=0, lt=1),
    "optimizer.max_momentum": _number(ge=0, lt=1),
    "optimizer.b1": _number(ge=0, lt=1),
    "optimizer.b2": _number(ge=0, lt=1),
    "optimizer.eps": _number(gt=0),
    "optimizer.weight_decay": _number(ge=0),
    "optimizer.min_lr": _number(ge=0),
    "optimizer.warmup_epochs": _integer(0),
    "optimizer.warmup_lr": _number(ge=0),
    "num_epochs": _integer(1),
    "l1_weight": _number(ge=0),
    "compute_dtype": _choice("float32", "bfloat16"),
    "eval_every_epochs": _integer(0),
    "log_every_steps": _integer(0),
    "checkpoint_every_steps": _integer(0),
    "init_from": _string,
    "init_from_key_map": _string,
}


def _schema_defaults() -> dict[str, Any]:
    """Fields of configs/common.py that have no rule here yet (a field added there later):
    known, and type-checked against their default. Empty when the configs package is absent
    (an installed package without the repository's configs/)."""
    try:
        from stlight_jax.configs.common import get_base_config
    except ImportError:
        return {}
    return {k: v for k, v in _flatten(get_base_config()) if k not in RULES}


def _flatten(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) or hasattr(v, "items") and not isinstance(v, (str, bytes)):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def known_keys() -> list[str]:
    return [*RULES, *_schema_defaults()]


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
        return _boolean
    if isinstance(default, int):
        return _integer()
    if isinstance(default, float):
        return _number()
    if isinstance(default, str):
        return _string
    return lambda v: None


def problems(config: Mapping) -> list[str]:
    """Every problem of `config` as 'config.<field>=<value>: <rule>'; empty when valid.

    Fields the config lacks are not reported: a config.json of an older run may lack newer
    fields, which then keep their code defaults.
    """
    extra = {k: _same_type(v) for k, v in _schema_defaults().items()}
    out = []
    for key, value in _flatten(config):
        rule = RULES.get(key) or extra.get(key)
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
