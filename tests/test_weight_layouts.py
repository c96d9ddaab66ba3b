"""Weights from other PyTorch code: the STF layout and its trainer's checkpoint, wrappers, user
key maps, the closest-match error, and `convert export --layout=stf` back into STF's module."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import from_torch_video, max_rel_err, randomize_reference, to_torch_video

from stlight_jax.config import files as config_io
from stlight_jax.models import ModelConfig, create_model
from stlight_jax.reference import reference_from_config
from stlight_jax.weights import key_formats as weight_layouts
from stlight_jax.weights import torch_files as convert

torch = pytest.importorskip("torch", reason="the STF-layout tests build a PyTorch module")
from stf_model import STFModel, save_like_stf_trainer  # noqa: E402 - needs torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = ModelConfig(frames_in=3, frames_out=2, channels=1, image_size=(8, 8), dim=8, depth=3, patch=2)


def _stf(seed=0):
    model = STFModel(CFG)
    randomize_reference(model, seed)
    return model.eval()


def _jax_forward(state_dict, x):
    model = create_model(CFG, seed=5)
    convert.load_into_model(model, state_dict)
    model.eval()
    return np.asarray(model(x))


def _torch_forward(module, x):
    with torch.no_grad():
        return from_torch_video(module(to_torch_video(x)))


def test_layout_templates_name_every_figure10_key():
    ref_keys = list(reference_from_config(CFG).state_dict())
    stf_keys = list(STFModel(CFG).state_dict())
    assert len(ref_keys) == len(stf_keys)
    renamed = weight_layouts.from_paper({k: k for k in ref_keys}, "stf")
    assert sorted(renamed) == sorted(stf_keys)
    # Both modules register tensors in the same order, so the renaming pairs them one to one.
    assert [renamed_key for renamed_key in renamed] == stf_keys
    back, layout = weight_layouts.to_paper({k: np.zeros(1) for k in stf_keys})
    assert layout == "stf" and list(back) == ref_keys


def test_stf_trainer_checkpoint_matches_pytorch(tmp_path, rng):
    stf = _stf(seed=1)
    save_like_stf_trainer(stf, CFG, tmp_path / "stf.pth")
    state, layout = convert.read_state_dict(str(tmp_path / "stf.pth"))
    assert layout == "stf"
    x = rng.random((2, 3, 8, 8, 1), dtype=np.float32)
    want = _torch_forward(stf, x)
    assert max_rel_err(_jax_forward(state, x), want) < 1e-5


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"model_state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
    ],
    ids=["lightning", "ddp", "compiled-in-trainer-dict"],
)
def test_wrappers_around_both_layouts(tmp_path, wrap):
    stf = _stf(seed=2)
    ref = reference_from_config(CFG)
    ref.load_state_dict(
        {k: v for k, v in zip(ref.state_dict(), stf.state_dict().values(), strict=True)}
    )
    for name, module in (("paper", ref), ("stf", stf)):
        torch.save(wrap(module.state_dict()), tmp_path / f"{name}.pt")
        state, layout = convert.read_state_dict(str(tmp_path / f"{name}.pt"))
        assert layout == name
        for k, v in ref.state_dict().items():
            assert np.array_equal(state[k], v.numpy()), (name, k)


def test_user_key_map(tmp_path, rng):
    stf = _stf(seed=3)
    # Another codebase's names: STF's with the encoder renamed, which no built-in layout knows.
    other = {k.replace("encoder.encoder.", "stem."): v for k, v in stf.state_dict().items()}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError) as err:
        convert.read_state_dict(str(tmp_path / "other.pt"))
    message = str(err.value)
    assert "\n" not in message
    assert "(paper, stf)" in message and "closest is stf" in message and "stem.0" in message
    key_map = {
        r"stem\.(.*)": r"patch_encoder.\1",
        r"translator\.(\d+)\.depthwise_conv\.(.*)": r"net.\1.0.\2",
        r"translator\.(\d+)\.pointwise_conv\.(.*)": r"net.\1.1.\2",
        r"patch_reassemble\.(.*)": r"patch_reassemble.\1",
    }
    (tmp_path / "map.json").write_text(json.dumps(key_map))
    state, layout = convert.read_state_dict(str(tmp_path / "other.pt"), str(tmp_path / "map.json"))
    assert layout == f"key map {tmp_path / 'map.json'}"
    x = rng.random((1, 3, 8, 8, 1), dtype=np.float32)
    assert max_rel_err(_jax_forward(state, x), _torch_forward(stf, x)) < 1e-5
    (tmp_path / "bad.json").write_text('{"(": "x"}')
    with pytest.raises(ValueError, match="bad regex"):
        convert.read_state_dict(str(tmp_path / "other.pt"), str(tmp_path / "bad.json"))


def test_non_tensor_entries_are_refused(tmp_path):
    torch.save({"net": {"a": torch.ones(1)}, "epoch": 3}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="not a state_dict.*model_state_dict"):
        convert.read_state_dict(str(tmp_path / "odd.pt"))


def _cli(*args, script=("-m", "stlight_jax.convert")):
    return subprocess.run(
        [sys.executable, *script, *args],
        env={**os.environ, "PYTHONPATH": ROOT},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


CONFIG_PY = f"""
from stlight_jax.configs.common import get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.model.update(frames_in={CFG.frames_in}, frames_out={CFG.frames_out}, dim={CFG.dim},
                        depth={CFG.depth}, patch={CFG.patch}, image_size={CFG.image_size})
    return config
"""


def _config_file(tmp_path):
    path = tmp_path / "stf_config.py"
    path.write_text(CONFIG_PY)
    return path


@pytest.mark.slow  # three command-line runs
def test_stf_checkpoint_through_evaluate_and_back_to_stf(tmp_path, rng):
    """The STF trainer's file goes through `evaluate.py --weights` with the PyTorch model's
    outputs, then `convert import` + `convert export --layout=stf` load back into STF's module."""
    stf = _stf(seed=4)
    save_like_stf_trainer(stf, CFG, tmp_path / "stf_epoch7.pth")
    cfg_path = _config_file(tmp_path)
    x = rng.random((3, 3, 8, 8, 1), dtype=np.float32)
    np.save(tmp_path / "frames.npy", x)
    r = _cli(
        f"--config={cfg_path}",
        f"--weights={tmp_path / 'stf_epoch7.pth'}",
        "--mode=predict",
        f"--input={tmp_path / 'frames.npy'}",
        f"--out={tmp_path / 'pred'}",
        "--num_samples=0",
        script=("evaluate.py",),
    )
    assert r.returncode == 0, r.stderr
    got = np.load(tmp_path / "pred" / "predictions.npy")
    assert max_rel_err(got, _torch_forward(stf, x)) < 1e-5
    info = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert info["checkpoint"]["layout"] == "stf"

    r = _cli(
        "import",
        f"--config={cfg_path}",
        f"--weights={tmp_path / 'stf_epoch7.pth'}",
        f"--out={tmp_path / 'ckpt'}",
    )
    assert r.returncode == 0, r.stderr
    assert "stf layout" in r.stdout
    r = _cli(
        "export",
        f"--config={cfg_path}",
        f"--checkpoint={tmp_path / 'ckpt'}",
        f"--out={tmp_path / 'back.pth'}",
        "--layout=stf",
    )
    assert r.returncode == 0, r.stderr
    back = STFModel(CFG)
    back.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True), strict=True)
    for k, v in stf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_init_from_reads_stf_layout(tmp_path):
    from flax import nnx

    from stlight_jax.weights import loading as weights

    stf = _stf(seed=5)
    save_like_stf_trainer(stf, CFG, tmp_path / "stf.pth")
    config = config_io.load_config(str(_config_file(tmp_path)))
    config.init_from = str(tmp_path / "stf.pth")
    model = create_model(CFG, seed=0)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, stats, what = weights.load_init_from(config.init_from, graphdef, params, stats)
    assert "stf layout" in what
    loaded = convert.model_state_dict(nnx.merge(graphdef, params, stats))
    for k, v in zip(loaded, stf.state_dict().values(), strict=True):
        assert np.array_equal(loaded[k], v.numpy()), k


def test_readme_key_map_example(tmp_path, rng):
    """The README's key map, on a module named stem / blocks.{i}.dw / blocks.{i}.pw / head."""
    import re

    readme = open(os.path.join(ROOT, "README.md")).read()
    key_map = re.search(r"```json\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "map.json").write_text(key_map)
    stf = _stf(seed=6)
    renamed = {}
    for k, v in stf.state_dict().items():
        k = k.replace("encoder.encoder.", "stem.").replace("patch_reassemble.", "head.")
        k = re.sub(r"translator\.(\d+)\.depthwise_conv\.", r"blocks.\1.dw.", k)
        renamed[re.sub(r"translator\.(\d+)\.pointwise_conv\.", r"blocks.\1.pw.", k)] = v
    torch.save({"model_state_dict": renamed, "epoch": 1}, tmp_path / "other.pt")
    state, _ = convert.read_state_dict(str(tmp_path / "other.pt"), str(tmp_path / "map.json"))
    x = rng.random((2, 3, 8, 8, 1), dtype=np.float32)
    assert max_rel_err(_jax_forward(state, x), _torch_forward(stf, x)) < 1e-5


@pytest.mark.parametrize("decoder", ["shuffle_reassemble", "reassemble_shuffle"])
def test_every_layout_table_key_has_a_name_in_each_layout(decoder):
    """The key grammar here covers the parameter layout table for every model variant."""
    import dataclasses

    from stlight_jax.weights.param_table import parameter_layout

    keys = [e.torch_key for e in parameter_layout(dataclasses.replace(CFG, decoder=decoder))]
    for layout in weight_layouts.LAYOUTS:
        named = weight_layouts.from_paper(dict.fromkeys(keys), layout)
        back, found = weight_layouts.to_paper({k: np.zeros(1) for k in named})
        assert found == layout and list(back) == keys
