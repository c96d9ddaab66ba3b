"""PyTorch weights files <-> NNX variables: state_dict import and export.

Import reads a `.pt`/`.pth`/`.ckpt` (loaded with `weights_only=True`) or `.safetensors` file in
any key format `weights.key_formats` recognises (Figure 10 keys as in docs/conventions.md §1,
the STF code's, training-checkpoint wrappers, user key maps); export writes Figure 10 keys (or
the STF code's), so import followed by export is the identity, bit for bit. The command line
is `python -m stlight_jax.convert` (stlight_jax/cli/convert.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from stlight_jax.models import ModelConfig
from stlight_jax.weights import key_formats as weight_layouts
from stlight_jax.weights.param_table import expected_torch_shapes, parameter_layout


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; no torch import needed to recognise it
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _is_floating(dtype: np.dtype) -> bool:
    """True for every floating dtype, ml_dtypes' bfloat16 and float8s included (their numpy
    kind is 'V', not 'f')."""
    import jax.numpy as jnp

    return bool(jnp.issubdtype(dtype, jnp.floating))


def _check_keys(state_dict: Mapping[str, Any], cfg: ModelConfig, source: str) -> None:
    expected = expected_torch_shapes(cfg)
    missing = sorted(set(expected) - set(state_dict), key=_key_order(expected))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k}: {tuple(np.shape(state_dict[k]))} (expected {expected[k]})"
        for k in expected
        if k in state_dict and tuple(np.shape(state_dict[k])) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if wrong:
        problems.append(f"wrongly shaped {wrong}")
    if problems:
        raise ValueError(f"{source} does not fit the model config {cfg}: " + "; ".join(problems))


def _key_order(expected: Mapping[str, Any]) -> Callable[[str], int]:
    order = {k: i for i, k in enumerate(expected)}
    return lambda k: order.get(k, len(order))


def _set(tree: dict, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def state_dict_to_variables(
    state_dict: Mapping[str, Any], cfg: ModelConfig, strict: bool = True, source: str = "state_dict"
) -> dict[str, dict]:
    """Torch state_dict -> {'params': pure dict, 'batch_stats': pure dict} of numpy arrays.

    With `strict`, missing, unexpected and wrongly shaped keys are all listed in one
    ValueError. Without it, only the keys present are converted (the rest keep the values of
    the model they are merged into) and wrongly shaped keys are still an error.
    """
    state_dict = {k: _to_numpy(v) for k, v in state_dict.items()}
    if strict:
        _check_keys(state_dict, cfg, source)
    else:
        expected = expected_torch_shapes(cfg)
        wrong = [k for k in state_dict if k in expected and state_dict[k].shape != expected[k]]
        if wrong:
            _check_keys({k: state_dict[k] for k in wrong}, cfg, source)
    stacked: dict[tuple, dict[int, np.ndarray]] = {}
    out: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for entry in parameter_layout(cfg):
        if entry.torch_key not in state_dict:
            continue
        coll, path, index = entry.collection, entry.path, entry.index
        value = entry.kind.to_ours(state_dict[entry.torch_key])
        if _is_floating(value.dtype):
            # Parameters, BatchNorm statistics and hence Adam state are float32 whatever the
            # file holds: a bfloat16 model would not restore into the float32 resume target.
            value = value.astype(np.float32, copy=False)
        if index is None:
            _set(out[coll], path, value)
        else:
            stacked.setdefault((coll, path), {})[index] = value
    for (coll, path), by_index in stacked.items():
        if len(by_index) == cfg.depth:
            _set(out[coll], path, np.stack([by_index[i] for i in range(cfg.depth)]))
        else:  # non-strict partial import of a stacked tensor: keep per-index values
            _set(out[coll], path, by_index)
    return out


def variables_to_state_dict(
    params: Mapping, batch_stats: Mapping, cfg: ModelConfig
) -> dict[str, np.ndarray]:
    """{'params', 'batch_stats'} pure dicts (jax or numpy arrays) -> Figure 10 state_dict."""
    colls = {"params": params, "batch_stats": batch_stats}
    out: dict[str, np.ndarray] = {}
    for entry in parameter_layout(cfg):
        value = np.asarray(_get(colls[entry.collection], entry.path))
        if entry.index is not None:
            value = value[entry.index]
        out[entry.torch_key] = entry.kind.to_torch(value)
    return out


def read_weights_file(path: str) -> Any:
    """The object stored in a .safetensors file or a torch file (read with weights_only=True:
    tensors and plain containers only, never pickled code)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as e:  # SafetensorError (not a ValueError) for empty/damaged files
            raise ValueError(f"cannot read {path!r} as .safetensors: {_reason(e, path)}") from e
    try:
        import torch
    except ImportError as e:  # torch is optional: only .pt/.pth need it
        raise ImportError(
            f"reading {path!r} needs PyTorch (`pip install torch==2.13.0`); "
            "a .safetensors file does not"
        ) from e
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {path!r} as a torch checkpoint: {_reason(e, path)}") from e


def _numpy_data_globals() -> list:
    """numpy arrays and scalars for the weights_only unpickler: training checkpoints (STF's
    trainer) store numpy RNG states and losses next to the weights. Data types only, no code;
    numpy 1.x wrote the same functions under numpy.core."""
    from numpy._core import multiarray

    return [
        np.ndarray,
        np.dtype,
        multiarray._reconstruct,
        multiarray.scalar,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        *(type(np.dtype(c)) for c in "?bBhHiIlLqQefdg"),
    ]


def load_state_dict_file(
    path: str, key_map: str | Sequence[str] | None = None, strict: bool = True
) -> dict[str, np.ndarray]:
    """Reads weights in any layout `weight_layouts` recognises and returns Figure 10 keys.

    Training checkpoints (Lightning's `state_dict`, STF's `model_state_dict`) and `model.` /
    `module.` prefixes are unwrapped; `key_map` names JSON key map files for other layouts.
    """
    return read_state_dict(path, key_map, strict)[0]


def read_state_dict(
    path: str, key_map: str | Sequence[str] | None = None, strict: bool = True
) -> tuple[dict[str, np.ndarray], str]:
    """`load_state_dict_file` plus the name of the layout the keys were recognised as."""
    raw = read_weights_file(path)
    state, layout = weight_layouts.to_paper(
        raw, source=repr(path), key_maps=weight_layouts.load_key_maps(key_map), strict=strict
    )
    return {k: _to_numpy(v) for k, v in state.items()}, layout


def _reason(error: Exception, path: str) -> str:
    """Why a weights file did not load, never empty (torch says nothing about an empty file)."""
    size = os.path.getsize(path)
    text = " ".join(str(error).split()) or type(error).__name__
    return f"the file is empty (0 bytes; {text})" if size == 0 else text


def save_state_dict_file(state_dict: Mapping[str, np.ndarray], path: str) -> None:
    """Writes a state_dict as .safetensors, or as a torch .pt/.pth file (needs torch)."""
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({k: np.array(v, order="C") for k, v in state_dict.items()}, path)
        return
    import torch

    torch.save({k: torch.from_numpy(np.array(v, order="C")) for k, v in state_dict.items()}, path)


def load_into_model(
    model: Any, state_dict: Mapping[str, Any], strict: bool = True, source: str = "state_dict"
) -> None:
    """Copies a torch state_dict into an `STLight` NNX model in place."""
    from flax import nnx

    variables = state_dict_to_variables(state_dict, model.config, strict=strict, source=source)
    for coll, var_type in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, var_type)
        pure = nnx.to_pure_dict(state)
        _merge(pure, variables[coll])
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(model, state)


def _merge(dst: dict, src: Mapping) -> None:
    import jax.numpy as jnp

    for k, v in src.items():
        if isinstance(v, Mapping) and not all(isinstance(i, int) for i in v):
            _merge(dst[k], v)
        elif isinstance(v, Mapping):  # partial stacked import: {index: array}
            arr = np.array(dst[k])
            for i, row in v.items():
                arr[i] = row
            dst[k] = jnp.asarray(arr)
        else:
            dst[k] = jnp.asarray(v)


def model_state_dict(model: Any) -> dict[str, np.ndarray]:
    """The Figure 10 state_dict of an `STLight` NNX model."""
    from flax import nnx

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return variables_to_state_dict(params, stats, model.config)


# ---------------------------------------------------------------------------------------------
# What `python -m stlight_jax.convert {import,export}` (stlight_jax/cli/convert.py) runs.


def import_to_checkpoint(
    weights: str,
    config: Any,
    out: str,
    strict: bool = True,
    key_map: str | Sequence[str] | None = None,
) -> str:
    """PyTorch weights file (any layout `weight_layouts` recognises) -> Orbax weights
    checkpoint that train.py (`init_from`) and evaluate.py (`--checkpoint`) start from.
    Returns the checkpoint path and the layout read."""
    from flax import nnx

    from stlight_jax.checkpoints import weights_only
    from stlight_jax.models import model_from_config

    model = model_from_config(config, seed=0)
    state_dict, layout = read_state_dict(weights, key_map, strict)
    load_into_model(model, state_dict, strict=strict, source=weights)
    where = weights_only.save_weights(
        out, nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)
    )
    return f"{where} (from the {layout} layout)"


def export_from_checkpoint(
    path: str, config: Any, out: str, step: str | None = None, layout: str = "paper"
) -> str:
    """Orbax checkpoint (workdir, checkpoints dir or weights checkpoint) -> PyTorch file.

    `out` ending in .safetensors writes safetensors, anything else a torch.save state_dict;
    `layout` 'paper' writes Figure 10 keys, 'stf' the STF code's module names.
    """
    from flax import nnx

    from stlight_jax.checkpoints import weights_only
    from stlight_jax.models import model_from_config

    model = model_from_config(config, seed=0)
    params, batch_stats, chosen = weights_only.restore_weights(
        path, nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat), step
    )
    nnx.update(model, params, batch_stats)
    save_state_dict_file(weight_layouts.from_paper(model_state_dict(model), layout), out)
    return f"{out} (step {chosen}, {layout} layout)"
