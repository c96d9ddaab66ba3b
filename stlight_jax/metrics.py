"""MSE, MAE, SSIM and PSNR exactly as OpenSTL reports them (docs/conventions.md §3), in JAX.

Arrays are NHWC video ``(B, T', H, W, C)`` on the model's [0, 1] scale. ``accumulate`` is pure
and jittable and keeps per-lead-time sums, so a test set is streamed batch by batch; ``finalize``
turns the sums into floats on the host.

- MSE / MAE: per-frame SUM over C*H*W of (pred-true)^2 / |pred-true|, UNCLIPPED pred, averaged
  over all N*T' frames (this is why Moving MNIST MSE reads ~20-30).
- SSIM: scikit-image 0.19 ``structural_similarity`` for float input (7x7 box window, sample
  covariance, K1=0.01, K2=0.03, map cropped by 3 px) with pred clipped to [0, 1], true not
  clipped, per frame and channel, averaged over channels then frames. ``ssim`` uses
  ``ssim_data_range`` (default 2.0, the value skimage silently used and the paper reports).
  ``init_accumulator(..., with_ssim_dr1=True)`` also reports ``ssim_dr1``: the textbook SSIM
  with data_range 1.0 (lower, NOT comparable with the paper), computed in the same pass.
- PSNR: pred clipped; mean over frames of -10*log10(mean over C*H*W of the squared error),
  peak 1.0. A frame with zero error has infinite PSNR; as in OpenSTL this makes ``psnr`` (and
  that lead time's curve) ``inf`` unless ``finalize(..., exact_frame_psnr=x)`` counts such
  frames as ``x`` dB. ``psnr_exact_frames`` always says how many there were.

Precision: per-frame values are computed in float32 (as OpenSTL does); the running sums are
float32 pairs (sum, error) updated with Knuth's TwoSum, so the result over 10,000+ sequences
is as accurate as a float64 sum; ``finalize`` adds the pairs in float64.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

OPENSTL_SSIM_DATA_RANGE = 2.0
SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

Accumulator = dict[str, Any]


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Knuth's TwoSum: s + err == a + b exactly (XLA does not reassociate float adds)."""
    s = a + b
    bv = s - a
    av = s - bv
    return s, (a - av) + (b - bv)


def _box_sum_valid(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Sum over a sliding window of ``size`` along ``axis``, 'valid' positions only."""
    # Only valid positions are needed because skimage crops (size-1)/2 px on every side,
    # which removes exactly the positions whose window touches the padded border.
    # Adding shifted slices is exact-enough (7 terms), fuses well and avoids the
    # cancellation of cumulative-sum differences in float32.
    n = x.shape[axis] - size + 1
    out = lax.slice_in_dim(x, 0, n, axis=axis)
    for k in range(1, size):
        out = out + lax.slice_in_dim(x, k, k + n, axis=axis)
    return out


def ssim_frames(
    pred: jax.Array, true: jax.Array, data_ranges: tuple[float, ...] = (OPENSTL_SSIM_DATA_RANGE,)
) -> list[jax.Array]:
    """Per-frame SSIM, shape (B, T'), for each data range; pred must already be clipped."""
    h, w = pred.shape[2:4]
    if min(h, w) < SSIM_WIN_SIZE:
        raise ValueError(f"SSIM needs frames of at least 7x7 pixels, got {h}x{w}")
    # Covariances are shift-invariant: centring on 0.5 halves the magnitudes entering
    # E[x^2] - E[x]^2 and so the float32 cancellation error; the means are shifted back.
    # Channels first so W is the minor axis: with C=1 last, XLA:CPU ran this 5x slower.
    x = jnp.moveaxis(pred, -1, 2) - 0.5
    y = jnp.moveaxis(true, -1, 2) - 0.5
    stacked = jnp.stack([x, y, x * x, y * y, x * y])  # (5, B, T', C, H, W)
    np_win = SSIM_WIN_SIZE * SSIM_WIN_SIZE
    mom = _box_sum_valid(_box_sum_valid(stacked, 4, SSIM_WIN_SIZE), 5, SSIM_WIN_SIZE) / np_win
    mx, my, mxx, myy, mxy = mom
    cov_norm = np_win / (np_win - 1.0)  # sample covariance, as use_sample_covariance=True
    vx = cov_norm * (mxx - mx * mx)
    vy = cov_norm * (myy - my * my)
    vxy = cov_norm * (mxy - mx * my)
    ux = mx + 0.5
    uy = my + 0.5
    out = []
    for data_range in data_ranges:
        c1 = (SSIM_K1 * data_range) ** 2
        c2 = (SSIM_K2 * data_range) ** 2
        s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        # Equal-size maps per channel, so the mean over (C, H, W) is the mean of the
        # per-channel SSIMs, as skimage's channel_axis averaging.
        out.append(jnp.mean(s_map, axis=(2, 3, 4)))
    return out


def frame_metrics(
    pred: jax.Array,
    true: jax.Array,
    ssim_data_range: float = OPENSTL_SSIM_DATA_RANGE,
    with_ssim_dr1: bool = False,
) -> dict[str, jax.Array]:
    """Per-sample, per-frame metrics, each of shape (B, T'); PSNR may be +inf."""
    pred = jnp.asarray(pred, jnp.float32)
    true = jnp.asarray(true, jnp.float32)
    if pred.ndim != 5 or pred.shape != true.shape:
        raise ValueError(
            f"pred and true must both be (B, T', H, W, C); got {pred.shape} and {true.shape}"
        )
    err = pred - true  # unclipped: OpenSTL computes MSE/MAE before clipping
    out = {
        "mse": jnp.sum(err * err, axis=(2, 3, 4)),
        "mae": jnp.sum(jnp.abs(err), axis=(2, 3, 4)),
    }
    pred_c = jnp.clip(pred, 0.0, 1.0)
    ranges = (ssim_data_range, 1.0) if with_ssim_dr1 else (ssim_data_range,)
    ssims = ssim_frames(pred_c, true, ranges)
    out["ssim"] = ssims[0]
    if with_ssim_dr1:
        out["ssim_dr1"] = ssims[1]
    err_c = pred_c - true
    out["psnr"] = -10.0 * jnp.log10(jnp.mean(err_c * err_c, axis=(2, 3, 4)))
    return out


def init_accumulator(frames_out: int, with_ssim_dr1: bool = False) -> Accumulator:
    """Zeroed running sums for ``frames_out`` lead times (add ``ssim_dr1`` if asked)."""
    names = ["mse", "mae", "ssim", "psnr"] + (["ssim_dr1"] if with_ssim_dr1 else [])
    zeros = jnp.zeros((frames_out,), jnp.float32)
    return {
        "sum": {n: zeros for n in names},
        "err": {n: zeros for n in names},  # low-order part of each TwoSum pair
        "psnr_exact": jnp.zeros((frames_out,), jnp.int32),  # inf-PSNR frames, kept out of sum
        "count": jnp.zeros((), jnp.int32),
    }


def accumulate(
    acc: Accumulator,
    pred: jax.Array,
    true: jax.Array,
    mask: jax.Array | None = None,
    ssim_data_range: float = OPENSTL_SSIM_DATA_RANGE,
) -> Accumulator:
    """Add a batch's per-frame metric sums; samples with ``mask == 0`` (padding) are ignored."""
    frames_out = acc["psnr_exact"].shape[0]
    if pred.shape[1] != frames_out:
        raise ValueError(f"accumulator has {frames_out} frames, batch has {pred.shape[1]}")
    per = frame_metrics(pred, true, ssim_data_range, with_ssim_dr1="ssim_dr1" in acc["sum"])
    if mask is None:
        valid = jnp.ones((pred.shape[0], 1), bool)
    else:
        valid = (jnp.asarray(mask) > 0).reshape(-1, 1)
    exact = jnp.isposinf(per["psnr"]) & valid
    new_sum, new_err = {}, {}
    for name, value in per.items():
        # where, not multiply: padded samples may hold inf/nan (e.g. PSNR of zero frames).
        keep = valid & ~exact if name == "psnr" else valid
        batch_sum = jnp.sum(jnp.where(keep, value, 0.0), axis=0)
        new_sum[name], e = _two_sum(acc["sum"][name], batch_sum)
        new_err[name] = acc["err"][name] + e
    return {
        "sum": new_sum,
        "err": new_err,
        "psnr_exact": acc["psnr_exact"] + jnp.sum(exact, axis=0, dtype=jnp.int32),
        "count": acc["count"] + jnp.sum(valid, dtype=jnp.int32),
    }


def finalize(acc: Accumulator, exact_frame_psnr: float | None = None) -> dict[str, Any]:
    """Host-side means: overall (over all N*T' frames) and per lead time, as Python floats."""
    acc = jax.device_get(acc)
    n = int(acc["count"])
    if n == 0:
        raise ValueError("no samples were accumulated")
    per_frame = {}
    for name in acc["sum"]:
        total = np.asarray(acc["sum"][name], np.float64) + np.asarray(acc["err"][name], np.float64)
        per_frame[name] = total / n
    exact = np.asarray(acc["psnr_exact"], np.int64)
    if exact_frame_psnr is None:
        per_frame["psnr"] = np.where(exact > 0, np.inf, per_frame["psnr"])
    else:
        per_frame["psnr"] = per_frame["psnr"] + exact * float(exact_frame_psnr) / n
    # Every lead time has the same number of frames, so the mean of the per-frame means is
    # the mean over all N*T' frames.
    result: dict[str, Any] = {name: float(np.mean(v)) for name, v in per_frame.items()}
    result["per_frame"] = {name: [float(x) for x in v] for name, v in per_frame.items()}
    result["num_samples"] = n
    result["psnr_exact_frames"] = int(exact.sum())
    return result


_accumulate_jit = jax.jit(accumulate)


def compute(
    pred: Any,
    true: Any,
    ssim_data_range: float = OPENSTL_SSIM_DATA_RANGE,
    with_ssim_dr1: bool = False,
    batch_size: int | None = None,
    exact_frame_psnr: float | None = None,
) -> dict[str, Any]:
    """All metrics of (N, T', H, W, C) arrays (numpy or jax), in batches of ``batch_size``."""
    n = pred.shape[0]
    acc = init_accumulator(pred.shape[1], with_ssim_dr1)
    step = n if batch_size is None else batch_size
    for start in range(0, n, step):
        acc = _accumulate_jit(
            acc, pred[start : start + step], true[start : start + step], None, ssim_data_range
        )
    return finalize(acc, exact_frame_psnr)
