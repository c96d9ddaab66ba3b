"""The jitted computations: training state, the train step, the forward and the eval step (the
loop that runs the eval step over a split is stlight_jax/evaluation/loop.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from stlight_jax import metrics
from stlight_jax.models import STLight, model_from_config
from stlight_jax.sharding import batch_sharded, replicated

State = dict[str, Any]  # {'params', 'batch_stats', 'opt_state', 'step'}
# What the eval step scores: the model and two baselines (repeat the last input frame; zeros).
PREDICTORS = ("model", "last_frame", "zeros")
# The training objective: element-mean MSE (the paper's) plus `l1_weight` times the element-mean
# absolute error (config.l1_weight, 0 by default). The L1 term pulls the empty background to
# exactly zero, where an MSE-trained model under uncertainty leaves a faint grey haze that
# MAE and SSIM pay for.


def training_loss(err: jax.Array, l1_weight: float = 0.0) -> jax.Array:
    """mean(err^2) + l1_weight * mean(|err|) over every element of `err` (prediction - target)."""
    loss = jnp.mean(jnp.square(err))
    return loss + l1_weight * jnp.mean(jnp.abs(err)) if l1_weight else loss


def create_train_state(
    config: ml_collections.ConfigDict, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, State]:
    """Builds the model (Hybrid init from `config.seed`) and the initial training state."""
    return split_model(model_from_config(config), tx)


def split_model(model: STLight, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, State]:
    """(graphdef, training state at step 0) of a built model."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }
    return graphdef, state


def apply_model(
    graphdef: nnx.GraphDef, params: Any, batch_stats: Any, inputs: jax.Array, train: bool
) -> tuple[jax.Array, Any]:
    """Runs the model; returns (predictions in float32, updated batch stats)."""
    # copy=True: fresh Variables at this trace level (inside grad), so BatchNorm may update them.
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    pred = model(inputs, use_running_average=not train)
    return pred.astype(jnp.float32), nnx.state(model, nnx.BatchStat)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    lr_fn: Callable[[Any], Any],
    l1_weight: float = 0.0,
) -> Callable[[State, dict], tuple[State, dict]]:
    """The pure step (state, batch) -> (new state, {'loss', 'lr', 'params_finite'}).

    The loss is `training_loss` (element-mean MSE, the paper's, when `l1_weight` is 0); 'loss'
    and 'lr' are those of the update just made (0-based step `state['step']`),
    'params_finite' says whether every updated parameter is finite.
    """

    def train_step(state: State, batch: dict) -> tuple[State, dict]:
        def loss_fn(params):
            pred, new_stats = apply_model(
                graphdef, params, state["batch_stats"], batch["inputs"], train=True
            )
            return training_loss(pred - batch["targets"], l1_weight), new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_params = optax.apply_updates(state["params"], updates)
        # The loss is that of the params *before* this update; an update can still overflow
        # them, and the checkpoint written after this step must not hold Inf/NaN weights.
        params_finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_params)])
        )
        new_state = {
            "params": new_params,
            "batch_stats": new_stats,
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, {"loss": loss, "lr": lr_fn(state["step"]), "params_finite": params_finite}

    return train_step


def create_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    lr_fn: Callable[[Any], Any],
    mesh: jax.sharding.Mesh,
    l1_weight: float = 0.0,
) -> Callable[[State, dict], tuple[State, dict]]:
    """`make_train_step` jitted over `mesh`: the state replicated and donated, the global batch
    (`sharding.global_batch`) sharded over 'data'."""
    return jax.jit(
        make_train_step(graphdef, tx, lr_fn, l1_weight),
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )


def create_forward(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh) -> Callable:
    """Jitted (params, batch_stats, inputs) -> float32 predictions, batch sharded over 'data',
    output replicated (every process gets the whole batch)."""

    def forward(params, batch_stats, inputs):
        return apply_model(graphdef, params, batch_stats, inputs, train=False)[0]

    return jax.jit(
        forward,
        in_shardings=(replicated(mesh), replicated(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
    )


def create_eval_step(
    graphdef: nnx.GraphDef,
    mesh: jax.sharding.Mesh,
    ssim_data_range: float = metrics.OPENSTL_SSIM_DATA_RANGE,
) -> Callable:
    """Jitted (params, batch_stats, batch, accumulators) -> accumulators, for each predictor
    named in the accumulators (`PREDICTORS`)."""

    def eval_step(params, batch_stats, batch, accs):
        pred, _ = apply_model(graphdef, params, batch_stats, batch["inputs"], train=False)
        frames_out = batch["targets"].shape[1]
        last = jnp.repeat(batch["inputs"][:, -1:], frames_out, axis=1).astype(jnp.float32)
        preds = {"model": pred, "zeros": jnp.zeros_like(pred), "last_frame": last}
        return {
            name: metrics.accumulate(
                accs[name], preds[name], batch["targets"], batch["mask"], ssim_data_range
            )
            for name in accs
        }

    return jax.jit(
        eval_step,
        in_shardings=(replicated(mesh), replicated(mesh), batch_sharded(mesh), replicated(mesh)),
        out_shardings=replicated(mesh),
    )
