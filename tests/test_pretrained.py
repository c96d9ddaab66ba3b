"""The shipped models in pretrained/: their JSON's test metrics reproduce from the weights file,
they beat predicting zeros, the digest is checked, the file is the paper's Figure 10 layout in
float32 (strict load into the PyTorch listing), and `stlight_jax.load` / `evaluate.py
--pretrained` take a name from any directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stlight_jax import api, pretrained
from stlight_jax.evaluation import runner as evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = pretrained.available()
MAX_BYTES = 10 * 1024 * 1024  # the cap for everything under pretrained/
RTOL = 1e-4


def test_something_is_shipped_and_small():
    assert NAMES, f"no model in {pretrained.pretrained_dir()}"
    folder = pretrained.pretrained_dir()
    total = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    assert total <= MAX_BYTES, f"pretrained/ holds {total} bytes"
    for name in NAMES:
        record = pretrained.read_record(name)
        assert os.path.isfile(os.path.join(folder, record["training"]["metrics_log"]))
        assert record["config"]["data"]["data_dir"] == "data"  # nothing of the training machine
        assert record["test"]["num_sequences"] == 10_000


@pytest.fixture(scope="module", params=NAMES)
def shipped(request, tmp_path_factory):
    """(name, record, metrics of the first 256 test sequences scored now from the file)."""
    name = request.param
    path, config, record = pretrained.resolve(name)
    tmp = tmp_path_factory.mktemp(name)
    now = pretrained.score_first_sequences(
        path, config, str(tmp / "data"), pretrained.FIRST_TEST_SEQUENCES, str(tmp)
    )
    return name, record, now


def test_reproduces_its_recorded_test_metrics(shipped):
    name, record, now = shipped
    want = record["test_first_256"]["metrics"]
    for predictor in ("model", "zeros", "last_frame"):
        assert now[predictor]["num_samples"] == pretrained.FIRST_TEST_SEQUENCES
        for metric in ("mse", "mae", "ssim", "psnr"):
            got, ref = now[predictor][metric], want[predictor][metric]
            if ref == "inf":  # strict JSON's spelling of an exactly repeated frame's PSNR
                assert got == float("inf"), (name, predictor, metric)
                continue
            assert abs(got - ref) <= RTOL * abs(ref), (name, predictor, metric, got, ref)


def test_beats_predicting_zeros_on_mse(shipped):
    name, record, now = shipped
    assert now["model"]["mse"] < now["zeros"]["mse"], (name, now["model"], now["zeros"])
    full = record["test"]["metrics"]  # all 10,000 sequences, both baselines
    for baseline in ("zeros", "last_frame"):
        assert full["model"]["mse"] < full[baseline]["mse"], baseline
    assert full["model"]["psnr"] > full["zeros"]["psnr"]


def test_beats_predicting_zeros_on_every_metric(shipped):
    name, record, now = shipped
    model, zeros = now["model"], now["zeros"]
    assert model["ssim"] > zeros["ssim"], (name, model, zeros)
    full = record["test"]["metrics"]
    for baseline in ("zeros", "last_frame"):
        assert full["model"]["mae"] < full[baseline]["mae"], baseline
        assert full["model"]["ssim"] > full[baseline]["ssim"], baseline


@pytest.mark.parametrize("name", NAMES)
def test_figure10_float32_and_strict_torch_load(name):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    from stlight_jax.reference import reference_from_config
    from tests.conftest import from_torch_video, max_rel_err, to_torch_video

    state = load_file(pretrained.weights_path(name))
    for key, value in state.items():
        want = np.int64 if key.endswith("num_batches_tracked") else np.float32
        assert value.dtype == want, (key, value.dtype)
    model = api.load(name)
    ref = reference_from_config(model.model_config)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    ref.eval()
    x = np.random.default_rng(0).random((2, 10, 64, 64, 1), dtype=np.float32)
    with torch.no_grad():
        want = from_torch_video(ref(to_torch_video(x)))
    assert max_rel_err(model.predict(x), want) < 1e-4


@pytest.fixture
def damaged_copy(tmp_path, monkeypatch):
    """A copy of pretrained/ that the module reads instead of the real one."""
    folder = tmp_path / "pretrained"
    shutil.copytree(pretrained.pretrained_dir(), folder)
    monkeypatch.setattr(pretrained, "pretrained_dir", lambda: str(folder))
    return folder


def test_a_damaged_file_is_refused_in_one_line(damaged_copy):
    name = NAMES[0]
    path = damaged_copy / (name + ".safetensors")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    for load in (
        lambda: api.load(name),
        lambda: api.load(str(path)),  # by path too: it is the shipped file
        lambda: evaluation.run(evaluation.EvalOptions(pretrained=name, out=str(damaged_copy))),
    ):
        with pytest.raises(ValueError, match="SHA-256") as e:
            load()
        assert "\n" not in str(e.value) and "damaged" in str(e.value)
    path.write_bytes(bytes(data[:-100]))  # truncated
    with pytest.raises(ValueError, match="bytes, not the") as e:
        api.load(name)
    assert "\n" not in str(e.value)


def test_unknown_name_and_conflicting_flags():
    with pytest.raises(ValueError, match="nor a shipped pretrained model") as e:
        api.load("no_such_model")
    assert all(n in str(e.value) for n in NAMES) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="drop --weights"):
        evaluation.EvalOptions(pretrained=NAMES[0], weights="w.pt", out="o").check()
    with pytest.raises(ValueError, match="--out is required with --pretrained"):
        evaluation.EvalOptions(pretrained=NAMES[0]).check()
    with pytest.raises(ValueError, match="--num_test=0"):
        evaluation.EvalOptions(pretrained=NAMES[0], out="o", num_test=0).check()


def test_load_by_name_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = api.load(NAMES[0])
    assert model.source["kind"] == "pretrained" and model.source["name"] == NAMES[0]
    frames = np.zeros((1, 10, 64, 64, 1), np.float32)
    assert model.predict(frames, horizon=12).shape == (1, 12, 64, 64, 1)


@pytest.mark.slow  # evaluate.py on a shipped model: ~40 s on 2 cores
def test_evaluate_pretrained_command(tmp_path):
    """The one-minute look's command, on 16 test sequences: the same files, a table."""
    out = tmp_path / "look"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "evaluate.py"), f"--pretrained={NAMES[0]}"]
        + [f"--out={out}", "--num_test=16", "--num_samples=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["num_samples"] == 16 and result["checkpoint"]["name"] == NAMES[0]
    for f in ("metrics_vs_lead_time.png", "sample_000.png", "sample_000.gif"):
        assert (out / f).stat().st_size > 0, f
    assert "predictor" in proc.stdout and NAMES[0] in proc.stdout


def test_ship_refuses_bad_inputs(tmp_path):
    kwargs = dict(command="c", hardware="h", wall_seconds=1.0, out_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="--name='a/b'"):
        pretrained.ship(str(tmp_path), "a/b", **kwargs)
    with pytest.raises(ValueError, match="has no test_metrics.json"):
        pretrained.ship(str(tmp_path), "ok_name", **kwargs)  # not a finished run
    assert not (tmp_path / "out").exists()
