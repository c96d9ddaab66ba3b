"""KITTI -> Caltech 10 -> 1 frames (RGB, 128x160), the paper's Table 2 settings; six sizes.

    python train.py --config=configs/kitticaltech.py:1M --workdir=runs/kitticaltech_1m \
        --config.data.path=/path/to/data  # holds kitti_hkl/ + caltech/, or kitticaltech_npy/

`caltech/` holds OpenSTL's data_cache.npy + indices_cache.npy or Caltech's own set*/V*.seq
videos (decoded and prepared here, in RGB; see stlight_jax/data/kitticaltech.py).

Trains on KITTI windows (never crossing a recording) and tests on Caltech Pedestrian, the
paper's domain-generalisation experiment (section 4.4.1, Figure 4). Training follows Table 2:
Adam, lr 1e-2, OneCycle (final_div 3000, beta1 cycled), batch 8, 100 epochs. Validation is
KITTI's X_val.hkl when present, else the test split (num_val=0, as OpenSTL did).

The paper gives no architecture for its Figure 4 points, only their range (0.1M-15M
parameters), so these sizes are ours: patch 4 (a 32x40 latent), k1 3, k2 7, dilation 3, and
exact trainable-parameter counts (BatchNorm scale and bias included):

    size   dim  depth   parameters   fvcore GFLOPs
    0.1M    96      4      108,213        0.11
    0.5M   192      8      487,527        0.50
    1M     256     12    1,109,811        1.18
    3M     384     16    2,944,203        3.29
    6M     576     16    6,185,775        7.20
    15M    912     16   14,697,054       17.67

Sized for one GPU (the paper used an RTX A6000). The paper reports Figure 4 as a plot of
Caltech MSE against parameters, with no table of values, so there is no single number to
expect; nothing here has been trained to 100 epochs yet.
"""

from __future__ import annotations

from stlight_jax.configs.common import get_base_config

# name -> (dim, depth); the counts in the docstring are checked by tests/test_configs_and_cli.py.
SIZES = {
    "0.1M": (96, 4),
    "0.5M": (192, 8),
    "1M": (256, 12),
    "3M": (384, 16),
    "6M": (576, 16),
    "15M": (912, 16),
}
PARAMS = {
    "0.1M": 108_213,
    "0.5M": 487_527,
    "1M": 1_109_811,
    "3M": 2_944_203,
    "6M": 6_185_775,
    "15M": 14_697_054,
}


def get_config(arg: str | None = None):
    size = arg or "1M"
    if size not in SIZES:
        raise ValueError(
            f"configs/kitticaltech.py: unknown size {size!r}; choose one of {tuple(SIZES)}"
        )
    dim, depth = SIZES[size]
    config = get_base_config()
    config.name = f"kitticaltech_{size}"
    config.model.update(
        dict(
            frames_in=10,
            frames_out=1,
            channels=3,
            image_size=(128, 160),
            dim=dim,
            depth=depth,
            patch=4,
        )
    )
    config.data.name = "kitticaltech"
    config.data.path = "data/kitticaltech"
    config.data.num_val = 0
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.optimizer.learning_rate = 1e-2
    config.optimizer.schedule = "onecycle"
    config.optimizer.final_div_factor = 3000.0
    config.num_epochs = 100
    return config
