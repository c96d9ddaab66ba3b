"""The parameter layout, declared once: every Figure 10 state_dict key with its NNX path, stack
index, PyTorch shape and the transforms between the two layouts.

Conversion (`convert`), the expected shapes of an imported file and the parameter count of the
size report (`model_size`) are all read from `parameter_layout(cfg)`; see docs/conventions.md
for the key names. Other PyTorch key spellings are to be mapped onto these canonical keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from stlight_jax.models import ModelConfig

Transform = Callable[[np.ndarray], np.ndarray]


def _contiguous(f: Transform) -> Transform:
    return lambda w: np.ascontiguousarray(f(w))


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one kind of tensor is laid out in PyTorch and here."""

    name: str
    to_ours: Transform
    to_torch: Transform


IDENTITY = Kind("identity", lambda w: w, lambda w: w)
# Conv2d weight: PyTorch (out, in, kh, kw) <-> HWIO (kh, kw, in, out).
CONV = Kind(
    "conv",
    _contiguous(lambda w: w.transpose(2, 3, 1, 0)),
    _contiguous(lambda w: w.transpose(3, 2, 0, 1)),
)
# Depthwise Conv2d weight: (d, 1, k, k) <-> (k, k, d).
DEPTHWISE = Kind(
    "depthwise",
    _contiguous(lambda w: w[:, 0].transpose(1, 2, 0)),
    _contiguous(lambda w: w.transpose(2, 0, 1)[:, None]),
)
# 1x1 Conv2d weight: (out, in, 1, 1) <-> matrix (in, out).
POINTWISE = Kind(
    "pointwise",
    _contiguous(lambda w: w[:, :, 0, 0].T),
    _contiguous(lambda w: w.T[:, :, None, None]),
)
# BatchNorm's num_batches_tracked: int64 in PyTorch, int32 here (JAX's default integer).
COUNT = Kind(
    "count", lambda c: np.asarray(c, dtype=np.int32), lambda c: np.asarray(c, dtype=np.int64)
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One state_dict tensor: `torch_key` <-> `path` in the NNX `collection` ('params' or
    'batch_stats'), row `index` of a depth-stacked array (None: not stacked)."""

    torch_key: str
    collection: str
    path: tuple[str, ...]
    index: int | None
    torch_shape: tuple[int, ...]
    kind: Kind = IDENTITY

    @property
    def size(self) -> int:
        return math.prod(self.torch_shape)


def _param(key: str, path: str, index: int | None, shape: tuple, kind: Kind = IDENTITY) -> Entry:
    return Entry(key, "params", tuple(path.split("/")), index, shape, kind)


def _stat(key: str, path: str, index: int | None, shape: tuple, kind: Kind = IDENTITY) -> Entry:
    return Entry(key, "batch_stats", tuple(path.split("/")), index, shape, kind)


def _batch_norm(prefix: str, path: str, index: int | None, d: int) -> list[Entry]:
    """PyTorch BatchNorm2d's five tensors; scale and bias are trained, the rest are statistics."""
    return [
        _param(f"{prefix}.weight", f"{path}/scale", index, (d,)),
        _param(f"{prefix}.bias", f"{path}/bias", index, (d,)),
        _stat(f"{prefix}.running_mean", f"{path}/mean", index, (d,)),
        _stat(f"{prefix}.running_var", f"{path}/var", index, (d,)),
        _stat(f"{prefix}.num_batches_tracked", f"{path}/count", index, (), COUNT),
    ]


def _mixer_block(i: int, cfg: ModelConfig) -> list[Entry]:
    """Block i of Figure 10's `net`: Residual(Sequential(dw k1, dw k2 dilated, GELU, BN)), then
    Sequential(1x1 conv, GELU, BN); here row i of the stacked `mixer` arrays."""
    d, k1, k2, net = cfg.dim, cfg.k1, cfg.k2, f"net.{i}"
    return [
        _param(f"{net}.0.fn.0.weight", "mixer/dw1_kernel", i, (d, 1, k1, k1), DEPTHWISE),
        _param(f"{net}.0.fn.0.bias", "mixer/dw1_bias", i, (d,)),
        _param(f"{net}.0.fn.1.weight", "mixer/dw2_kernel", i, (d, 1, k2, k2), DEPTHWISE),
        _param(f"{net}.0.fn.1.bias", "mixer/dw2_bias", i, (d,)),
        *_batch_norm(f"{net}.0.fn.3", "mixer/norm1", i, d),
        _param(f"{net}.1.0.weight", "mixer/pw_kernel", i, (d, d, 1, 1), POINTWISE),
        _param(f"{net}.1.0.bias", "mixer/pw_bias", i, (d,)),
        *_batch_norm(f"{net}.1.2", "mixer/norm2", i, d),
    ]


def parameter_layout(cfg: ModelConfig) -> tuple[Entry, ...]:
    """Every tensor of the Figure 10 state_dict for `cfg`, in PyTorch's `state_dict()` order."""
    d, kp, d_up = cfg.dim, cfg.encoder_kernel, cfg.dim // cfg.patch**2
    t_in, t_out = cfg.frames_in * cfg.channels, cfg.frames_out * cfg.channels
    entries = [
        _param("patch_encoder.0.weight", "patch_encoder/kernel", None, (d, t_in, kp, kp), CONV),
        _param("patch_encoder.0.bias", "patch_encoder/bias", None, (d,)),
        *_batch_norm("patch_encoder.1", "patch_encoder/norm", None, d),
    ]
    for i in range(cfg.depth):
        entries += _mixer_block(i, cfg)
    # decoder='reassemble_shuffle' (appendix F): the 1x1 conv maps d -> T'*C*p^2 before the
    # shuffle instead of d/p^2 -> T'*C after it.
    if cfg.decoder == "reassemble_shuffle":
        r_out, r_in = t_out * cfg.patch**2, d
    else:
        r_out, r_in = t_out, d_up
    entries += [
        _param(
            "patch_reassemble.weight",
            "patch_reassemble/kernel",
            None,
            (r_out, r_in, 1, 1),
            POINTWISE,
        ),
        _param("patch_reassemble.bias", "patch_reassemble/bias", None, (r_out,)),
    ]
    return tuple(entries)


def expected_torch_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The Figure 10 state_dict keys for `cfg` and their shapes."""
    return {e.torch_key: e.torch_shape for e in parameter_layout(cfg)}


def count_trainable(cfg: ModelConfig) -> int:
    """Trainable parameters (conv weights and biases, BatchNorm scale and bias)."""
    return sum(e.size for e in parameter_layout(cfg) if e.collection == "params")
