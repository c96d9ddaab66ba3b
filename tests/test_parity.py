"""Parity of the Flax model with the Figure 10 PyTorch reference (docs/conventions.md §2 traps).

Random inputs, random weights and random BatchNorm statistics; several configs covering patch
1 and 2, overlap 0/2/3, depth 3, 6 and 16 (the skip indices), 1 and 2 channels and T' != T;
each depthwise formulation, with lax's grouped conv as the reference one.
"""

from __future__ import annotations

import copy
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import from_torch_video, max_rel_err, randomize_reference, to_torch_video
from flax import nnx

from stlight_jax.models import ModelConfig, create_model
from stlight_jax.reference import reference_from_config
from stlight_jax.weights import torch_files as convert

torch = pytest.importorskip("torch", reason="the parity tests need the PyTorch CPU wheel")

CONFIGS = {
    "p2_o0_d3_c1": ModelConfig(
        frames_in=4, frames_out=6, channels=1, image_size=(16, 16), dim=16, depth=3, patch=2
    ),
    "p2_o2_d6_c2": ModelConfig(
        frames_in=3,
        frames_out=2,
        channels=2,
        image_size=(16, 12),
        dim=32,
        depth=6,
        patch=2,
        overlap=2,
    ),
    "p1_o0_d16_c2": ModelConfig(
        frames_in=2, frames_out=3, channels=2, image_size=(10, 10), dim=8, depth=16, patch=1
    ),
    "p1_o3_d4_c1_k5": ModelConfig(
        frames_in=3,
        frames_out=1,
        channels=1,
        image_size=(12, 12),
        dim=12,
        depth=4,
        patch=1,
        overlap=3,
        k1=5,
        k2=4,
        dilation=2,
    ),
}
IMPLS = ["lax", "shifted"]


def _pair(cfg: ModelConfig, impl: str, seed: int = 0):
    import dataclasses

    cfg = dataclasses.replace(cfg, conv_impl=impl)
    ref = reference_from_config(cfg)
    randomize_reference(ref, seed)
    model = create_model(cfg, seed=seed + 1)
    convert.load_into_model(model, ref.state_dict())
    return ref, model


def _input(cfg: ModelConfig, batch: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((batch, cfg.frames_in, *cfg.image_size, cfg.channels), np.float32)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_eval_outputs_match(name, impl):
    cfg = CONFIGS[name]
    ref, model = _pair(cfg, impl)
    x = _input(cfg)
    ref.eval()
    model.eval()
    with torch.no_grad():
        want = from_torch_video(ref(to_torch_video(x)))
    got = np.asarray(model(jnp.asarray(x)))
    assert got.shape == (3, cfg.frames_out, *cfg.image_size, cfg.channels)
    assert max_rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_outputs_and_running_stats_match(name, impl):
    cfg = CONFIGS[name]
    ref, model = _pair(cfg, impl)
    x = _input(cfg, batch=4, seed=1)
    ref64 = copy.deepcopy(ref).double()
    ref.train()
    ref64.train()
    model.train()
    want = from_torch_video(ref(to_torch_video(x)))
    exact = from_torch_video(ref64(to_torch_video(x).double()))
    got = np.asarray(model(jnp.asarray(x)))
    # Train-mode BatchNorm over small batches amplifies float32 rounding with depth (depth 16
    # reaches ~1e-5 between the two float32 runs), so a float64 run of the reference decides:
    # ours must be as close to it as PyTorch's own float32 result is.
    assert max_rel_err(got, exact) <= max(1e-5, 1.5 * max_rel_err(want, exact))
    assert max_rel_err(got, want) <= 3e-5
    ours = convert.model_state_dict(model)
    for key, value in ref.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            assert max_rel_err(ours[key], value.numpy()) <= 1e-5, key
        elif key.endswith("num_batches_tracked"):
            assert ours[key] == value.numpy(), key


def test_running_variance_is_unbiased():
    """A biased running-variance update would be off by n/(n-1); here n = 2*2*2 is small."""
    cfg = ModelConfig(
        frames_in=1, frames_out=1, channels=1, image_size=(4, 4), dim=4, depth=1, patch=2
    )
    ref, model = _pair(cfg, "lax")
    x = _input(cfg, batch=2, seed=3)
    ref.train()
    model.train()
    ref(to_torch_video(x))
    model(jnp.asarray(x))
    want = ref.state_dict()["patch_encoder.1.running_var"].numpy()
    got = convert.model_state_dict(model)["patch_encoder.1.running_var"]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_match(name, impl):
    cfg = CONFIGS[name]
    ref, model = _pair(cfg, impl)
    x = _input(cfg, batch=3, seed=2)
    y = np.random.default_rng(5).random(
        (3, cfg.frames_out, *cfg.image_size, cfg.channels), np.float32
    )
    ref.train()
    loss_t = torch.mean((ref(to_torch_video(x)) - to_torch_video(y)) ** 2)
    loss_t.backward()
    want = {k: p.grad.numpy() for k, p in ref.named_parameters()}

    model.train()

    def loss_fn(m):
        return jnp.mean((m(jnp.asarray(x)) - jnp.asarray(y)) ** 2)

    loss_j, grads = nnx.value_and_grad(loss_fn)(model)
    np.testing.assert_allclose(float(loss_j), loss_t.item(), rtol=1e-5)
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    got = convert.variables_to_state_dict(nnx.to_pure_dict(grads), stats, model.config)
    assert set(want) <= set(got)
    largest = max(np.abs(g).max() for g in want.values())
    for key, g in want.items():
        if key == "patch_encoder.0.bias":
            # This bias feeds train-mode BatchNorm, which subtracts it again: its exact
            # gradient is 0 and both sides return rounding noise, so check that instead.
            assert np.abs(got[key]).max() <= 1e-5 * largest, key
            assert np.abs(g).max() <= 1e-5 * largest, key
        else:
            assert max_rel_err(got[key], g) <= 1e-4, key


def test_import_export_is_bit_exact(tmp_path):
    cfg = CONFIGS["p2_o2_d6_c2"]
    ref, model = _pair(cfg, "lax", seed=7)
    original = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    exported = convert.model_state_dict(model)
    assert list(exported) == list(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype, key
        assert exported[key].shape == value.shape, key
        assert np.array_equal(exported[key], value), key
    # And through every file format a user may bring.
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3},
        tmp_path / "lightning.ckpt",
    )
    convert.save_state_dict_file(exported, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "lightning.ckpt", "w.safetensors"):
        loaded = convert.load_state_dict_file(str(tmp_path / name))
        fresh = create_model(cfg, seed=99)
        convert.load_into_model(fresh, loaded)
        again = convert.model_state_dict(fresh)
        for key, value in original.items():
            assert np.array_equal(again[key], value), (name, key)
    # The exported .pth loads into the reference with strict=True.
    convert.save_state_dict_file(exported, str(tmp_path / "out.pth"))
    back = reference_from_config(cfg)
    back.load_state_dict(torch.load(tmp_path / "out.pth", weights_only=True), strict=True)


def test_strict_import_lists_every_problem():
    cfg = CONFIGS["p2_o0_d3_c1"]
    ref, model = _pair(cfg, "lax")
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    del sd["net.1.0.fn.0.weight"]
    sd["net.9.extra"] = np.zeros(3, np.float32)
    sd["patch_reassemble.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError) as err:
        convert.load_into_model(model, sd)
    msg = str(err.value)
    assert "net.1.0.fn.0.weight" in msg and "net.9.extra" in msg
    assert "patch_reassemble.bias: (7,) (expected (6,))" in msg
    assert "\n" not in msg


def test_non_strict_import_keeps_the_rest():
    cfg = CONFIGS["p2_o0_d3_c1"]
    ref, model = _pair(cfg, "lax")
    before = convert.model_state_dict(model)
    partial = {"net.1.0.fn.0.weight": np.full((16, 1, 3, 3), 0.5, np.float32)}
    convert.load_into_model(model, partial, strict=False)
    after = convert.model_state_dict(model)
    assert np.all(after["net.1.0.fn.0.weight"] == 0.5)
    assert np.array_equal(after["net.0.0.fn.0.weight"], before["net.0.0.fn.0.weight"])


def test_load_rejects_unreadable_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        convert.load_state_dict_file(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        convert.load_state_dict_file(str(tmp_path / "missing.safetensors"))
    buf = io.BytesIO()
    torch.save([1, 2, 3], buf)
    (tmp_path / "list.pt").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="not a state_dict"):
        convert.load_state_dict_file(str(tmp_path / "list.pt"))


def test_hybrid_init_statistics():
    """Appendix D: kaiming-normal fan_out for encoder/mixer (bias 0), torch default for the
    reassemble conv. Compare the init distributions of ours and the reference's."""
    cfg = ModelConfig(
        frames_in=10, frames_out=10, channels=1, image_size=(16, 16), dim=256, depth=3, patch=2
    )
    ref = reference_from_config(cfg)
    ours = convert.model_state_dict(create_model(cfg, seed=0))
    for key, value in ref.state_dict().items():
        want, got = value.numpy(), ours[key]
        if key.endswith("num_batches_tracked"):
            continue
        if want.std() == 0:
            assert np.array_equal(got, want), key  # biases 0, BN scale 1, stats 0/1
        elif key == "patch_reassemble.bias":  # too few values for a std: check the bound
            bound = 1 / np.sqrt(cfg.dim // cfg.patch**2)
            assert np.abs(got).max() <= bound and np.abs(want).max() <= bound
            assert np.abs(got).max() > bound / 2
        else:
            assert abs(got.std() / want.std() - 1) < 0.1, key
            assert abs(got.mean()) < 0.1 * want.std() + 1e-3, key
            # uniform (reassemble) vs normal (others): compare the largest |value| too
            np.testing.assert_allclose(
                np.abs(got).max() / got.std(), np.abs(want).max() / want.std(), rtol=0.35
            )


def test_jit_matches_eager():
    cfg = CONFIGS["p1_o0_d16_c2"]
    _, model = _pair(cfg, "lax")
    model.eval()
    x = jnp.asarray(_input(cfg))
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, x):
        return nnx.merge(graphdef, state)(x)

    np.testing.assert_allclose(
        np.asarray(fwd(state, x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6
    )
