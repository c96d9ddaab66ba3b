"""Your own videos: an .npy / .npz of shape (N, T, H, W, C) (or (N, T, C, H, W)) split into
input and target frames by the model fields.

    python train.py --config=configs/custom.py --workdir=runs/mine \
        --config.data.path=videos.npy --config.model.frames_in=10 \
        --config.model.frames_out=10 --config.model.image_size="(64, 64)" \
        --config.model.channels=1 --config.data.value_range="(0, 255)"

Each stored sequence needs at least frames_in + frames_out frames; the first frames_in are
the input and the next frames_out the target. `data.value_range` declares the stored range,
mapped to [0, 1]; values outside it are an error. An .npz may hold `train`, `val` and `test`
arrays; without a `test` array (a lone .npy) the last `num_val` sequences are held out as
the test set and, without a `val` array, the `num_val` before them as the validation set
(num_val=0, or too few sequences for both, is refused before training). The
model defaults to STLight-S-like sizes with OneCycle at lr 3e-3 for 100 epochs; adjust
`model.dim`/`model.depth` to your data. Expected results depend on the data.
"""

from __future__ import annotations

from stlight_jax.configs.common import get_base_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"configs/custom.py takes no argument, got {arg!r}; use --config.* flags")
    config = get_base_config()
    config.name = "custom"
    config.data.name = "custom"
    config.data.path = "data/videos.npy"
    config.data.num_val = 100
    config.model.dim = 512
    config.num_epochs = 100
    return config
