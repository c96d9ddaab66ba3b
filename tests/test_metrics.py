"""Metrics against an independent float64 numpy reading of docs/conventions.md §3 and skimage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from stlight_jax import metrics

RTOL = 1e-5
NAMES = ("mse", "mae", "ssim", "psnr")


# ---------------------------------------------------------------- independent reference


def ref_ssim_2d(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """skimage 0.19 float SSIM: 7x7 box, sample (/48) two-pass covariance, 3-px crop."""
    # 'valid' windows are exactly the positions left after the 3-px crop.
    wx = sliding_window_view(x, (7, 7))
    wy = sliding_window_view(y, (7, 7))
    mx = wx.mean(axis=(-2, -1))
    my = wy.mean(axis=(-2, -1))
    dx = wx - mx[..., None, None]
    dy = wy - my[..., None, None]
    vx = (dx * dx).sum(axis=(-2, -1)) / 48.0
    vy = (dy * dy).sum(axis=(-2, -1)) / 48.0
    vxy = (dx * dy).sum(axis=(-2, -1)) / 48.0
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def ref_frames(pred: np.ndarray, true: np.ndarray, data_range: float = 2.0) -> dict:
    """Per-frame (N, T') values by explicit loops in float64."""
    pred = pred.astype(np.float64)
    true = true.astype(np.float64)
    n, t, _, _, c = pred.shape
    out = {k: np.zeros((n, t)) for k in NAMES}
    for i in range(n):
        for j in range(t):
            p, g = pred[i, j], true[i, j]
            out["mse"][i, j] = ((p - g) ** 2).sum()
            out["mae"][i, j] = np.abs(p - g).sum()
            pc = np.minimum(np.maximum(p, 0.0), 1.0)
            out["ssim"][i, j] = np.mean(
                [ref_ssim_2d(pc[..., k], g[..., k], data_range) for k in range(c)]
            )
            mse_c = ((pc - g) ** 2).mean()
            out["psnr"][i, j] = np.inf if mse_c == 0 else -10 * np.log10(mse_c)
    return out


def rel_err(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


# ---------------------------------------------------------------- data


def random_pair(rng, shape):
    """Dense data; pred = true + noise, so some pred values leave [0, 1]."""
    true = rng.random(shape, dtype=np.float32)
    pred = (true + 0.15 * rng.standard_normal(shape)).astype(np.float32)
    return pred, true


def sparse_pair(rng, shape):
    """MNIST-like: mostly exact zeros, a few bright blobs; pred is blurred, shifted, noisy."""
    n, t, h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w]
    true = np.zeros(shape, np.float32)
    pred = np.zeros(shape, np.float32)
    for i in range(n):
        for j in range(t):
            for k in range(c):
                for _ in range(2):
                    cy, cx = rng.uniform(3, h - 3), rng.uniform(3, w - 3)
                    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0)
                    true[i, j, :, :, k] += np.where(blob > 0.05, blob, 0)
                    blob_p = np.exp(-((yy - cy - 0.7) ** 2 + (xx - cx + 0.4) ** 2) / 4.0)
                    pred[i, j, :, :, k] += 0.9 * np.where(blob_p > 0.05, blob_p, 0)
    true = np.minimum(true, 1.0)
    # small over/undershoots where the blobs are, as a real model produces
    pred += np.where(pred > 0, 0.05 * rng.standard_normal(shape), 0).astype(np.float32)
    return pred, true


SHAPE = (3, 4, 20, 27)  # non-square frames catch H/W mix-ups


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("kind", ["random", "sparse"])
def test_metrics_match_numpy_reference(kind, channels):
    rng = np.random.default_rng(10 * channels + (kind == "sparse"))
    make = random_pair if kind == "random" else sparse_pair
    pred, true = make(rng, (*SHAPE, channels))
    ref = ref_frames(pred, true)

    frames = metrics.frame_metrics(pred, true)
    for name in NAMES:
        assert rel_err(frames[name], ref[name]) <= RTOL, name

    res = metrics.compute(pred, true)
    assert res["num_samples"] == SHAPE[0]
    assert res["psnr_exact_frames"] == 0
    for name in NAMES:
        assert rel_err(res[name], ref[name].mean()) <= RTOL, name
        assert rel_err(res["per_frame"][name], ref[name].mean(axis=0)) <= RTOL, name
        assert len(res["per_frame"][name]) == SHAPE[1]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("data_range", [2.0, 1.0])
def test_ssim_matches_skimage(channels, data_range):
    skm = pytest.importorskip(
        "skimage.metrics", reason="scikit-image (test extra) is needed for this cross-check"
    )
    rng = np.random.default_rng(7 + channels)
    pred, true = sparse_pair(rng, (2, 3, 20, 27, channels))
    pred[0] = random_pair(rng, (3, 20, 27, channels))[0]  # one dense sample too
    ours = np.asarray(metrics.frame_metrics(pred, true, ssim_data_range=data_range)["ssim"])
    pc = np.clip(pred, 0, 1).astype(np.float64)  # float64 so skimage itself is exact
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            expected = skm.structural_similarity(
                true[i, j].astype(np.float64),
                pc[i, j],
                data_range=data_range,
                channel_axis=-1,
                win_size=7,
                gaussian_weights=False,
                use_sample_covariance=True,
            )
            assert rel_err(ours[i, j], expected) <= RTOL, (i, j)


def test_data_range_one_option():
    rng = np.random.default_rng(3)
    pred, true = sparse_pair(rng, (2, 3, 20, 27, 1))
    pred[1] = random_pair(rng, (3, 20, 27, 1))[0]
    res = metrics.compute(pred, true, with_ssim_dr1=True)
    ref2 = ref_frames(pred, true, 2.0)["ssim"]
    ref1 = ref_frames(pred, true, 1.0)["ssim"]
    assert rel_err(res["ssim"], ref2.mean()) <= RTOL
    assert rel_err(res["ssim_dr1"], ref1.mean()) <= RTOL
    assert rel_err(res["per_frame"]["ssim_dr1"], ref1.mean(axis=0)) <= RTOL
    # the textbook variant is clearly lower, i.e. the option does something
    assert res["ssim_dr1"] < res["ssim"] - 0.01
    # asking for data_range 1.0 as the main SSIM gives the same number
    res1 = metrics.compute(pred, true, ssim_data_range=1.0)
    assert rel_err(res1["ssim"], res["ssim_dr1"]) <= 1e-7
    assert "ssim_dr1" not in res1


def test_streaming_with_masked_padding_equals_one_pass():
    rng = np.random.default_rng(5)
    pred, true = sparse_pair(rng, (7, 3, 20, 27, 2))
    pred[:3], true[:3] = random_pair(rng, (3, 3, 20, 27, 2))
    whole = metrics.compute(pred, true, with_ssim_dr1=True)

    step = jax.jit(metrics.accumulate)
    acc = metrics.init_accumulator(3, with_ssim_dr1=True)
    bs = 3
    for start in range(0, 7, bs):
        p, t = pred[start : start + bs], true[start : start + bs]
        real = p.shape[0]
        mask = np.zeros(bs, np.float32)
        mask[:real] = 1
        # padding as a loader might leave it: zeros (PSNR inf) and garbage (nan)
        p = np.concatenate([p, np.zeros((bs - real, *p.shape[1:]), np.float32)])
        t = np.concatenate([t, np.zeros((bs - real, *t.shape[1:]), np.float32)])
        if real < bs:
            p[-1, 0, 0, 0, 0] = np.nan
        acc = step(acc, jnp.asarray(p), jnp.asarray(t), jnp.asarray(mask))
    streamed = metrics.finalize(acc)

    assert streamed["num_samples"] == 7
    assert streamed["psnr_exact_frames"] == 0
    for name in (*NAMES, "ssim_dr1"):
        assert rel_err(streamed[name], whole[name]) <= 1e-6, name
        assert rel_err(streamed["per_frame"][name], whole["per_frame"][name]) <= 1e-6, name
    # without the mask the padding would have changed the result
    unmasked = metrics.finalize(step(metrics.init_accumulator(3), p, t))
    assert unmasked["num_samples"] == bs and not np.isfinite(unmasked["mse"])


def test_mse_unclipped_ssim_psnr_clipped():
    rng = np.random.default_rng(11)
    true = rng.uniform(0.1, 0.9, (2, 2, 20, 27, 1)).astype(np.float32)
    pred = (true + rng.normal(0, 0.1, true.shape)).astype(np.float32)
    pred[:, :, :6] += 0.8  # a band well above 1
    pred[:, :, -6:] -= 0.8  # and one well below 0
    res = metrics.compute(pred, true)

    ref = ref_frames(pred, true)  # the reference clips only for SSIM/PSNR
    clipped = np.clip(pred, 0, 1)
    no_clip_mse = ((pred.astype(np.float64) - true) ** 2).sum(axis=(2, 3, 4))
    clip_mse = ((clipped.astype(np.float64) - true) ** 2).sum(axis=(2, 3, 4))
    assert clip_mse.mean() < 0.8 * no_clip_mse.mean()  # the band makes clipping matter
    assert rel_err(res["mse"], no_clip_mse.mean()) <= RTOL
    assert rel_err(res["mae"], ref["mae"].mean()) <= RTOL
    psnr_clip = (-10 * np.log10(clip_mse / np.prod(true.shape[2:]))).mean()
    psnr_no_clip = (-10 * np.log10(no_clip_mse / np.prod(true.shape[2:]))).mean()
    assert rel_err(res["psnr"], psnr_clip) <= RTOL
    assert abs(res["psnr"] - psnr_no_clip) > 0.5
    ssim_no_clip = np.mean(
        [
            ref_ssim_2d(pred[i, j, ..., 0], true[i, j, ..., 0], 2.0)
            for i in range(2)
            for j in range(2)
        ]
    )
    assert rel_err(res["ssim"], ref["ssim"].mean()) <= RTOL
    assert abs(res["ssim"] - ssim_no_clip) > 1e-3


def test_exact_frame_gives_infinite_psnr_unless_a_value_is_chosen():
    rng = np.random.default_rng(2)
    pred, true = random_pair(rng, (2, 3, 20, 27, 1))
    pred = np.clip(pred, 0, 1)
    pred[1, 2] = true[1, 2]  # one perfect frame at lead time 2
    res = metrics.compute(pred, true)
    assert res["psnr_exact_frames"] == 1
    assert res["psnr"] == np.inf  # OpenSTL's mean over frames is inf too
    assert np.isfinite(res["per_frame"]["psnr"][:2]).all()
    assert res["per_frame"]["psnr"][2] == np.inf
    assert res["per_frame"]["ssim"][2] < 1  # only one of the two samples is exact

    finite = ref_frames(pred, true)["psnr"]
    capped = metrics.compute(pred, true, exact_frame_psnr=100.0)
    finite[1, 2] = 100.0
    assert rel_err(capped["psnr"], finite.mean()) <= RTOL
    assert rel_err(capped["per_frame"]["psnr"], finite.mean(axis=0)) <= RTOL


def test_accumulation_stays_exact_over_a_large_test_set():
    """10,000 samples in batches of 16: compensated sums agree with float64, naive ones don't."""
    rng = np.random.default_rng(4)
    pred, true = sparse_pair(rng, (16, 2, 8, 8, 1))
    batches = 625
    step = lambda _, a: metrics.accumulate(a, pred, true)
    # what each step adds, exactly as float32 computed it (0 + x is exact)
    once = jax.jit(step)(0, metrics.init_accumulator(2))
    run = jax.jit(lambda a: jax.lax.fori_loop(0, batches, step, a))
    res = metrics.finalize(run(metrics.init_accumulator(2)))
    assert res["num_samples"] == 16 * batches
    naive_worst = 0.0
    for name in NAMES:
        batch_sum = np.asarray(once["sum"][name], np.float64)
        expected = batch_sum * batches / (16 * batches)
        assert rel_err(res["per_frame"][name], expected) <= 1e-9, name
        naive = np.zeros(2, np.float32)
        for _ in range(batches):
            naive += batch_sum.astype(np.float32)
        naive_worst = max(naive_worst, rel_err(naive / (16 * batches), expected))
    assert naive_worst > 1e-7  # so the 1e-9 above really needs the compensation


def test_shape_errors_are_explained():
    acc = metrics.init_accumulator(4)
    x = np.zeros((2, 3, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="4 frames"):
        metrics.accumulate(acc, x, x)
    with pytest.raises(ValueError, match="B, T', H, W, C"):
        metrics.frame_metrics(x, x[..., :7, :])
    with pytest.raises(ValueError, match="7x7"):
        metrics.frame_metrics(x[:, :, :6], x[:, :, :6])
    with pytest.raises(ValueError, match="no samples"):
        metrics.finalize(acc)
