"""Schedules and Adam against torch OneCycleLR / torch.optim.Adam and timm's per-epoch cosine."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from stlight_jax.configs.common import get_base_config
from stlight_jax.training import optimizer as optim
from stlight_jax.training import schedules

# Float64 schedule vs torch's float64: ours avoids the cancellation in torch's own
# end + (start - end) / 2 * (cos + 1) near the end of a phase, so the two differ by a few
# 1e-12 relative there (torch's rounding, not ours); 1e-10 still catches any off-by-one.
RTOL_F64 = 1e-10
# Float32 (jitted) schedule vs torch's float64: a few float32 ulps (observed <= 4.1e-7).
RTOL_F32 = 1e-6
# Parameters after 200 float32 Adam updates, ours vs torch.
RTOL_PARAMS = 1e-5

ONECYCLE_CASES = [
    # (total_steps, max_lr, final_div_factor): a = 0.3 * T - 1 fractional (37, 1000 -> 10.1,
    # 299.0 exactly), the paper's MMNIST (200 epochs x 625 steps) and Caltech final_div 3000.
    (37, 5e-4, 1e4),
    (100, 3e-3, 1e4),
    (1000, 1e-2, 3000.0),
    (200 * 625, 3e-3, 1e4),
]


def _torch_onecycle(
    total_steps: int, max_lr: float, final_div: float, cycle_momentum: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """lr and beta1 that torch's Adam actually uses in each of its `total_steps` updates."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=max_lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=max_lr,
        total_steps=total_steps,
        final_div_factor=final_div,
        cycle_momentum=cycle_momentum,
    )
    lrs, b1s = [], []
    for _ in range(total_steps):
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        b1s.append(group["betas"][0])
        opt.step()  # p.grad is None: nothing moves, but the scheduler sees a real step order
        sched.step()
    return np.array(lrs), np.array(b1s)


def _config(schedule: str = "onecycle", **optimizer: object):
    config = get_base_config()
    config.optimizer.schedule = schedule
    for key, value in optimizer.items():
        setattr(config.optimizer, key, value)
    return config


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b) / np.abs(b)))


# ---------------------------------------------------------------- OneCycle


@pytest.mark.parametrize("total_steps,max_lr,final_div", ONECYCLE_CASES)
def test_onecycle_lr_and_beta1_match_torch_every_step(total_steps, max_lr, final_div):
    lr_t, b1_t = _torch_onecycle(total_steps, max_lr, final_div)
    steps_per_epoch = 1  # total_steps = num_epochs * steps_per_epoch
    config = _config(learning_rate=max_lr, final_div_factor=final_div)
    config.num_epochs = total_steps
    lr_fn, b1_fn, omb1_fn = schedules.create_schedules(config, steps_per_epoch)

    ks = np.arange(total_steps)
    np.testing.assert_allclose(lr_fn(ks), lr_t, rtol=RTOL_F64, atol=0)
    np.testing.assert_allclose(b1_fn(ks), b1_t, rtol=RTOL_F64, atol=0)
    # Scalar calls (how a training loop logs) give the same numbers.
    assert float(lr_fn(int(ks[-1]))) == pytest.approx(lr_t[-1], rel=RTOL_F64)

    # The float32 path, as it runs inside the jitted train step.
    kj = jnp.arange(total_steps)
    lr32, b132, omb132 = jax.jit(lambda k: (lr_fn(k), b1_fn(k), omb1_fn(k)))(kj)
    assert lr32.dtype == jnp.float32 and b132.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lr32, np.float64), lr_t, rtol=RTOL_F32, atol=0)
    np.testing.assert_allclose(np.asarray(b132, np.float64), b1_t, rtol=RTOL_F32, atol=0)
    np.testing.assert_allclose(np.asarray(omb132, np.float64), 1 - b1_t, rtol=RTOL_F32, atol=0)

    # Shape of the cycle, stated independently of torch: starts at max_lr / 25 with beta1 0.95,
    # ends at max_lr / 25 / final_div with beta1 back at 0.95.
    assert lr_t[0] == pytest.approx(max_lr / 25)
    assert lr_fn(total_steps - 1) == pytest.approx(max_lr / 25 / final_div, rel=1e-12)
    assert b1_fn(0) == pytest.approx(0.95) and b1_fn(total_steps - 1) == pytest.approx(0.95)


def test_onecycle_peak_and_past_the_end():
    # T = 100: a = 0.3 * 100 - 1 = 29 -> update 29 runs at max_lr with beta1 = 0.85.
    lr_fn = schedules.onecycle_lr(100, 3e-3)
    b1_fn = schedules.onecycle_beta1(100)
    assert lr_fn(29) == pytest.approx(3e-3, rel=1e-15) and lr_fn(28) < 3e-3 > lr_fn(30)
    assert b1_fn(29) == pytest.approx(0.85, rel=1e-15)
    # Past the schedule (a resumed run with more steps) the last value holds.
    assert lr_fn(150) == lr_fn(99) and b1_fn(150) == b1_fn(99)


def test_onecycle_without_cycle_momentum_keeps_b1():
    lr_t, b1_t = _torch_onecycle(50, 3e-3, 1e4, cycle_momentum=False)
    config = _config(cycle_momentum=False, b1=0.9)
    config.num_epochs = 10
    lr_fn, b1_fn, _ = schedules.create_schedules(config, 5)
    ks = np.arange(50)
    np.testing.assert_allclose(lr_fn(ks), lr_t, rtol=RTOL_F64, atol=0)
    np.testing.assert_array_equal(b1_fn(ks), b1_t)  # torch leaves betas[0] = 0.9 untouched
    assert np.all(np.asarray(jax.jit(b1_fn)(jnp.arange(50))) == np.float32(0.9))


def test_onecycle_degenerate_schedule_is_refused():
    # pct_start * T = 1 makes torch divide by zero on its first step.
    with pytest.raises(ValueError, match="degenerate"):
        schedules.onecycle_lr(10, 1e-3, pct_start=0.1)


def test_optax_cosine_onecycle_is_not_torch_onecycle():
    """Trap 7: optax's onecycle peaks one update late, ends one late, and has no beta1."""
    total_steps, max_lr = 100, 3e-3
    lr_t, _ = _torch_onecycle(total_steps, max_lr, 1e4)
    optax_fn = optax.cosine_onecycle_schedule(total_steps, max_lr, 0.3, 25.0, 1e4)
    lr_o = np.array([float(optax_fn(k)) for k in range(total_steps)])
    # torch peaks at update 29 = 0.3 * T - 1, optax at 30; torch's last update uses the final
    # lr, optax's is still above it.
    assert int(np.argmax(lr_t)) == 29 and int(np.argmax(lr_o)) == 30
    assert lr_o[-1] > 10 * lr_t[-1]
    assert _rel(lr_o, lr_t) > 0.5
    # Whereas ours agrees with torch to float32 precision at every step.
    ours = np.asarray(schedules.onecycle_lr(total_steps, max_lr)(jnp.arange(total_steps)))
    assert _rel(ours, lr_t) < RTOL_F32


# ---------------------------------------------------------------- cosine per epoch


def _timm_cosine_get_lr(
    t: int, t_initial: int, base_lr: float, lr_min: float, warmup_t: int, warmup_lr_init: float
) -> float:
    """timm CosineLRScheduler._get_lr, written out for cycle_mul = cycle_decay = cycle_limit = 1,
    k_decay = 1, warmup_prefix False (the arguments OpenSTL passes)."""
    if t < warmup_t:
        return warmup_lr_init + t * ((base_lr - warmup_lr_init) / warmup_t)
    i = t // t_initial
    t_i = t_initial
    t_curr = t - t_initial * i
    if i < 1:
        return lr_min + 0.5 * (base_lr - lr_min) * (1 + math.cos(math.pi * t_curr**1 / t_i**1))
    return lr_min


@pytest.mark.parametrize("warmup_epochs", [0, 5])
@pytest.mark.parametrize("num_epochs,steps_per_epoch", [(50, 7), (13, 3)])
def test_cosine_per_epoch_matches_timm_formula(warmup_epochs, num_epochs, steps_per_epoch):
    config = _config("cosine", learning_rate=3e-3, min_lr=1e-6, warmup_lr=1e-5)
    config.optimizer.warmup_epochs = warmup_epochs
    config.num_epochs = num_epochs
    lr_fn, b1_fn, _ = schedules.create_schedules(config, steps_per_epoch)

    total = num_epochs * steps_per_epoch
    expected = np.array(
        [
            _timm_cosine_get_lr(k // steps_per_epoch, num_epochs, 3e-3, 1e-6, warmup_epochs, 1e-5)
            for k in range(total)
        ]
    )
    ks = np.arange(total)
    np.testing.assert_allclose(lr_fn(ks), expected, rtol=1e-13, atol=0)
    lr32 = np.asarray(jax.jit(lr_fn)(jnp.arange(total)), np.float64)
    np.testing.assert_allclose(lr32, expected, rtol=RTOL_F32, atol=0)
    # Constant within each epoch; epoch 0 starts at warmup_lr or at the base lr.
    per_epoch = lr_fn(ks).reshape(num_epochs, steps_per_epoch)
    assert np.all(per_epoch == per_epoch[:, :1])
    assert per_epoch[0, 0] == pytest.approx(1e-5 if warmup_epochs else 3e-3)
    # After the last epoch: timm's lr_min.
    assert lr_fn(total) == pytest.approx(1e-6)
    np.testing.assert_array_equal(b1_fn(ks), np.full(total, config.optimizer.b1))


# timm 1.0.31's CosineLRScheduler(t_initial=20, lr_min=1e-6, warmup_lr_init=1e-5, warmup_t=3) on
# Adam(lr=3e-3), stepped with sched.step(epoch) for epochs 0-21 (stored Dec 2026 from timm's own
# scheduler files; timm is not a dependency): the lr of each epoch, past the end included.
TIMM_COSINE_LR = [
    1e-05,
    0.0010066666666666668,
    0.0020033333333333335,
    0.0028365642830204575,
    0.0027136209830652337,
    0.002560806618389228,
    0.0023818839858125635,
    0.0021812587543594505,
    0.0019638709830652338,
    0.0017350734803278263,
    0.0015004999999999999,
    0.0012659265196721741,
    0.0010371290169347664,
    0.0008197412456405497,
    0.0006191160141874367,
    0.0004401933816107721,
    0.00028737901693476646,
    0.0001644357169795425,
    7.439075381541727e-05,
    1.946133327759108e-05,
    1e-06,
    1e-06,
]


def test_cosine_per_epoch_matches_stored_timm_values():
    config = _config("cosine", learning_rate=3e-3, min_lr=1e-6, warmup_lr=1e-5)
    config.optimizer.warmup_epochs = 3
    config.num_epochs = 20
    steps_per_epoch = 4
    lr_fn = schedules.create_schedules(config, steps_per_epoch).lr
    got = lr_fn(np.arange(22 * steps_per_epoch)).reshape(22, steps_per_epoch)
    np.testing.assert_allclose(got, np.repeat(np.array(TIMM_COSINE_LR)[:, None], 4, 1), rtol=1e-13)
    assert all(
        _timm_cosine_get_lr(e, 20, 3e-3, 1e-6, 3, 1e-5) == v for e, v in enumerate(TIMM_COSINE_LR)
    )


def test_cosine_per_epoch_matches_timm_itself():
    timm_cosine = pytest.importorskip(
        "timm.scheduler.cosine_lr", reason="timm is not installed; its formula is tested above"
    )
    num_epochs, steps_per_epoch, warmup = 20, 4, 3
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=3e-3)
    sched = timm_cosine.CosineLRScheduler(
        opt, t_initial=num_epochs, lr_min=1e-6, warmup_lr_init=1e-5, warmup_t=warmup
    )
    expected = []
    for epoch in range(num_epochs):
        sched.step(epoch)  # OpenSTL v0.3.0: at the start of each epoch
        expected += [opt.param_groups[0]["lr"]] * steps_per_epoch
    config = _config("cosine", learning_rate=3e-3, min_lr=1e-6, warmup_lr=1e-5)
    config.optimizer.warmup_epochs = warmup
    config.num_epochs = num_epochs
    lr_fn = schedules.create_schedules(config, steps_per_epoch).lr
    np.testing.assert_allclose(lr_fn(np.arange(len(expected))), expected, rtol=1e-13, atol=0)


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="schedule"):
        schedules.create_schedules(_config("linear"), 10)


# ---------------------------------------------------------------- Adam vs torch.optim.Adam

SHAPES = {"conv": (3, 4, 2), "bias": (5,), "dense": (6, 3)}


def _problem(seed: int = 0):
    """Initial params, a positive curvature and a target per array, and per-step noise.

    grad = curv * (p - target) + noise_k: elementwise float32 ops, so numpy, torch and jax
    compute the same gradient from the same parameters, and it depends on where the optimizer
    has taken the parameters (errors would compound rather than stay put).
    """
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    params = {k: f32(*s) for k, s in SHAPES.items()}
    curv = {k: (0.1 + rng.random(s)).astype(np.float32) for k, s in SHAPES.items()}
    target = {k: f32(*s) for k, s in SHAPES.items()}
    noise = {k: 0.3 * f32(200, *s) for k, s in SHAPES.items()}
    return params, curv, target, noise


def _torch_adam_run(config, steps_per_epoch: int, num_steps: int) -> dict[str, np.ndarray]:
    """torch.optim.Adam driven as OpenSTL drives it (OneCycleLR after every update, or timm's
    cosine set at the start of every epoch)."""
    opt_cfg = config.optimizer
    params, curv, target, noise = _problem()
    tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = torch.optim.Adam(
        list(tp.values()),
        lr=opt_cfg.learning_rate,
        betas=(opt_cfg.b1, opt_cfg.b2),
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
    )
    onecycle = opt_cfg.schedule == "onecycle"
    if onecycle:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=opt_cfg.learning_rate,
            total_steps=config.num_epochs * steps_per_epoch,
            pct_start=opt_cfg.pct_start,
            div_factor=opt_cfg.div_factor,
            final_div_factor=opt_cfg.final_div_factor,
            cycle_momentum=opt_cfg.cycle_momentum,
            base_momentum=opt_cfg.base_momentum,
            max_momentum=opt_cfg.max_momentum,
        )
    tc = {k: torch.from_numpy(v) for k, v in curv.items()}
    tt = {k: torch.from_numpy(v) for k, v in target.items()}
    for step in range(num_steps):
        if not onecycle and step % steps_per_epoch == 0:
            opt.param_groups[0]["lr"] = _timm_cosine_get_lr(
                step // steps_per_epoch,
                config.num_epochs,
                opt_cfg.learning_rate,
                opt_cfg.min_lr,
                opt_cfg.warmup_epochs,
                opt_cfg.warmup_lr,
            )
        with torch.no_grad():
            for k, p in tp.items():
                p.grad = tc[k] * (p - tt[k]) + torch.from_numpy(noise[k][step])
        opt.step()
        if onecycle:
            sched.step()
    return {k: p.detach().numpy() for k, p in tp.items()}


def _ours_run(config, steps_per_epoch: int, num_steps: int) -> dict[str, np.ndarray]:
    params, curv, target, noise = _problem()
    params = jax.tree.map(jnp.asarray, params)
    tx = optim.create_optimizer(config, schedules.create_schedules(config, steps_per_epoch))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, noise_k):
        grads = {k: curv[k] * (params[k] - target[k]) + noise_k[k] for k in params}
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for k in range(num_steps):
        params, opt_state = step(params, opt_state, {n: v[k] for n, v in noise.items()})
    assert int(opt_state.count) == num_steps
    return jax.tree.map(np.asarray, params)


ADAM_CASES = {
    "onecycle": dict(schedule="onecycle", learning_rate=0.05),
    "onecycle_wd": dict(schedule="onecycle", learning_rate=0.05, weight_decay=1e-2),
    "onecycle_fixed_b1": dict(schedule="onecycle", learning_rate=0.05, cycle_momentum=False),
    "cosine_warmup": dict(schedule="cosine", learning_rate=0.05, warmup_epochs=3, warmup_lr=1e-3),
}


@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_parameters_match_torch_after_200_steps(case):
    config = _config(**ADAM_CASES[case])
    config.num_epochs, steps_per_epoch = 10, 20  # 200 updates: the whole schedule
    ours = _ours_run(config, steps_per_epoch, 200)
    ref = _torch_adam_run(config, steps_per_epoch, 200)
    params0 = _problem()[0]
    for k in SHAPES:
        # The optimizer really moved the parameters (a no-op would not be caught otherwise).
        assert np.max(np.abs(ref[k] - params0[k])) > 0.1
        np.testing.assert_allclose(ours[k], ref[k], rtol=RTOL_PARAMS, atol=RTOL_PARAMS * 1e-2)


def test_cycled_beta1_matters_for_adam():
    # Guards the beta1 parity above: with beta1 fixed at 0.9 instead of cycled, torch's own
    # trajectory differs far beyond RTOL_PARAMS, so the comparison does see beta1.
    runs = []
    for cycle_momentum in (True, False):
        config = _config(learning_rate=0.05, cycle_momentum=cycle_momentum)
        config.num_epochs = 10
        runs.append(_torch_adam_run(config, 20, 200))
    cycled, fixed = runs
    assert max(_rel(cycled[k], fixed[k]) for k in SHAPES) > 100 * RTOL_PARAMS


def test_weight_decay_needs_params():
    config = _config(weight_decay=1e-2)
    tx = optim.create_optimizer(config, schedules.create_schedules(config, 10))
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
