"""Training parity with PyTorch: 20 steps of Adam + OneCycle (beta1 cycled) from the same weights.

The reference is the Figure 10 model driven by torch.optim.Adam and torch's OneCycleLR
(cycle_momentum=True) in train mode with element-mean MSE, as OpenSTL trains it; ours is
`make_train_step` with `create_optimizer`, jitted as training jits it, on identical batches.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import max_rel_err, randomize_reference, to_torch_video
from flax import nnx

from stlight_jax import sharding, steps
from stlight_jax.config import files as config_io
from stlight_jax.models import create_model
from stlight_jax.reference import reference_from_config
from stlight_jax.training import optimizer as optim
from stlight_jax.training import schedules
from stlight_jax.weights import torch_files as convert
from tests import tiny_config

torch = pytest.importorskip("torch", reason="the parity tests need the PyTorch CPU wheel")

STEPS = 20
BATCH = 4
# The patch encoder's conv bias feeds train-mode BatchNorm, which subtracts the batch mean:
# its gradient is exactly zero in real arithmetic and float32 rounding noise (~1e-9) in
# practice. Adam divides that noise by its own magnitude, so both frameworks move this bias
# by about +-lr per step in directions no implementation can reproduce. The test checks the
# gradient really is noise, leaves the bias out of the 1e-4 comparison, and compares the
# following BatchNorm's running mean after removing what the bias contributed to it.
NULL_BIAS, NEXT_BN = "patch_encoder.0.bias", "patch_encoder.1"
BN_MOMENTUM = 0.1  # torch's default, which the reference uses


@pytest.mark.slow  # 20 training steps in both frameworks: ~35 s on 2 cores
def test_twenty_steps_of_adam_onecycle_match_torch():
    config = tiny_config.get_config()
    config.model.depth = 3  # odd depth: the skip connection indices of Figure 10
    config.num_epochs = 1
    config.optimizer.learning_rate = 3e-3
    config.optimizer.final_div_factor = 1e4  # Table 2's MMNIST settings
    cfg = config_io.model_config(config)

    torch.manual_seed(0)
    ref = reference_from_config(cfg)
    randomize_reference(ref, seed=0)
    model = create_model(cfg, seed=1)
    convert.load_into_model(model, ref.state_dict())

    scheds = schedules.create_schedules(config, steps_per_epoch=STEPS)
    tx = optim.create_optimizer(config, scheds)
    lr_fn, b1_fn = scheds.lr, scheds.b1
    graphdef, state = steps.split_model(model, tx)
    mesh = sharding.create_mesh(jax.devices()[:1])
    step_fn = steps.create_train_step(graphdef, tx, lr_fn, mesh)

    opt = config.optimizer
    torch_opt = torch.optim.Adam(
        ref.parameters(), lr=opt.learning_rate, betas=(0.9, opt.b2), eps=opt.eps
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        torch_opt,
        max_lr=opt.learning_rate,
        total_steps=STEPS,
        pct_start=opt.pct_start,
        div_factor=opt.div_factor,
        final_div_factor=opt.final_div_factor,
        cycle_momentum=True,
        base_momentum=opt.base_momentum,
        max_momentum=opt.max_momentum,
    )
    ref.train()

    rng = np.random.default_rng(0)
    shape = (BATCH, cfg.frames_in, *cfg.image_size, cfg.channels)
    losses, lrs, beta1s, null_biases, null_grad = [], [], [], [], []
    for k in range(STEPS):
        inputs = rng.random(shape, np.float32)
        targets = rng.random((BATCH, cfg.frames_out, *shape[2:]), np.float32)
        group = torch_opt.param_groups[0]
        lrs.append((group["lr"], float(lr_fn(k))))
        beta1s.append((group["betas"][0], float(b1_fn(k))))

        bias_ours = np.asarray(
            convert.model_state_dict(nnx.merge(graphdef, state["params"], state["batch_stats"]))[
                NULL_BIAS
            ]
        )
        null_biases.append((ref.state_dict()[NULL_BIAS].numpy().copy(), bias_ours))
        torch_opt.zero_grad()
        pred = ref(to_torch_video(inputs))
        want = torch.nn.functional.mse_loss(pred, to_torch_video(targets))
        want.backward()
        grads = {n: p.grad.abs().max().item() for n, p in ref.named_parameters()}
        null_grad.append(grads[NULL_BIAS] / max(grads.values()))
        torch_opt.step()
        sched.step()

        batch = sharding.global_batch({"inputs": inputs, "targets": targets}, mesh)
        state, metrics = step_fn(state, batch)
        losses.append((float(metrics["loss"]), want.item()))

    # The schedules really moved: lr up then down, beta1 down then up.
    assert max(t for t, _ in lrs) == pytest.approx(opt.learning_rate)
    assert min(t for t, _ in beta1s) == pytest.approx(opt.base_momentum, abs=1e-3)
    for t, ours in lrs + beta1s:
        assert ours == pytest.approx(t, rel=1e-6)

    rel = [abs(got - want) / abs(want) for got, want in losses]
    assert max(rel) <= 1e-4, rel
    assert losses[-1][0] < losses[0][0]  # it trained

    ours = convert.model_state_dict(nnx.merge(graphdef, state["params"], state["batch_stats"]))
    theirs = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    assert set(ours) == set(theirs)
    assert max(null_grad) < 1e-5, null_grad  # pure rounding noise
    # running_mean_T = sum_t m (1 - m)^(T-1-t) (batch mean of conv_t + bias_t) + decayed start.
    weights = BN_MOMENTUM * (1 - BN_MOMENTUM) ** np.arange(STEPS - 1, -1, -1)
    for i, side in ((1, ours), (0, theirs)):
        contribution = sum(w * b[i] for w, b in zip(weights, null_biases, strict=True))
        side[f"{NEXT_BN}.running_mean"] = side[f"{NEXT_BN}.running_mean"] - contribution
    errors = {}
    for key, want in theirs.items():
        if key.endswith("num_batches_tracked"):
            assert int(ours[key]) == int(want), key
            continue
        if key != NULL_BIAS:
            errors[key] = max_rel_err(ours[key], want)
    assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    print(f"max loss rel diff {max(rel):.2e}, max param rel diff {max(errors.values()):.2e}")
