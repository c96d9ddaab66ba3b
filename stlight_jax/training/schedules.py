"""Learning-rate / beta1 schedules as PyTorch's OneCycleLR and timm's per-epoch cosine compute
them (docs/conventions.md §4); `optim.torch_adam` follows them update by update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# A schedule maps the 0-based update index to a value. Given a Python int or a numpy array it
# computes in float64 numpy (for logging and for tests against PyTorch, which schedules in
# Python floats); given a jax array (also a tracer inside jit) it computes in float32 jnp.
Schedule = Callable[[Any], Any]


def _xp(step: Any) -> Any:
    return jnp if isinstance(step, jax.Array) else np


def _as_float(xp: Any, x: Any) -> Any:
    return x.astype(jnp.float32) if xp is jnp else np.asarray(x, np.float64)


def _finish(xp: Any, x: Any) -> Any:
    # 0-d numpy results become numpy scalars so that `float(lr_fn(k))` and formatting just work.
    return x[()] if xp is np else x


def _sin2(xp: Any, u: Any) -> Any:
    """Returns sin(pi/2 * u)**2 = (1 - cos(pi * u)) / 2.

    Cosine anneals are evaluated as weights sin^2(pi/2 * (1 - pct)) and sin^2(pi/2 * pct),
    which equal torch's (cos(pi * pct) + 1) / 2 and its complement but have no cancellation
    near pct = 1, so the float32 values stay within a few ulps of torch's float64 ones even
    at the very end of a long schedule, where (cos + 1) in float32 would lose every digit.
    """
    s = xp.sin((0.5 * math.pi) * u)
    return s * s


class _Anneal(NamedTuple):
    """Interpolation weights at some update: value = start * w_start + end * w_end."""

    w_start: Any
    w_end: Any


def _check_onecycle(total_steps: int, pct_start: float) -> None:
    a = float(pct_start * total_steps) - 1
    if total_steps <= 0 or a == 0 or total_steps - 1 - a == 0:
        # torch divides by zero here (ZeroDivisionError on its first step); refuse up front.
        raise ValueError(f"degenerate OneCycle: total_steps={total_steps}, pct_start={pct_start}")


def _onecycle_weights(step: Any, total_steps: int, pct_start: float) -> tuple[Any, _Anneal]:
    """Phase and cosine weights of torch's two-phase OneCycleLR at update `step`.

    torch (torch/optim/lr_scheduler.py, OneCycleLR with three_phase=False) uses phase ends
    `a = float(pct_start * total_steps) - 1` and `total_steps - 1`; update k is in phase 1 when
    k <= a, with pct = k / a, otherwise pct = (k - a) / (total_steps - 1 - a). Because the
    scheduler is stepped after every optimizer.step and once at construction, the value used by
    update k is exactly the one computed at step_num = k.
    """
    xp = _xp(step)
    a = float(pct_start * total_steps) - 1
    end = float(total_steps - 1)
    # Steps past the schedule repeat its last value (torch raises beyond total_steps; the value
    # at total_steps itself is computed by torch but never used by an update).
    k = xp.clip(step, 0, total_steps - 1)
    # k - a is formed as (k - floor(a)) - frac(a): the integer part is exact, so float32 keeps
    # full relative precision even where a (e.g. 37499.0 or 11.5) has a large integer part.
    a_int = math.floor(a)
    a_frac = a - a_int
    k_minus_a = _as_float(xp, k - a_int) - a_frac
    first = k <= a_int  # k integer: k <= a  <=>  k <= floor(a)
    # Phase 1: pct = k / a; phase 2: pct = (k - a) / (end - a). Both weights from their own
    # accurately formed numerators (pct and 1 - pct), never as 1 - (the other).
    kf = _as_float(xp, k)
    end_minus_k = _as_float(xp, (total_steps - 1) - k)
    pct = xp.where(first, kf / a, k_minus_a / (end - a))
    rest = xp.where(first, -k_minus_a / a, end_minus_k / (end - a))
    return first, _Anneal(w_start=_sin2(xp, rest), w_end=_sin2(xp, pct))


def onecycle_lr(
    total_steps: int,
    max_lr: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """torch.optim.lr_scheduler.OneCycleLR's learning rate for update k (anneal 'cos').

    lr rises max_lr / div_factor -> max_lr over updates 0..a (a = pct_start * total_steps - 1)
    and falls to max_lr / div_factor / final_div_factor at update total_steps - 1.
    """
    _check_onecycle(total_steps, pct_start)
    initial_lr = max_lr / div_factor
    min_lr = initial_lr / final_div_factor

    def schedule(step: Any) -> Any:
        xp = _xp(step)
        first, w = _onecycle_weights(step, total_steps, pct_start)
        lr = xp.where(
            first,
            initial_lr * w.w_start + max_lr * w.w_end,
            max_lr * w.w_start + min_lr * w.w_end,
        )
        return _finish(xp, lr)

    return schedule


def _onecycle_momentum(
    total_steps: int,
    pct_start: float,
    base_momentum: float,
    max_momentum: float,
    complement: bool,
) -> Schedule:
    # beta1 (or 1 - beta1 when `complement`) follows the lr's phases: max -> base -> max.
    # 1 - beta1 is interpolated from 1 - max and 1 - base (exact in float64 here) rather than
    # subtracted in float32, where 1 - 0.95 would carry a 6e-7 relative error into Adam's
    # bias correction 1 - beta1**t at small t.
    _check_onecycle(total_steps, pct_start)
    hi, lo = max_momentum, base_momentum
    if complement:
        hi, lo = 1.0 - max_momentum, 1.0 - base_momentum

    def schedule(step: Any) -> Any:
        xp = _xp(step)
        first, w = _onecycle_weights(step, total_steps, pct_start)
        value = xp.where(first, hi * w.w_start + lo * w.w_end, lo * w.w_start + hi * w.w_end)
        return _finish(xp, value)

    return schedule


def onecycle_beta1(
    total_steps: int,
    pct_start: float = 0.3,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> Schedule:
    """OneCycleLR's cycled Adam beta1 for update k: max_momentum -> base_momentum (at the lr
    peak) -> max_momentum, on the same cosine curve as the learning rate."""
    return _onecycle_momentum(total_steps, pct_start, base_momentum, max_momentum, False)


def cosine_epoch_lr(
    steps_per_epoch: int,
    num_epochs: int,
    base_lr: float,
    min_lr: float = 1e-6,
    warmup_epochs: int = 0,
    warmup_lr: float = 1e-5,
) -> Schedule:
    """timm CosineLRScheduler as OpenSTL builds it for TaxiBJ, stepped once per epoch.

    Follows timm/scheduler/cosine_lr.py `CosineLRScheduler._get_lr` (pytorch-image-models;
    read at timm 1.0.x and checked against timm 1.0.31; the formula is unchanged since 0.4.x
    for these arguments) with t_initial = num_epochs, lr_min = min_lr, warmup_t =
    warmup_epochs, warmup_lr_init = warmup_lr, warmup_prefix=False, cycle_mul = cycle_decay =
    cycle_limit = 1, k_decay = 1, no noise. OpenSTL v0.3.0 calls
    `scheduler.step(epoch)` at the start of each epoch, so every update of epoch e uses
    _get_lr(e):

      e < warmup_t:      warmup_lr + e * (base_lr - warmup_lr) / warmup_t
      warmup_t <= e < T: min_lr + (base_lr - min_lr) / 2 * (1 + cos(pi * e / T))
      e >= T:            min_lr  (timm: past cycle_limit)

    As in timm, the cosine is not shifted by the warm-up (warmup_prefix=False): epoch
    warmup_t continues at the cosine's value for that epoch.
    """
    if steps_per_epoch <= 0 or num_epochs <= 0:
        raise ValueError(
            f"need positive steps_per_epoch/num_epochs: {steps_per_epoch}/{num_epochs}"
        )
    warmup_step = (base_lr - warmup_lr) / warmup_epochs if warmup_epochs else 0.0

    def schedule(step: Any) -> Any:
        xp = _xp(step)
        epoch = xp.maximum(step, 0) // steps_per_epoch
        e = _as_float(xp, epoch)
        remaining = _as_float(xp, num_epochs - xp.minimum(epoch, num_epochs))
        # (1 + cos(pi e / T)) / 2 = sin^2(pi/2 * (T - e) / T): no cancellation as e -> T.
        lr = min_lr + (base_lr - min_lr) * _sin2(xp, remaining / num_epochs)
        if warmup_epochs:
            lr = xp.where(epoch < warmup_epochs, warmup_lr + e * warmup_step, lr)
        return _finish(xp, lr)

    return schedule


def constant(value: float) -> Schedule:
    """A schedule that is `value` at every update (float64 numpy / float32 jnp)."""

    def schedule(step: Any) -> Any:
        xp = _xp(step)
        return _finish(xp, xp.full(xp.shape(step), value, jnp.float32 if xp is jnp else np.float64))

    return schedule


class Schedules(NamedTuple):
    """What update k (0-based) uses: learning rate, Adam beta1 and 1 - beta1 (formed directly
    for precision, see `_onecycle_momentum`)."""

    lr: Schedule
    b1: Schedule
    one_minus_b1: Schedule


def create_schedules(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Schedules:
    """The schedules of `config.optimizer`, built once for the optimizer and the logs.

    'onecycle': total steps = num_epochs * steps_per_epoch, beta1 cycled when cycle_momentum;
    'cosine': per epoch. beta1 is the constant config.optimizer.b1 when not cycled.
    """
    opt = config.optimizer
    total_steps = int(config.num_epochs) * int(steps_per_epoch)
    if opt.schedule == "onecycle":
        lr_fn = onecycle_lr(
            total_steps, opt.learning_rate, opt.pct_start, opt.div_factor, opt.final_div_factor
        )
        if opt.cycle_momentum:
            args = (total_steps, opt.pct_start, opt.base_momentum, opt.max_momentum)
            return Schedules(
                lr_fn, _onecycle_momentum(*args, False), _onecycle_momentum(*args, True)
            )
    elif opt.schedule == "cosine":
        lr_fn = cosine_epoch_lr(
            steps_per_epoch,
            int(config.num_epochs),
            opt.learning_rate,
            opt.min_lr,
            int(opt.warmup_epochs),
            opt.warmup_lr,
        )
    else:
        raise ValueError(f"unknown config.optimizer.schedule {opt.schedule!r}")
    return Schedules(lr_fn, constant(opt.b1), constant(1.0 - opt.b1))
