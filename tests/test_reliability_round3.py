"""Reliability round 3 (issue 22): degenerate data files, predict mode's long horizons,
evaluate.py's whole output sets; each as the README's "Reliability" table says."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stlight_jax import train
from tests import tiny_config
from tests.test_reliability import _half_state_dict, _run, assert_one_line_error


@pytest.fixture
def config(tmp_path):
    return tiny_config.get_config(tiny_config.write_data(str(tmp_path / "data.npz")))


@pytest.fixture
def weights(config, tmp_path) -> str:
    from safetensors.numpy import save_file

    path = str(tmp_path / "w.safetensors")
    save_file(_half_state_dict(config, np.float32), path)
    return path


# ---------------------------------------------------------------------------------------------
# Degenerate data.


def test_degenerate_data_is_one_line_before_training_in_train_and_predict(
    config, weights, tmp_path
):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    workdir = tmp_path / "run"
    proc = _run(["train.py"], f"--config=tests/tiny_config.py:{empty}", f"--workdir={workdir}")
    assert_one_line_error(proc, "train.py", f"{empty}: config.data.path is an empty file")
    assert not os.path.exists(workdir / "checkpoints")
    np.save(tmp_path / "complex.npy", np.full((1, 4, 16, 16, 1), 0.5 + 0j, np.complex64))
    predict = ["--mode=predict", f"--config=tests/tiny_config.py:{config.data.path}"]
    for name, needle in (
        ("empty.npy", f"{empty}: --input is an empty file (0 bytes)"),
        ("complex.npy", "complex.npy: input dtype complex64 is not supported"),
    ):
        proc = _run(
            ["evaluate.py"],
            *predict,
            f"--weights={weights}",
            f"--input={tmp_path / name}",
            f"--out={tmp_path / 'pred'}",
        )
        assert_one_line_error(proc, "evaluate.py", needle)
    assert not os.path.exists(tmp_path / "pred" / "predictions.npy")


def test_lone_npy_trains_and_scores_its_held_out_test_set(config, tmp_path):
    """configs/custom.py's usage, a lone .npy, ends with test metrics (its last num_val
    samples), instead of failing "no test samples" after every epoch."""
    with np.load(config.data.path) as z:
        lone = np.concatenate([z["train"], z["val"], z["test"]])  # 48 samples
    config.data.path = str(tmp_path / "lone.npy")
    np.save(config.data.path, lone)
    config.num_epochs = 1  # 48 - 8 test - 8 val = 32 training samples: 4 steps
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["model"]["num_samples"] == 8, result
