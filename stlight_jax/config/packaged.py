"""Finds the paper's config files (the `stlight_jax.configs` package: the checkout's top-level
`configs/` through a symlink, a copy once installed) when a spec such as 'configs/mmnist.py:S'
or 'mmnist:S' names no file in the working directory."""

from __future__ import annotations

import os


def configs_dir() -> str:
    """The folder of the `stlight_jax.configs` package."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package, "configs")


def resolve(spec: str) -> str:
    """`spec` unchanged if its path exists (or is not a config module), else the packaged
    config of that name: 'configs/mmnist.py:S', 'mmnist.py:S' and 'mmnist:S' all work."""
    path, sep, arg = spec.partition(":")
    if os.path.exists(path) or path.endswith(".json"):
        return spec
    parent, name = os.path.split(path)
    if parent not in ("", "configs"):
        return spec
    if not name.endswith(".py"):
        name += ".py"
    candidate = os.path.join(configs_dir(), name)
    if name.startswith("_") or not os.path.isfile(candidate):
        return spec
    return candidate + sep + arg


def resolve_config_flag(argv: list[str]) -> list[str]:
    """argv with a `--config=spec` / `--config spec` resolved, for absl's config_flags, which
    read the path as given."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
    return out
