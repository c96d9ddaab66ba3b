"""KTH 10 -> 20 frames (grey, 128x128), the paper's Table 2 training settings; sizes S-XL.

    python train.py --config=configs/kth.py:L --workdir=runs/kth_l \
        --config.data.path=/path/to/kth  # the OpenSTL frame-folder layout

The KTH model sizes are APPROXIMATE: the paper's table does not pin them down. Depth 16 and
patch 2 with dims 264 / 548 / 736 / 920 (S / M / L / XL) match its parameter counts
(docs/conventions.md §6). Training: Adam, lr 5e-4, OneCycle (final_div 1e4), batch 12,
100 epochs; persons 1-16 train, 17-25 test. Sized for one GPU. Paper, after 100 epochs (its
largest model): MAE 363.8, PSNR 27.57, SSIM 0.9113.
"""

from __future__ import annotations

from stlight_jax.configs.common import get_base_config

DIMS = {"S": 264, "M": 548, "L": 736, "XL": 920}


def get_config(arg: str | None = None):
    size = arg or "L"
    if size not in DIMS:
        raise ValueError(f"configs/kth.py: unknown size {size!r}; choose one of {tuple(DIMS)}")
    config = get_base_config()
    config.name = f"kth_{size}"
    config.model.update(
        dict(
            frames_in=10,
            frames_out=20,
            channels=1,
            image_size=(128, 128),
            dim=DIMS[size],
            depth=16,
            patch=2,
        )
    )
    config.data.name = "kth"
    config.data.path = "data/kth"
    config.data.num_val = 0
    config.data.batch_size = 12
    config.data.eval_batch_size = 12
    config.optimizer.learning_rate = 5e-4
    config.optimizer.schedule = "onecycle"
    config.optimizer.final_div_factor = 1e4
    config.num_epochs = 100
    return config
