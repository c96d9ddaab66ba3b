"""Model shapes, config validation errors, parameter counts and FLOPs against the paper."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stlight_jax import ops
from stlight_jax.model_size import PAPER_SIZES, count_params, model_size
from stlight_jax.models import ModelConfig, create_model

TINY = ModelConfig(
    frames_in=3, frames_out=5, channels=2, image_size=(8, 12), dim=8, depth=3, patch=2
)


def test_output_shape_and_dtype():
    model = create_model(TINY)
    x = jnp.asarray(np.random.default_rng(0).random((2, 3, 8, 12, 2), np.float32))
    y = model(x)
    assert y.shape == (2, 5, 8, 12, 2) and y.dtype == jnp.float32
    y16 = create_model(TINY, dtype="bfloat16")(x)
    assert y16.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(overlap=2, patch=1), "model.overlap=2 with model.patch=1"),
        (dict(image_size=(9, 12)), "model.image_size 9x12 is not divisible by model.patch=2"),
        (dict(dim=10), "model.dim=10 is not divisible by model.patch**2=4"),
        (dict(depth=0), "model.depth must be a positive integer"),
        (dict(conv_impl="fft"), "model.conv_impl='fft'"),
    ],
)
def test_invalid_configs_name_the_field(change, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
        dataclasses.replace(TINY, **change).validate()


def test_overlap_that_keeps_the_latent_size_is_accepted():
    for patch, overlap in [(2, 2), (1, 3), (4, 2), (2, 3)]:
        cfg = dataclasses.replace(TINY, patch=patch, overlap=overlap, image_size=(16, 16), dim=16)
        cfg.validate()
        y = create_model(cfg)(jnp.ones((1, 3, 16, 16, 2)))
        assert y.shape == (1, 5, 16, 16, 2)


@pytest.mark.parametrize(
    "shape, field",
    [
        ((1, 4, 8, 12, 2), "frames_in is 4"),
        ((1, 3, 8, 10, 2), "image width is 10"),
        ((1, 3, 6, 12, 2), "image height is 6"),
        ((1, 3, 8, 12, 1), "channels is 1"),
        ((3, 8, 12, 2), "rank 4"),
    ],
)
def test_wrong_input_shape_is_rejected(shape, field):
    model = create_model(TINY)
    with pytest.raises(ValueError, match=field):
        model(jnp.ones(shape))


def test_unknown_config_field_is_rejected():
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_config({"dim": 8, "dimm": 8})


def test_pixel_shuffle_is_pytorch_crd_order():
    """Channel c*r*r + i*r + j goes to pixel (h*r+i, w*r+j), channel c (trap 1)."""
    r, c = 2, 3
    x = np.arange(1 * 2 * 2 * c * r * r, dtype=np.float32).reshape(1, 2, 2, c * r * r)
    y = np.asarray(ops.pixel_shuffle(jnp.asarray(x), r))
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                assert y[0, 1 * r + i, 0 * r + j, ch] == x[0, 1, 0, ch * r * r + i * r + j]
    torch = pytest.importorskip("torch", reason="cross-check with torch.nn.PixelShuffle")
    want = torch.nn.PixelShuffle(r)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_array_equal(y, want.transpose(0, 2, 3, 1))


def test_gelu_is_exact_erf():
    x = jnp.linspace(-4, 4, 101)
    from scipy.special import erf  # scipy comes with scikit-image in the test requirements

    want = 0.5 * np.asarray(x) * (1 + erf(np.asarray(x) / np.sqrt(2)))
    np.testing.assert_allclose(np.asarray(ops.gelu(x)), want, atol=1e-6)
    # jax.nn.gelu's default tanh approximation is measurably different (trap 3).
    assert np.max(np.abs(want - np.asarray(jax.nn.gelu(x)))) > 1e-4


def test_analytic_count_matches_built_model():
    for cfg in [TINY, dataclasses.replace(TINY, patch=1, overlap=3, k1=5, k2=4, depth=5)]:
        assert model_size(cfg).params == count_params(create_model(cfg))


@pytest.mark.parametrize("name", list(PAPER_SIZES))
def test_paper_sizes(name):
    """Parameter count equals the PyTorch reference's and rounds to the paper's figure; the
    fvcore-convention FLOPs are within 0.5% of the paper's figure."""
    fields, paper_params, paper_flops = PAPER_SIZES[name]
    cfg = ModelConfig(**fields)
    size = model_size(cfg)
    if paper_flops is None:  # Table 4's 42M column: a truncated label, no FLOPs
        assert int(size.params / 1e6) == int(paper_params / 1e6), size
    else:
        digits = 3 if paper_params >= 1e7 else 2  # the paper prints 11.1M / 0.99M / 1.65M
        assert float(f"{size.params:.{digits}g}") == float(f"{paper_params:.{digits}g}"), size
        assert abs(size.fvcore_flops / paper_flops - 1) <= 0.005, size
    # The two conventions differ by exactly the depthwise convs (counted only in true MACs)
    # and the eval-mode BatchNorms (2 FLOPs per element, counted only by fvcore).
    latent = (cfg.image_size[0] // cfg.patch) * (cfg.image_size[1] // cfg.patch)
    depthwise = cfg.depth * latent * cfg.dim * (cfg.k1**2 + cfg.k2**2)
    batchnorm = 2 * latent * cfg.dim * (1 + 2 * cfg.depth)
    assert size.true_macs == size.fvcore_flops - batchnorm + depthwise
    torch = pytest.importorskip("torch", reason="compare with the PyTorch reference's count")
    from stlight_jax.reference import reference_from_config

    with torch.device("meta"):  # shapes only: no memory for the 33M-parameter sizes
        ref = reference_from_config(cfg)
    assert sum(p.numel() for p in ref.parameters()) == size.params


def test_table4_headers_truncate_the_table3_counts():
    """Table 4 labels XS / S / M / L as 11M / 17M / 24M / 32M (L is 32.9M): truncation, the
    convention that makes dim 1600 (42.70M) its "42M" column, continuing the 200 steps."""
    sizes = [
        model_size(ModelConfig(**PAPER_SIZES[f"mmnist_{s}"][0])).params
        for s in "XS S M L XL".split()
    ]
    assert [int(p / 1e6) for p in sizes] == [11, 17, 24, 32, 42]
    dims = [PAPER_SIZES[f"mmnist_{s}"][0]["dim"] for s in "XS S M L XL".split()]
    assert dims == [800, 1000, 1200, 1400, 1600]
    assert sizes[-1] == 42_696_810


def test_true_macs_match_torch_flop_counter():
    torch = pytest.importorskip("torch", reason="torch's FlopCounterMode is the cross-check")
    from torch.utils.flop_counter import FlopCounterMode

    from stlight_jax.reference import reference_from_config

    cfg = dataclasses.replace(TINY, image_size=(16, 16), dim=16)
    ref = reference_from_config(cfg).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        ref(torch.zeros(1, 3, 2, 16, 16))
    assert counter.get_total_flops() == 2 * model_size(cfg).true_macs


def test_train_step_keeps_five_activations_per_block():
    """The remat policy (models.SAVED_FOR_BACKWARD): the forward scan stacks the block input and
    the four named tensors for the backward pass, not GELU or BatchNorm outputs (9 before)."""
    import optax

    from stlight_jax import sharding, steps

    cfg = ModelConfig(
        frames_in=2, frames_out=2, image_size=(16, 16), dim=12, depth=3, patch=2, k2=5, dilation=2
    )
    model = create_model(cfg, seed=0)
    graphdef, _, _ = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optax.adam(1e-3)
    _, state = steps.split_model(model, tx)
    mesh = sharding.create_mesh(jax.devices()[:1])
    step = steps.create_train_step(graphdef, tx, lambda s: 1e-3, mesh)
    x = np.random.default_rng(0).random((2, 2, 16, 16, 1), dtype=np.float32)
    batch = sharding.global_batch({"inputs": x, "targets": x}, mesh)
    hlo = step.lower(sharding.replicate(state, mesh), batch).compile().as_text()
    loops = [line for line in hlo.splitlines() if " while(" in line]
    stacked = "f32[3,2,8,8,12]"  # (depth, batch, latent H, latent W, dim)
    forward = [line for line in loops if stacked in line.split("while(")[0]]
    assert forward, "no scan carries stacked per-block activations"
    assert max(line.split("while(")[0].count(stacked) for line in forward) == 5
