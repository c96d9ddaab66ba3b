"""Datasets (Moving MNIST, TaxiBJ, KTH, KITTI -> Caltech, custom) behind one Grain pipeline."""

from stlight_jax.data.pipeline import (
    create_eval_iterator,
    create_train_iterator,
    describe_source,
    get_dataset,
    steps_per_epoch,
)

__all__ = [
    "create_eval_iterator",
    "create_train_iterator",
    "describe_source",
    "get_dataset",
    "steps_per_epoch",
]
