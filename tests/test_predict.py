"""Predict mode (evaluation/predict.py) with long horizons: predictions stream to disk pass by
pass (memory flat in the horizon), the pictures are capped, and a horizon the disk cannot hold
is refused before any work."""

from __future__ import annotations

import os

import numpy as np
import pytest


def test_predict_long_horizon_streams_to_disk_memory_flat_pictures_capped(
    config, weights, tmp_path
):
    import tracemalloc

    from PIL import Image

    from stlight_jax.evaluation import predict
    from stlight_jax.weights.loading import load_model

    loaded = load_model(config, weights=weights)
    with np.load(config.data.path) as z:
        np.save(tmp_path / "in.npy", z["test"][:4, :4])
    peaks = {}
    for horizon in (8, 808):
        out = tmp_path / f"h{horizon}"
        predict.predict(loaded, str(tmp_path / "in.npy"), str(out), horizon, num_samples=1)
        tracemalloc.start()
        result = predict.predict(loaded, str(tmp_path / "in.npy"), str(out), horizon, num_samples=1)
        peaks[horizon] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # 808 frames of 4 sequences are 3.3 MB of predictions; memory holds one pass of them.
    assert peaks[808] - peaks[8] < 1_000_000, peaks
    saved = np.load(out / "predictions.npy")
    assert saved.shape == (4, 808, 16, 16, 1) and result["files"]["pictures_frames"] == 100
    whole, passes = predict.rollout(
        predict.make_predict_fn(loaded), np.load(tmp_path / "in.npy"), 808, 4, 4
    )
    np.testing.assert_array_equal(saved, whole)
    assert passes == result["forward_passes"] == 202
    with Image.open(out / "sequence_000.gif") as gif:
        assert gif.n_frames == 4 + 100  # the inputs, then the first 100 predicted frames
    assert "the first 100 of the 808 predicted frames" in " ".join(result["notes"])
    # A horizon the disk cannot hold is refused before any work, in one line.
    with pytest.raises(ValueError, match=r"--horizon=10000000000: predictions.npy would take"):
        predict.predict(loaded, str(tmp_path / "in.npy"), str(tmp_path / "huge"), 10**10)
    assert not os.path.exists(tmp_path / "huge")
