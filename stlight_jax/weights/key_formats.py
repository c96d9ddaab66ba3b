"""Recognises a PyTorch STLight state_dict's layout by its keys and renames it to the paper's
Figure 10 keys (import), or renames Figure 10 keys to another layout (export).

Built-in layouts: `paper` (Figure 10 module names) and `stf` (the unofficial ziheng1027/STF
code: same network, other module names). Wrappers are peeled off first: a checkpoint dict's
`state_dict` (Lightning) or `model_state_dict` (STF's trainer, next to its optimizer and
scheduler states) entry, and key prefixes `model.`, `module.` (DDP) and `_orig_mod.`
(torch.compile). A user key map (JSON object of regex -> Figure 10 key, `\\1` for groups)
covers other codebases.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Every Figure 10 key, as templates: {i} is a block index, {p} a conv parameter, {bn} a
# BatchNorm entry. Each layout lists its name for the same tensor in the same order.
_CONV = "(?P<p>weight|bias)"
_BN = "(?P<bn>weight|bias|running_mean|running_var|num_batches_tracked)"
PAPER_TEMPLATES = (
    "patch_encoder.0.{p}",
    "patch_encoder.1.{bn}",
    "net.{i}.0.fn.0.{p}",
    "net.{i}.0.fn.1.{p}",
    "net.{i}.0.fn.3.{bn}",
    "net.{i}.1.0.{p}",
    "net.{i}.1.2.{bn}",
    "patch_reassemble.{p}",
)
LAYOUTS: dict[str, tuple[str, ...]] = {
    "paper": PAPER_TEMPLATES,
    "stf": (
        "encoder.encoder.0.{p}",
        "encoder.encoder.1.{bn}",
        "translator.{i}.depthwise_conv.fn.0.{p}",
        "translator.{i}.depthwise_conv.fn.1.{p}",
        "translator.{i}.depthwise_conv.fn.3.{bn}",
        "translator.{i}.pointwise_conv.0.{p}",
        "translator.{i}.pointwise_conv.2.{bn}",
        "patch_reassemble.{p}",
    ),
}
WRAPPER_ENTRIES = ("state_dict", "model_state_dict")
KEY_PREFIXES = ("model.", "module.", "_orig_mod.")


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in (("i", r"(?P<i>\d+)"), ("p", _CONV), ("bn", _BN)):
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(pattern)


_REGEXES = {name: [_template_regex(t) for t in ts] for name, ts in LAYOUTS.items()}


def _rename(key: str, source: str, target: str) -> str | None:
    """`key` in layout `source` -> its name in layout `target`, or None if `source` lacks it."""
    for regex, template in zip(_REGEXES[source], LAYOUTS[target], strict=True):
        m = regex.fullmatch(key)
        if m:
            return template.format(**m.groupdict())
    return None


class KeyMap:
    """A user's renaming: the first regex that matches a whole key gives its Figure 10 name."""

    def __init__(self, rules: Mapping[str, str], name: str = "key map"):
        self.name = name
        self.rules = []
        for pattern, replacement in rules.items():
            if not isinstance(replacement, str):
                raise ValueError(f"{name}: the value for {pattern!r} is not a string")
            try:
                self.rules.append((re.compile(pattern), replacement))
            except re.error as e:
                raise ValueError(f"{name}: bad regex {pattern!r}: {e}") from None

    @classmethod
    def from_file(cls, path: str) -> KeyMap:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"key map {path!r} does not exist")
        try:
            with open(path) as f:
                rules = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"key map {path!r} is not JSON: {e}") from None
        if not isinstance(rules, dict):
            raise ValueError(f"key map {path!r} must be a JSON object of regex -> Figure 10 key")
        return cls(rules, name=f"key map {path}")

    def rename(self, key: str) -> str | None:
        for regex, replacement in self.rules:
            m = regex.fullmatch(key)
            if m:
                return m.expand(replacement)
        return None


def unwrap(obj: Any, source: str) -> dict[str, Any]:
    """Peels checkpoint wrappers off: the `state_dict` / `model_state_dict` entry of a training
    checkpoint dict, then any key prefix every key shares."""
    while isinstance(obj, Mapping):
        inner = [k for k in WRAPPER_ENTRIES if isinstance(obj.get(k), Mapping)]
        if not inner:
            break
        obj = obj[inner[0]]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state_dict")
    not_tensors = [k for k, v in obj.items() if not hasattr(v, "shape")]
    if not_tensors or not obj:
        raise ValueError(
            f"{source} is not a state_dict (a mapping of names to tensors)"
            + (f": entries {sorted(map(str, not_tensors))[:5]} are not tensors" if obj else "")
            + f"; the wrappers read are {list(WRAPPER_ENTRIES)}"
        )
    state = dict(obj)
    stripped = True
    while stripped:
        stripped = False
        for prefix in KEY_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _renamer(layout: str | KeyMap):
    if isinstance(layout, KeyMap):
        return layout.rename
    return lambda key: _rename(key, layout, "paper")


def detect(
    keys: Sequence[str], key_maps: Sequence[KeyMap] = ()
) -> tuple[str | KeyMap, list[str], list[str | KeyMap]]:
    """The layout (user key maps first, then the built-ins) that names the most of `keys`,
    the keys it does not name, and every layout tried."""
    tried: list[str | KeyMap] = [*key_maps, *LAYOUTS]
    best, best_unknown = None, None
    for layout in tried:
        rename = _renamer(layout)
        unknown = [k for k in keys if rename(k) is None]
        if best_unknown is None or len(unknown) < len(best_unknown):
            best, best_unknown = layout, unknown
    return best, best_unknown, tried


def layout_name(layout: str | KeyMap) -> str:
    return layout.name if isinstance(layout, KeyMap) else layout


def to_paper(
    raw: Any,
    source: str = "state_dict",
    key_maps: Sequence[KeyMap] = (),
    strict: bool = True,
) -> tuple[dict[str, Any], str]:
    """A loaded checkpoint in any supported layout -> (Figure 10 state_dict, layout name).

    With `strict`, every key must belong to one layout; otherwise keys no layout names are
    kept as they are (the converter then ignores them as unexpected).
    """
    state = unwrap(raw, source)
    layout, unknown, tried = detect(list(state), key_maps)
    if unknown and (strict or len(unknown) == len(state)):
        shown = ", ".join(repr(k) for k in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise ValueError(
            f"the keys of {source} fit none of the layouts tried "
            f"({', '.join(layout_name(x) for x in tried)}); closest is "
            f"{layout_name(layout)}, which names {len(state) - len(unknown)} of {len(state)} "
            f"keys but not {shown}; give a key map (JSON of regex -> Figure 10 key) for others"
        )
    rename = _renamer(layout)
    out = {}
    for key, value in state.items():
        new = rename(key) or key
        if new in out:
            raise ValueError(f"{layout_name(layout)} maps two keys of {source} onto {new!r}")
        out[new] = value
    return out, layout_name(layout)


def from_paper(state_dict: Mapping[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """A Figure 10 state_dict renamed to built-in `layout` ('paper' or 'stf')."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {sorted(LAYOUTS)}")
    out = {}
    for key, value in state_dict.items():
        new = _rename(key, "paper", layout)
        if new is None:
            raise ValueError(f"{key!r} is not a Figure 10 key")
        out[new] = value
    return out


def load_key_maps(paths: str | Sequence[str] | None) -> list[KeyMap]:
    """Key map files from a path, a comma-separated list of paths, or a list."""
    if not paths:
        return []
    if isinstance(paths, str):
        paths = [p for p in paths.split(",") if p]
    return [KeyMap.from_file(p) for p in paths]
