"""A tiny STLight config on small synthetic arrays, for the training tests (seconds on CPU).

    python train.py --config=tests/tiny_config.py:/tmp/x/data.npz --workdir=/tmp/x/run

The argument is the .npz to train on; `write_data(path)` creates it (32 train, 8 val and 8
test sequences of 8 frames of 16x16x1: a bright square moving one pixel a frame plus noise).
"""

from __future__ import annotations

import os

import numpy as np

from stlight_jax.configs.common import get_base_config


def write_data(path: str, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    parts = {}
    for name, n in (("train", 32), ("val", 8), ("test", 8)):
        x = 0.1 * rng.random((n, 8, 16, 16, 1), dtype=np.float32)
        for i in range(n):
            r, c = rng.integers(0, 8, size=2)
            dr, dc = rng.integers(-1, 2, size=2)
            for t in range(8):
                rr, cc = (r + dr * t) % 12, (c + dc * t) % 12
                x[i, t, rr : rr + 4, cc : cc + 4] = 1.0
        parts[name] = x
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **parts)
    return path


def get_config(arg: str | None = None):
    config = get_base_config()
    config.name = "tiny"
    config.model.frames_in = 4
    config.model.frames_out = 4
    config.model.image_size = (16, 16)
    config.model.dim = 16
    config.model.depth = 2
    config.model.patch = 4
    config.data.name = "custom"
    config.data.path = arg or ""
    config.data.data_dir = os.path.join(os.path.dirname(os.path.abspath(arg or ".")), "cache")
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.num_val = 8
    config.data.read_threads = 1
    config.data.prefetch_buffer_size = 1
    config.num_epochs = 2  # 4 steps an epoch
    config.log_every_steps = 1
    config.optimizer.learning_rate = 1e-2
    config.optimizer.final_div_factor = 100.0
    return config
