"""The fast depthwise formulation ('shifted', custom VJP) against lax's grouped conv, and GELU."""

from __future__ import annotations

import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stlight_jax import ops

CASES = [  # (kernel, dilation, batch, H, W): odd and even kernels, dilation 1 and 3
    (3, 1, 2, 9, 7),
    (7, 3, 3, 11, 12),
    (4, 1, 1, 8, 9),
    (4, 3, 2, 10, 10),
    (2, 3, 2, 6, 5),
    (1, 1, 2, 5, 5),
]


def _inputs(k: int, b: int, h: int, w: int, seed: int, d: int = 5):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((b, h, w, d)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, d)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((b, h, w, d)), jnp.float32)
    return x, kernel, cot


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize(("k", "dil", "b", "h", "w"), CASES)
def test_shifted_forward_matches_lax(k, dil, b, h, w):
    x, kernel, _ = _inputs(k, b, h, w, seed=k * 10 + dil)
    want = ops.depthwise_conv_lax(x, kernel, dil)
    got = jax.jit(ops.depthwise_conv_shifted, static_argnums=2)(x, kernel, dil)
    assert got.shape == x.shape
    assert _rel(got, want) < 1e-5


@pytest.mark.parametrize(("k", "dil", "b", "h", "w"), CASES)
def test_shifted_vjp_matches_lax(k, dil, b, h, w):
    x, kernel, cot = _inputs(k, b, h, w, seed=100 + k * 10 + dil)

    def vjp(fn):
        _, pullback = jax.vjp(lambda x_, k_: fn(x_, k_, dil), x, kernel)
        return jax.jit(pullback)(cot)

    dx_want, dk_want = vjp(ops.depthwise_conv_lax)
    dx_got, dk_got = vjp(ops.depthwise_conv_shifted)
    assert _rel(dx_got, dx_want) < 1e-5
    assert _rel(dk_got, dk_want) < 1e-5
    assert np.abs(np.asarray(dk_want)).max() > 0  # the check is not vacuous


def test_shifted_grad_through_chained_convs():
    # The model chains k1 (dilation 1) into k2 (dilation 3); second-order use is not needed.
    x, k1, _ = _inputs(3, 2, 12, 12, seed=7)
    _, k2, _ = _inputs(7, 2, 12, 12, seed=8)

    def loss(impl):
        def f(x_, a, b):
            y = ops.depthwise_conv(x_, a, jnp.zeros(5), 1, impl)
            return jnp.sum(jnp.sin(ops.depthwise_conv(y, b, jnp.zeros(5), 3, impl)))

        return jax.grad(f, argnums=(0, 1, 2))(x, k1, k2)

    for got, want in zip(loss("shifted"), loss("lax"), strict=True):
        assert _rel(got, want) < 1e-5


def test_gelu_is_exact_erf():
    x = np.linspace(-8.0, 8.0, 2001).astype(np.float32)
    want = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(float)])
    got = np.asarray(ops.gelu(jnp.asarray(x)), np.float64)
    # Absolute tolerance: like PyTorch's kernel, the erf form loses relative accuracy in the
    # far negative tail, where the value is below 1e-6 anyway.
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    assert ops.gelu(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=2e-6)  # different erf polynomials


def test_resolve_conv_impl():
    assert ops.resolve_conv_impl("lax") == "lax"
    # "auto" is the shifted-slice form on CPU (measured fastest there), lax's grouped conv on
    # GPU/TPU; each backend is checked by patching what resolve_conv_impl asks jax.
    assert ops.resolve_conv_impl("auto") == {"cpu": "shifted"}.get(jax.default_backend(), "lax")
    for backend, want in (("cpu", "shifted"), ("gpu", "lax"), ("tpu", "lax")):
        with mock.patch.object(ops.jax, "default_backend", lambda b=backend: b):
            assert ops.resolve_conv_impl("auto") == want, backend
    assert ops.resolve_conv_impl("shifted") == "shifted"
    with pytest.raises(ValueError, match="conv_impl"):
        ops.resolve_conv_impl("fft")
