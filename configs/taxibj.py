"""TaxiBJ 4 -> 4 frames (2 flow channels, 32x32), the paper's Table 2 settings; sizes S, M, L.

    python train.py --config=configs/taxibj.py:L --workdir=runs/taxibj_l \
        --config.data.path=/path/to/taxibj/dataset.npz

Sizes (docs/conventions.md §6): S dim 256 depth 12, M dim 256 depth 20, L dim 512 depth 10;
patch 1, k1 3, k2 7, dilation 3. Training follows Table 2: Adam, lr 3e-3, cosine schedule
stepped per epoch (timm CosineLRScheduler, lr_min 1e-6), batch 16, 50 epochs. As in OpenSTL
the validation split is the test split (`num_val=0`): the paper's numbers were selected that
way; set `--config.data.num_val=1000` to hold out training samples instead. Sized for one GPU
(a few minutes per epoch on an H100-class card). Expected test metrics for L after 50 epochs
(paper): MSE x 100 = 30.87, MAE 15.00, SSIM 0.9853 (on OpenSTL's [0,1] scale).
"""

from __future__ import annotations

from stlight_jax.configs.common import get_base_config, model_fields
from stlight_jax.model_size import PAPER_SIZES

SIZES = ("S", "M", "L")


def get_config(arg: str | None = None):
    size = arg or "L"
    if size not in SIZES:
        raise ValueError(f"configs/taxibj.py: unknown size {size!r}; choose one of {SIZES}")
    config = get_base_config()
    config.name = f"taxibj_{size}"
    config.model.update(model_fields(PAPER_SIZES[f"taxibj_{size}"][0]))
    config.data.name = "taxibj"
    config.data.path = "data/taxibj/dataset.npz"
    config.data.num_val = 0
    config.data.batch_size = 16
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.min_lr = 1e-6
    config.optimizer.warmup_epochs = 0
    config.num_epochs = 50
    return config
