"""stlight_jax.load(...).predict (README example included) and the StableHLO / ONNX exports,
each compared with the JAX model's own forward on random frames and random weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import max_rel_err

import stlight_jax
import stlight_jax.api
from stlight_jax import export
from stlight_jax.models import ModelConfig, create_model
from stlight_jax.steps import apply_model
from stlight_jax.weights import torch_files as convert
from stlight_jax.weights.loading import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = ModelConfig(
    frames_in=3, frames_out=2, channels=2, image_size=(8, 12), dim=8, depth=3, patch=2
)
CONFIG_PY = f"""
from stlight_jax.configs.common import get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.model.update(frames_in={CFG.frames_in}, frames_out={CFG.frames_out},
                        channels={CFG.channels}, dim={CFG.dim}, depth={CFG.depth},
                        patch={CFG.patch}, image_size={CFG.image_size})
    config.data.eval_batch_size = 4
    return config
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random-weight model saved as safetensors, with its config file: every floating
    tensor random, so an export that drops or resets any of them (conv biases, BatchNorm
    scale and shift, running statistics) changes the outputs."""
    root = tmp_path_factory.mktemp("api")
    model = create_model(CFG, seed=11)
    init = convert.model_state_dict(model)
    state = {}
    rng = np.random.default_rng(1)
    for k, v in init.items():
        if not np.issubdtype(v.dtype, np.floating):
            state[k] = v  # num_batches_tracked
        elif k.endswith("running_var"):
            state[k] = (0.5 + rng.random(v.shape)).astype(v.dtype)
        elif k.endswith(".weight") and v.ndim == 1:
            state[k] = (1 + 0.3 * rng.standard_normal(v.shape)).astype(v.dtype)  # BN scale
        else:  # kernels, conv biases, BN shifts and running means
            state[k] = (v + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype)
    floating = [k for k, v in state.items() if np.issubdtype(v.dtype, np.floating)]
    assert all(not np.array_equal(state[k], init[k]) for k in floating)
    convert.save_state_dict_file(state, str(root / "w.safetensors"))
    (root / "config.py").write_text(CONFIG_PY)
    return str(root / "w.safetensors"), str(root / "config.py")


def _forward(loaded, x):
    return np.asarray(apply_model(loaded.graphdef, loaded.params, loaded.batch_stats, x, False)[0])


def test_load_and_predict(weights, rng):
    path, config = weights
    model = stlight_jax.load(path, config=config)
    assert model.config.model.dim == CFG.dim and set(model.variables) == {"params", "batch_stats"}
    x = rng.random((7, 3, 8, 12, 2), dtype=np.float32)  # 7: two batches of 4, one padded
    want = _forward(model._loaded, x)
    got = model.predict(x)
    assert got.shape == (7, 2, 8, 12, 2) and max_rel_err(got, want) < 1e-6
    assert np.array_equal(model.predict(jax.numpy.asarray(x)), got)
    # Past frames_out it rolls out as evaluate.py does: predictions fed back as inputs.
    long = model.predict(x, horizon=5)
    step2 = _forward(model._loaded, np.concatenate([x, want], axis=1)[:, -3:])
    assert long.shape == (7, 5, 8, 12, 2)
    assert max_rel_err(long[:, 2:4], step2) < 1e-5
    with pytest.raises(ValueError, match="expected shape"):
        model.predict(x[:, :2])
    with pytest.raises(ValueError, match="pass config="):
        stlight_jax.load(path)


@pytest.mark.slow
def test_load_workdir_and_checkpoint(tmp_path, rng):
    from tiny_config import get_config, write_data

    from stlight_jax.training.loop import train_and_evaluate

    config = get_config(write_data(str(tmp_path / "data.npz")))
    config.num_epochs = 1
    train_and_evaluate(config, str(tmp_path / "run"))
    from_workdir = stlight_jax.load(tmp_path / "run")
    from_ckpt_dir = stlight_jax.load(tmp_path / "run" / "checkpoints", step="latest")
    assert from_workdir.source["kind"] == "orbax"
    x = rng.random((2, 4, 16, 16, 1), dtype=np.float32)
    assert np.array_equal(from_workdir.predict(x), from_ckpt_dir.predict(x))


def _readme_block(heading: str) -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # a Python subprocess: ~11 s on 2 cores
def test_readme_api_example_runs_from_another_directory(tmp_path, monkeypatch):
    """The README's example, verbatim, in a directory without configs/: the paper's config
    comes from the installed package."""
    from stlight_jax.configs.mmnist import get_config

    cfg = ModelConfig.from_config(get_config("cpu").model)
    weights = convert.model_state_dict(create_model(cfg, seed=4))
    convert.save_state_dict_file(weights, str(tmp_path / "stlight_cpu.safetensors"))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_readme_block("## Python API"), scope)
    assert scope["future"].shape == (2, 20, 64, 64, 1)
    assert np.isfinite(scope["future"]).all()


def test_stablehlo_runs_without_stlight_jax(weights, tmp_path, rng):
    path, config = weights
    loaded = stlight_jax.api.load_model_from(path, config, conv_impl=export.EXPORT_CONV_IMPL)
    note = export.write_stablehlo(loaded, str(tmp_path / "m.stablehlo"), None, export.PLATFORMS)
    assert "platforms cpu, cuda, tpu" in note and "float32[batch,3,8,12,2]" in note
    for n in (1, 5):
        np.save(tmp_path / f"x{n}.npy", rng.random((n, 3, 8, 12, 2), dtype=np.float32))
    script = textwrap.dedent(
        """
        import sys
        import jax
        import numpy as np

        exported = jax.export.deserialize(open("m.stablehlo", "rb").read())
        for n in (1, 5):
            np.save(f"y{n}.npy", np.asarray(exported.call(np.load(f"x{n}.npy"))))
        assert not any(m.startswith(("stlight_jax", "configs", "flax")) for m in sys.modules)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    for n in (1, 5):
        want = _forward(loaded, np.load(tmp_path / f"x{n}.npy"))
        assert max_rel_err(np.load(tmp_path / f"y{n}.npy"), want) < 1e-6


@pytest.mark.slow
def test_stablehlo_cli_fixed_batch(weights, tmp_path):
    path, config = weights
    r = subprocess.run(
        [sys.executable, "-m", "stlight_jax.export", "stablehlo", f"--config={config}"]
        + [f"--weights={path}", f"--out={tmp_path / 'b2.stablehlo'}", "--batch=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "float32[2,3,8,12,2]" in r.stdout
    exported = jax.export.deserialize((tmp_path / "b2.stablehlo").read_bytes())
    assert exported.in_avals[0].shape == (2, 3, 8, 12, 2)
    r = subprocess.run(
        [sys.executable, "-m", "stlight_jax.export", "stablehlo", f"--weights={path}"]
        + [f"--out={tmp_path / 'x'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pass config=" in r.stderr


@pytest.mark.slow  # torch.onnx export: ~11 s on 2 cores
def test_onnx_matches_jax(weights, tmp_path, rng):
    for module in ("torch", "onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module, reason="ONNX export needs requirements-export.txt")
    import onnxruntime

    path, config = weights
    loaded = stlight_jax.api.load_model_from(path, config, conv_impl=export.EXPORT_CONV_IMPL)
    note = export.write_onnx(loaded, str(tmp_path / "m.onnx"), batch=None)
    assert "relative error" in note
    assert os.listdir(tmp_path) == ["m.onnx"]  # weights inside, no external data file
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    for n in (1, 6):
        x = rng.random((n, 3, 8, 12, 2), dtype=np.float32)
        want = _forward(load_model(loaded.config, weights=path), x)
        got = session.run(None, {"frames": x})[0]
        assert got.shape == want.shape and max_rel_err(got, want) < 1e-5
