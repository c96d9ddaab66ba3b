"""Array-level building blocks of STLight: depthwise convs, PyTorch pixel shuffle, BatchNorm.

Everything here is a pure function on NHWC arrays, so the model, the parity tests and the
benchmarks share one implementation of each PyTorch convention (docs/conventions.md §2).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from stlight_jax.config.schema import CONV_IMPLS

BN_EPS = 1e-5  # PyTorch BatchNorm2d default
BN_MOMENTUM = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch
_SQRT_HALF = math.sqrt(0.5)  # Python floats: weakly typed, so bf16 stays bf16
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def torch_same_padding(kernel_size: int, dilation: int = 1) -> tuple[int, int]:
    """PyTorch's padding='same' for stride 1: the extra pixel of an even kernel goes right."""
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def _gelu_impl(x: jax.Array) -> jax.Array:
    return x * 0.5 * (1.0 + lax.erf(x * _SQRT_HALF))


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """PyTorch nn.GELU(): the exact erf form, x * 0.5 * (1 + erf(x / sqrt(2))).

    Written out rather than `jax.nn.gelu(approximate=False)` (an erfc form): this is the
    formula PyTorch's kernel evaluates. The custom VJP saves only
    x (autodiff saved two derivative factors, and XLA recomputed the producing depthwise conv
    into each of those stores) and applies PyTorch's gelu_backward: g * (cdf + x * pdf).
    """
    return _gelu_impl(x)


def _gelu_fwd(x):
    return _gelu_impl(x), x


def _gelu_bwd(x, g):
    cdf = 0.5 * (1.0 + lax.erf(x * _SQRT_HALF))
    pdf = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return (g * (cdf + x * pdf),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def depthwise_conv_lax(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """'same' depthwise conv via lax's grouped convolution. x (B,H,W,D), kernel (k,k,D)."""
    k = kernel.shape[0]
    pad = torch_same_padding(k, dilation)
    return lax.conv_general_dilated(
        x,
        kernel[:, :, None, :],
        window_strides=(1, 1),
        padding=(pad, pad),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def _shifted_taps(xp: jax.Array, k: int, dilation: int, out_h: int, out_w: int):
    """Yields (i, j, slice) for every tap of a k x k kernel over the padded input xp."""
    for i in range(k):
        for j in range(k):
            yield (
                i,
                j,
                lax.slice_in_dim(
                    lax.slice_in_dim(xp, i * dilation, i * dilation + out_h, axis=1),
                    j * dilation,
                    j * dilation + out_w,
                    axis=2,
                ),
            )


def _depthwise_shifted_fwd_impl(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    k = kernel.shape[0]
    lo, hi = torch_same_padding(k, dilation)
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    out = None
    for i, j, tap in _shifted_taps(xp, k, dilation, h, w):
        term = tap * kernel[i, j]
        out = term if out is None else out + term
    return out


def _depthwise_shifted_input_grad(g: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    # The adjoint of a 'same' correlation is the correlation with the flipped kernel and the
    # padding mirrored (the extra pixel of an even kernel moves to the other side).
    k = kernel.shape[0]
    lo, hi = torch_same_padding(k, dilation)
    _, h, w, _ = g.shape
    gp = jnp.pad(g, ((0, 0), (hi, lo), (hi, lo), (0, 0)))
    flipped = kernel[::-1, ::-1]
    out = None
    for i, j, tap in _shifted_taps(gp, k, dilation, h, w):
        term = tap * flipped[i, j]
        out = term if out is None else out + term
    return out


def _depthwise_shifted_kernel_grad(x: jax.Array, g: jax.Array, k: int, dilation: int) -> jax.Array:
    # dk[i, j, c] = sum_{b,h,w} xp[b, h + i*dil, w + j*dil, c] * g[b, h, w, c]. One reduction
    # per tap makes XLA copy each shifted slice out (its fast reduce cannot read a slice) and
    # stream x and g 49 times. Instead, per kernel row: one elementwise fusion sums the batch
    # explicitly for the k taps of the row, stacked, and a single reduction over (H, W)
    # follows (2.3x faster at batch 4, 7x at batch 16, see benchmarks/README.md).
    lo, hi = torch_same_padding(k, dilation)
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    rows = []
    for i in range(k):
        xi = lax.slice_in_dim(xp, i * dilation, i * dilation + h, axis=1)
        parts = []
        for j in range(k):
            tap = lax.slice_in_dim(xi, j * dilation, j * dilation + w, axis=2)
            acc = tap[0] * g[0]
            for n in range(1, b):
                acc = acc + tap[n] * g[n]
            parts.append(acc)
        rows.append(jnp.sum(jnp.stack(parts), axis=(1, 2)))
    return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shifted(x: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    return _depthwise_shifted_fwd_impl(x, kernel, dilation)


def _materialized(fn, *args):
    """fn(*args) as a buffer XLA:CPU cannot fuse into (and so recompute in) each consumer.

    XLA:CPU strips `optimization_barrier` before fusion; a conditional is a real boundary.
    Both branches are fn, so the (opaque, always true) predicate cannot change the result.
    """
    probe = args[-1].reshape(-1)[0]
    return lax.cond(probe == probe, fn, fn, *args)


def _depthwise_shifted_fwd(x, kernel, dilation):
    # In a train step the output feeds GELU and the residual the scan saves for the backward;
    # XLA duplicated the 49-tap sum into both.
    out = _materialized(
        functools.partial(_depthwise_shifted_fwd_impl, dilation=dilation), x, kernel
    )
    return out, (x, kernel)


def _depthwise_shifted_bwd(dilation, res, g):
    x, kernel = res
    # Materialised for the same reason as the forward output: in the mixer stack dx feeds the
    # skip's two selects, and XLA fused (= recomputed) the whole tap sum into each of them.
    dx = _materialized(
        functools.partial(_depthwise_shifted_input_grad, dilation=dilation), g, kernel
    )
    dk = _depthwise_shifted_kernel_grad(x, g, kernel.shape[0], dilation).astype(kernel.dtype)
    return dx, dk


_depthwise_shifted.defvjp(_depthwise_shifted_fwd, _depthwise_shifted_bwd)


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, dilation: int = 1) -> jax.Array:
    """'same' depthwise conv as a sum of shifted slices times per-channel weights.

    Same contract as `depthwise_conv_lax`. XLA:CPU runs grouped convolutions far slower than
    this elementwise form; the custom VJP keeps autodiff from materialising a padded copy per
    tap (input grad = the same sum with the flipped kernel, kernel grad = per-tap reductions).
    """
    return _depthwise_shifted(x, kernel, dilation)


# One per formulation of config/schema.py's CONV_IMPLS but 'auto', which picks one of these.
DEPTHWISE_IMPLS = {"lax": depthwise_conv_lax, "shifted": depthwise_conv_shifted}


def resolve_conv_impl(impl: str) -> str:
    """Maps 'auto' to the formulation measured fastest on the default backend."""
    if impl not in CONV_IMPLS:
        choices = ", ".join(map(repr, CONV_IMPLS))
        raise ValueError(f"model.conv_impl={impl!r} is not one of {choices}")
    if impl == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "lax"
    return impl


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, dilation: int = 1, impl: str = "lax"
) -> jax.Array:
    """PyTorch Conv2d(D, D, k, groups=D, padding='same', dilation) on NHWC; kernel (k,k,D)."""
    return DEPTHWISE_IMPLS[impl](x, kernel, dilation) + bias


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """PyTorch PixelShuffle ("CRD") on NHWC: channel c*r*r + i*r + j -> pixel (h*r+i, w*r+j), c.

    TF's depth_to_space is the "DCR" order (i*r + j)*C + c and gives a different image.
    """
    b, h, w, crr = x.shape
    c = crr // (r * r)
    x = x.reshape(b, h, w, c, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * r, w * r, c)


def batch_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    train: bool,
    momentum: float = BN_MOMENTUM,
    eps: float = BN_EPS,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """PyTorch BatchNorm2d over the last axis; returns (y, new running mean, new running var).

    Train mode normalises with the two-pass biased batch variance and updates the running
    variance with the unbiased one, as PyTorch does. Statistics are computed in float32
    whatever the compute dtype of x.
    """
    if train:
        xf = x.astype(jnp.float32)
        axes = tuple(range(x.ndim - 1))
        n = 1
        for a in axes:
            n *= x.shape[a]
        batch_mean = jnp.mean(xf, axis=axes)
        batch_var = jnp.mean(jnp.square(xf - batch_mean), axis=axes)
        unbiased = batch_var * (n / max(n - 1, 1))
        new_mean = (1.0 - momentum) * mean + momentum * batch_mean
        new_var = (1.0 - momentum) * var + momentum * unbiased
        use_mean, use_var = batch_mean, batch_var
    else:
        new_mean, new_var = mean, var
        use_mean, use_var = mean, var
    inv = lax.rsqrt(use_var + eps) * scale
    y = (x.astype(jnp.float32) - use_mean) * inv + bias
    return y.astype(x.dtype), new_mean, new_var
