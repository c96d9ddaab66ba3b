"""The base ConfigDict every dataset config starts from.

Every field, its default (Moving MNIST / STLight-S, the paper's Table 2), its allowed values and
what it means are declared once, in `stlight_jax/config/schema.py`, one line each:

    config.model      network sizes (Figure 10): frames_in T=10, frames_out T'=10, channels
                      C=1, image_size (64, 64), dim d=1000, depth de=16, patch p=2, overlap
                      O=0, k1=3, k2=7, dilation=3; conv_impl; the ablations init, decoder, skip
    config.data       dataset, paths and the input pipeline; batch_size 16
    config.optimizer  Adam, peak lr 3e-3, OneCycle (pct_start 0.3, div 25, final_div 1e4,
                      beta1 cycled 0.95 -> 0.85 -> 0.95); or cosine with warm-up
    config.*          name, seed, num_epochs 200, l1_weight 0, compute_dtype float32, the
                      evaluation / logging / checkpoint cadence, init_from

Dataset configs (`mmnist.py`, `taxibj.py`, ...) call `get_base_config()` and override a few
fields, so every run's resolved config has the same fields and a misspelled override fails.
"""

from __future__ import annotations

import ml_collections

from stlight_jax.config import schema


def get_base_config() -> ml_collections.ConfigDict:
    """Returns every field of the schema at its default (Moving MNIST / STLight-S)."""
    return ml_collections.ConfigDict(schema.defaults())


def model_fields(sizes: dict, **overrides) -> dict:
    """`config.model` fields from a `stlight_jax.model_size.PAPER_SIZES` entry (+ overrides)."""
    return {**sizes, **overrides}
