"""The one eval loop: OpenSTL's metrics of the model and the baselines over a split. Training's
validation and test passes, evaluate.py and benchmarks/eval_throughput.py all run it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections

from stlight_jax import data, metrics
from stlight_jax.sharding import global_batch, replicate
from stlight_jax.steps import PREDICTORS

# Called with (process-local numpy batch, global batch) after the eval step has seen it.
BatchHook = Callable[[dict, dict], None]


def evaluate_batches(
    eval_step: Callable,
    params: Any,
    batch_stats: Any,
    batches: Iterable[dict],
    mesh: jax.sharding.Mesh,
    frames_out: int,
    predictors: tuple[str, ...] = PREDICTORS,
    on_batch: BatchHook | None = None,
) -> dict[str, dict]:
    """The eval loop: OpenSTL metrics of each predictor over `batches` (process-local batches
    with a 'mask' of real rows), {'model': {...}, ...}; `on_batch` sees every batch."""
    accs = replicate({n: metrics.init_accumulator(frames_out) for n in predictors}, mesh)
    for batch in batches:
        gbatch = global_batch(batch, mesh)
        accs = eval_step(params, batch_stats, gbatch, accs)
        if on_batch is not None:
            on_batch(batch, gbatch)
    return {n: metrics.finalize(jax.device_get(accs[n])) for n in predictors}


def evaluate_split(
    config: ml_collections.ConfigDict,
    eval_step: Callable,
    params: Any,
    batch_stats: Any,
    mesh: jax.sharding.Mesh,
    split: str,
    predictors: tuple[str, ...] = PREDICTORS,
    on_batch: BatchHook | None = None,
) -> dict[str, dict]:
    """`evaluate_batches` over this process's share of `split` ('val' or 'test')."""
    batches = data.create_eval_iterator(
        config, split=split, process_index=jax.process_index(), process_count=jax.process_count()
    )
    frames_out = config.model.frames_out
    return evaluate_batches(
        eval_step, params, batch_stats, batches, mesh, frames_out, predictors, on_batch
    )
