"""KTH 10 -> 40 frames (windows of 50 frames), the paper's longer-horizon KTH task (section 4.3).

    python train.py --config=configs/kth40.py:L --workdir=runs/kth40_l \
        --config.data.path=/path/to/kth  # the OpenSTL frame-folder layout

Everything but the horizon is `configs/kth.py`: the same approximate sizes S / M / L / XL
(dims 264 / 548 / 736 / 920, depth 16, patch 2), the same person split (1-16 train, 17-25
test), and Table 2's KTH training (Adam, lr 5e-4, OneCycle, batch 12, 100 epochs). Windows are
found by the same backward scan, with 50 frames instead of 30, so there are fewer of them.
Sized for one GPU. Nothing here has been trained to 100 epochs yet.
"""

from __future__ import annotations

from stlight_jax.configs import kth


def get_config(arg: str | None = None):
    size = arg or "L"
    if size not in kth.DIMS:
        raise ValueError(
            f"configs/kth40.py: unknown size {size!r}; choose one of {tuple(kth.DIMS)}"
        )
    config = kth.get_config(size)
    config.name = config.name.replace("kth_", "kth40_")
    config.model.frames_out = 40
    return config
