"""torch.optim.Adam reproduced as an optax transform whose lr and beta1 follow the schedules
update by update (docs/conventions.md §4)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from stlight_jax.training import schedules
from stlight_jax.training.schedules import Schedule


class TorchAdamState(NamedTuple):
    """State of `torch_adam`: `count` updates done so far, first and second moments."""

    count: jax.Array  # int32 scalar
    mu: optax.Updates
    nu: optax.Updates


def torch_adam(
    learning_rate: float | Schedule,
    b1: float | Schedule = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    one_minus_b1: Schedule | None = None,
) -> optax.GradientTransformation:
    """torch.optim.Adam (amsgrad=False, the single-tensor CPU path) with scheduled lr and beta1.

    For update k (count k before it, t = k + 1), as torch/optim/adam.py `_single_tensor_adam`:

      g   = grad + weight_decay * param      (torch's L2 style, not AdamW's decoupled decay)
      m   = m + (1 - beta1_k) * (g - m)      (exp_avg.lerp_(grad, 1 - beta1))
      v   = v * b2 + (1 - b2) * g * g
      p  -= lr_k / (1 - beta1_k**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

    The bias correction uses the *current* beta1 for all t, as torch does when OneCycleLR
    cycles it. The state holds the update count, so the transform is a pure function that can
    live inside a jitted train step. `one_minus_b1`, if given, supplies 1 - beta1 directly for
    precision (see `schedules.Schedules`); otherwise it is computed as 1 - b1(k).
    """
    lr_fn = learning_rate if callable(learning_rate) else schedules.constant(learning_rate)
    if one_minus_b1 is None:
        b1_fn = b1 if callable(b1) else schedules.constant(b1)
        one_minus_b1 = lambda k: 1.0 - b1_fn(k)
    log_b2 = math.log(b2)  # float64, then used as a float32 constant

    def init_fn(params: optax.Params) -> TorchAdamState:
        zeros = lambda p: jnp.zeros_like(p)
        return TorchAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(zeros, params),
            nu=jax.tree.map(zeros, params),
        )

    def update_fn(
        updates: optax.Updates, state: TorchAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, TorchAdamState]:
        k = state.count
        if weight_decay:
            if params is None:
                raise ValueError("torch_adam with weight_decay > 0 needs params in update()")
            updates = jax.tree.map(lambda g, p: g + weight_decay * p, updates, params)
        t = (k + 1).astype(jnp.float32)
        lr = lr_fn(k)
        omb1 = one_minus_b1(k)
        # 1 - beta**t as -expm1(t * log1p(-(1 - beta))): accurate where beta**t is near 1.
        bias1 = -jnp.expm1(t * jnp.log1p(-omb1))
        bias2_sqrt = jnp.sqrt(-jnp.expm1(t * log_b2))
        step_size = lr / bias1
        mu = jax.tree.map(lambda m, g: m + omb1.astype(m.dtype) * (g - m), state.mu, updates)
        nu = jax.tree.map(lambda v, g: v * b2 + (1.0 - b2) * g * g, state.nu, updates)

        def direction(m: jax.Array, v: jax.Array) -> jax.Array:
            denom = jnp.sqrt(v) / bias2_sqrt.astype(v.dtype) + eps
            return -step_size.astype(m.dtype) * (m / denom)

        new_updates = jax.tree.map(direction, mu, nu)
        return new_updates, TorchAdamState(count=optax.safe_increment(k), mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def create_optimizer(
    config: ml_collections.ConfigDict, scheds: schedules.Schedules
) -> optax.GradientTransformation:
    """Adam as torch.optim.Adam (`config.optimizer`) with lr and beta1 following `scheds`
    (from `schedules.create_schedules`) every update.

    weight_decay > 0 is torch Adam's L2 term added to the gradient (not AdamW). Use with
    `optax.apply_updates`; pass `params` to `update` when weight_decay > 0.
    """
    opt = config.optimizer
    return torch_adam(
        scheds.lr,
        b2=opt.b2,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        one_minus_b1=scheds.one_minus_b1,
    )
