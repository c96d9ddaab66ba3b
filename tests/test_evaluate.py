"""evaluate.py and stlight_jax.evaluation.runner on a tiny trained workdir: files, metrics,
rollout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stlight_jax import metrics, writers
from stlight_jax.config import files as config_io
from stlight_jax.configs.mmnist import get_config
from stlight_jax.evaluation import inputs, predict, visualize
from stlight_jax.evaluation import runner as evaluation
from stlight_jax.models import ModelConfig
from stlight_jax.steps import apply_model
from stlight_jax.weights import loading as weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES_IN, FRAMES_OUT, SIZE = 10, 5, 32  # frames_in != frames_out exercises the rollout window
NUM_TEST = 12  # eval batches of 8: the second one is padded


def _strict_load(path: str) -> dict:
    def reject(token: str):
        raise ValueError(f"{path} is not strict JSON: {token}")

    with open(path) as f:
        return json.load(f, parse_constant=reject)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    from stlight_jax.training.loop import train_and_evaluate

    root = tmp_path_factory.mktemp("eval")
    c = get_config("cpu")
    c.model.update(dim=16, depth=3, patch=4, frames_in=FRAMES_IN, frames_out=FRAMES_OUT)
    c.model.image_size = (SIZE, SIZE)
    c.num_epochs = 1
    c.data.update(num_train=32, num_val=16, num_test=NUM_TEST, eval_batch_size=8)
    c.data.data_dir = str(root / "data")
    path = str(root / "run")
    train_and_evaluate(c, path)
    return path


@pytest.fixture(scope="module")
def loaded(workdir) -> weights.LoadedModel:
    return weights.load_model(config_io.load_workdir_config(workdir), workdir=workdir)


def _run(**options) -> dict:
    return evaluation.run(evaluation.EvalOptions(**options))


def _forward(loaded: weights.LoadedModel, x: np.ndarray) -> np.ndarray:
    """One plain forward pass, independent of evaluation's batching and padding."""
    pred, _ = apply_model(loaded.graphdef, loaded.params, loaded.batch_stats, x, train=False)
    return np.asarray(pred)


@pytest.mark.slow  # an evaluate.py run: ~20 s on 2 cores
def test_cli_eval_writes_every_file(workdir, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "evaluate.py"),
            f"--workdir={workdir}",
            f"--out={out}",
            "--num_samples=2",
            "--save_arrays",
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "last_frame" in proc.stdout and "model" in proc.stdout  # the printed table
    names = {
        "metrics.json", "metrics_vs_lead_time.png", "inputs.npy", "targets.npy",
        "predictions.npy", "sample_000.png", "sample_000.gif", "sample_001.png", "sample_001.gif",
    }  # fmt: skip
    assert names == set(os.listdir(out))

    m = _strict_load(out / "metrics.json")
    trained = _strict_load(os.path.join(workdir, "test_metrics.json"))
    # Same checkpoint (the best), same split and metric code: the numbers training reported.
    assert m["checkpoint"]["step"] == trained["checkpoint_step"]
    assert m["config_name"] == "mmnist_cpu" and m["split"] == "test"
    assert m["data_source"] == trained["data_source"] and "Moving MNIST" in m["data_source"]
    assert m["num_samples"] == NUM_TEST and m["ssim_data_range"] == 2.0
    assert set(m["metrics"]) == {"model", "last_frame", "zeros"}
    for name, r in m["metrics"].items():
        assert r["psnr_exact_frames"] == trained[name]["psnr_exact_frames"]
        for k in ("mse", "mae", "ssim", "psnr"):
            assert len(r["per_frame"][k]) == FRAMES_OUT
            if r[k] == "inf":  # strict JSON for an exactly repeated frame's PSNR
                assert trained[name][k] == "inf" and r["psnr_exact_frames"] > 0
                continue
            assert r[k] == pytest.approx(trained[name][k], rel=1e-12)
            assert np.mean(r["per_frame"][k]) == pytest.approx(r[k], rel=1e-9)

    x, y, p = (np.load(out / f"{n}.npy") for n in ("inputs", "targets", "predictions"))
    assert x.shape == (NUM_TEST, FRAMES_IN, SIZE, SIZE, 1)
    assert y.shape == p.shape == (NUM_TEST, FRAMES_OUT, SIZE, SIZE, 1)
    # The dumped arrays are the scored ones (padding rows excluded) and in split order.
    again = metrics.compute(p, y)
    assert again["mse"] == pytest.approx(m["metrics"]["model"]["mse"], rel=1e-5)
    assert again["ssim"] == pytest.approx(m["metrics"]["model"]["ssim"], rel=1e-5)
    last = np.repeat(x[:, -1:], FRAMES_OUT, axis=1)
    assert metrics.compute(last, y)["mse"] == pytest.approx(
        m["metrics"]["last_frame"]["mse"], rel=1e-5
    )

    scale = visualize.auto_scale((SIZE, SIZE))
    assert scale == 2
    with Image.open(out / "sample_001.png") as img:
        assert img.size == visualize.strip_size(FRAMES_IN, 4, (SIZE, SIZE), 1, scale)
        strip = np.asarray(img.convert("RGB"))
    cell = SIZE * scale
    for row, frames in ((0, x[1]), (1, y[1]), (2, p[1])):  # input, truth, prediction rows
        for col in (0, FRAMES_OUT - 1):
            cx, cy = visualize.cell_origin(row, col, (SIZE, SIZE), 1, scale)
            got = strip[cy : cy + cell, cx : cx + cell, 0]
            want = np.rint(np.clip(frames[col, ..., 0], 0, 1) * 255).astype(np.uint8)
            np.testing.assert_array_equal(got, np.kron(want, np.ones((scale, scale), np.uint8)))
    with Image.open(out / "sample_000.gif") as gif:
        assert gif.n_frames == FRAMES_IN + FRAMES_OUT
        gif_scale = visualize.auto_scale((SIZE, SIZE), visualize.GIF_MIN_CELL)
        assert gif.size == visualize.gif_size(2, (SIZE, SIZE), 1, gif_scale) == (2 * 130 + 2, 144)
    with Image.open(out / "metrics_vs_lead_time.png") as img:
        assert img.size[0] > 300 and img.size[1] > 200


def test_predict_npy_without_targets_and_rollout(loaded, workdir, tmp_path):
    rng = np.random.default_rng(0)
    # (N, T, H, W) uint8: the 1-channel form, scaled by 1/255. 10 sequences in batches of
    # eval_batch_size=8: the second batch is zero-padded.
    frames = rng.integers(0, 256, (10, FRAMES_IN, SIZE, SIZE), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    out = tmp_path / "pred"
    res = _run(
        workdir=workdir,
        mode="predict",
        input_path=str(tmp_path / "frames.npy"),
        horizon=2 * FRAMES_OUT,
        out=str(out),
        num_samples=1,
    )
    pred = np.load(out / "predictions.npy")
    assert pred.shape == (10, 2 * FRAMES_OUT, SIZE, SIZE, 1)
    meta = _strict_load(out / "predictions.json")
    assert meta["autoregressive"] is True and meta["forward_passes"] == 2
    assert meta["horizon"] == 2 * FRAMES_OUT and "autoregressive" in meta["rollout"]
    assert "uint8" in meta["scaled_from_uint8"] and meta == json.loads(json.dumps(res))

    x = frames[..., None].astype(np.float32) / 255.0
    first = _forward(loaded, x)
    np.testing.assert_allclose(pred[:, :FRAMES_OUT], first, rtol=1e-5, atol=1e-6)
    # The second pass sees the last frames_in frames of inputs + first predictions.
    window = np.concatenate([x, first], axis=1)[:, -FRAMES_IN:]
    np.testing.assert_allclose(pred[:, FRAMES_OUT:], _forward(loaded, window), atol=1e-5)

    scale = visualize.auto_scale((SIZE, SIZE))
    with Image.open(out / "sequence_000.png") as img:
        assert img.size == visualize.strip_size(2 * FRAMES_OUT, 2, (SIZE, SIZE), 1, scale)
    with Image.open(out / "sequence_000.gif") as gif:
        assert gif.n_frames == FRAMES_IN + 2 * FRAMES_OUT
        assert gif.size == visualize.gif_size(1, (SIZE, SIZE), 1, 4)
    assert not os.path.exists(out / "sequence_001.png")  # num_samples=1


def test_predict_image_folder_matches_npy(loaded, tmp_path):
    rng = np.random.default_rng(1)
    seq = rng.integers(0, 256, (FRAMES_IN, SIZE, SIZE), dtype=np.uint8)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(FRAMES_IN):
        # Names sort by frame order only as strings: 'f02' < 'f10'.
        Image.fromarray(seq[t]).save(folder / f"f{t + 1:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    res = predict.predict(loaded, str(folder), str(tmp_path / "out"), horizon=3, num_samples=1)
    pred = np.load(tmp_path / "out" / "predictions.npy")
    assert pred.shape == (1, 3, SIZE, SIZE, 1)
    assert res["autoregressive"] is False and res["forward_passes"] == 1
    assert len(res["input_files"]) == FRAMES_IN
    want = _forward(loaded, seq[None, ..., None].astype(np.float32) / 255.0)[:, :3]
    np.testing.assert_allclose(pred, want, rtol=1e-5, atol=1e-6)


def test_rollout_window_with_more_inputs_than_outputs():
    # A fake model that outputs (last input frame + 1, + 2): the rollout must keep counting.
    def predict_fn(x):
        assert x.shape[1] == 3
        return x[:, -1:] + np.arange(1, 3, dtype=np.float32).reshape(1, 2, 1, 1, 1)

    x = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1, 1)
    pred, passes = predict.rollout(predict_fn, x, horizon=7, frames_in=3, frames_out=2)
    np.testing.assert_array_equal(pred.ravel(), np.arange(3, 10))
    assert passes == 4
    pred, passes = predict.rollout(predict_fn, x, horizon=1, frames_in=3, frames_out=2)
    assert pred.shape[1] == 1 and passes == 1
    with pytest.raises(ValueError, match="horizon"):
        predict.rollout(predict_fn, x, horizon=0, frames_in=3, frames_out=2)


CFG = ModelConfig(frames_in=10, frames_out=10, channels=1, image_size=(64, 64), dim=16, patch=4)
EXPECTED = "(N, 10, 64, 64, 1) or (10, 64, 64, 1) or (N, 10, 64, 64)"


@pytest.mark.parametrize(
    "shape, what",
    [
        ((2, 9, 64, 64, 1), "9 frames"),
        ((9, 64, 64, 1), "9 frames"),
        ((2, 11, 64, 64), "11 frames"),
        ((2, 10, 32, 64, 1), "32 height"),
        ((10, 64, 48, 1), "48 width"),
        ((2, 10, 64, 64, 3), "3 channels"),
        ((10, 64, 64, 2), "2 channels"),
        ((64, 64), "rank 2"),
    ],
)
def test_wrong_input_shape_names_the_expected_shape(shape, what):
    with pytest.raises(ValueError) as e:
        inputs.prepare_input(np.zeros(shape, np.float32), CFG)
    assert what in str(e.value) and EXPECTED in str(e.value)


def test_input_forms_scaling_and_range():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (10, 64, 64, 1), dtype=np.uint8)
    x, notes = inputs.prepare_input(u8, CFG)
    assert x.shape == (1, 10, 64, 64, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], u8 / 255.0, atol=1e-7)
    assert "scaled_from_uint8" in notes
    x2, notes2 = inputs.prepare_input(u8[None, ..., 0] / 255.0, CFG)  # (N, T, H, W) float
    np.testing.assert_allclose(x2, x, atol=1e-7)
    assert "scaled_from_uint8" not in notes2
    rgb = ModelConfig(channels=3, image_size=(64, 64), dim=16, patch=4)
    with pytest.raises(ValueError, match=r"\(N, 10, 64, 64, 3\) or \(10, 64, 64, 3\)$"):
        inputs.prepare_input(np.zeros((10, 64, 64, 1), np.float32), rgb)
    with pytest.raises(ValueError, match=r"on \[0, 1\].*\[0, 255\]"):
        inputs.prepare_input(u8.astype(np.float32), CFG)
    with pytest.raises(ValueError, match="NaN"):
        inputs.prepare_input(np.full((10, 64, 64, 1), np.nan, np.float32), CFG)
    with pytest.raises(ValueError, match="dtype int64"):
        inputs.prepare_input(u8.astype(np.int64), CFG)


def test_cli_rejects_bad_input_with_expected_shape(workdir, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, FRAMES_IN, SIZE + 4, SIZE, 1), np.float32))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "evaluate.py"),
            f"--workdir={workdir}",
            "--mode=predict",
            f"--input={tmp_path / 'bad.npy'}",
            f"--out={tmp_path / 'o'}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert proc.returncode == 2  # a user error: one line, exit status 2
    assert f"expected shape (N, {FRAMES_IN}, {SIZE}, {SIZE}, 1)" in proc.stderr
    assert not os.path.exists(tmp_path / "o" / "predictions.npy")


def test_weights_step_and_ssim_range(loaded, workdir, tmp_path):
    from flax import nnx

    from stlight_jax.weights import torch_files as convert

    # Export the trained weights as a PyTorch file and score them through the converter.
    model = nnx.merge(loaded.graphdef, loaded.params, loaded.batch_stats)
    weights_file = str(tmp_path / "w.pt")
    convert.save_state_dict_file(convert.model_state_dict(model), weights_file)
    step = loaded.source["step"]
    via_orbax = _run(
        workdir=workdir, step=str(step), out=str(tmp_path / "a"), num_samples=0,
        save_arrays=True, ssim_data_range=1.0,
    )  # fmt: skip
    via_torch = _run(
        config=loaded.config, weights=weights_file, out=str(tmp_path / "b"), num_samples=0
    )
    assert via_torch["checkpoint"]["kind"] == "pytorch_weights"
    assert via_orbax["checkpoint"]["step"] == step and via_orbax["ssim_data_range"] == 1.0
    mo, mt = via_orbax["metrics"]["model"], via_torch["metrics"]["model"]
    assert mt["mse"] == pytest.approx(mo["mse"], rel=1e-6)
    # data_range 1.0 (textbook) reads lower than the paper's 2.0 and is what was asked for.
    assert mo["ssim"] < mt["ssim"]
    p, y = (np.load(tmp_path / "a" / f"{n}.npy") for n in ("predictions", "targets"))
    assert metrics.compute(p, y, ssim_data_range=1.0)["ssim"] == pytest.approx(mo["ssim"], rel=1e-5)
    assert sorted(os.listdir(tmp_path / "b")) == ["metrics.json", "metrics_vs_lead_time.png"]
    with pytest.raises(ValueError, match=f"no step {step + 1000}"):
        _run(workdir=workdir, step=step + 1000, out=str(tmp_path / "c"))


def test_option_errors(tmp_path):
    with pytest.raises(ValueError, match="--input"):
        _run(workdir=str(tmp_path), mode="predict")
    with pytest.raises(ValueError, match="--horizon is for --mode=predict"):
        _run(workdir=str(tmp_path), horizon=20)
    with pytest.raises(ValueError, match="--out is required"):
        _run(config=get_config("cpu"), weights="w.pt")
    with pytest.raises(FileNotFoundError, match="config.json"):
        _run(workdir=str(tmp_path))
    with pytest.raises(ValueError, match="step"):
        weights.parse_step("last")


def test_metrics_json_is_strict_with_infinite_psnr(tmp_path):
    path = str(tmp_path / "m.json")
    writers.write_json(path, {"psnr": float("inf"), "per_frame": [np.float32(1.5), np.inf]})
    assert _strict_load(path) == {"psnr": "inf", "per_frame": [1.5, "inf"]}


def test_saved_config_has_one_reader(workdir, tmp_path):
    saved = config_io.load_workdir_config(workdir)  # through config_io.load_config
    assert saved.name == "mmnist_cpu" and saved.model.frames_out == FRAMES_OUT
    path = os.path.join(workdir, "config.json")
    assert config_io.load_config(path).to_dict() == saved.to_dict()
    assert config_io.load_config(workdir).to_dict() == saved.to_dict()  # a workdir: its json
    with pytest.raises(FileNotFoundError, match="config file .*config.json.* does not exist"):
        config_io.load_config(str(tmp_path / "config.json"))
    with pytest.raises(FileNotFoundError, match="Otherwise pass --config"):
        config_io.load_workdir_config(str(tmp_path))
