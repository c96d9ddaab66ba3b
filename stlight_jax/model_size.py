"""Model size report: exact parameter count and FLOPs per sample, fvcore-style and true MACs.

The paper's FLOP column comes from fvcore (docs/conventions.md §6): a multiply-add counts 1,
eval-mode BatchNorm 2 per element, GELU/add/pixel shuffle 0, and the two padding='same'
depthwise convs 0 because fvcore has no handler for `aten::_convolution_mode`. `true_macs`
counts every convolution and matmul multiply-accumulate, including the depthwise convs, and
nothing elementwise.
"""

from __future__ import annotations

import dataclasses

from stlight_jax.models import ModelConfig
from stlight_jax.weights.param_table import count_trainable


@dataclasses.dataclass(frozen=True)
class ModelSize:
    params: int  # trainable: conv weights and biases, BatchNorm scale and bias
    fvcore_flops: int  # the paper's convention, per sample
    true_macs: int  # all conv/matmul multiply-accumulates, per sample

    def summary(self) -> str:
        return (
            f"{self.params / 1e6:.2f}M params, {self.fvcore_flops / 1e9:.2f} GFLOPs "
            f"(fvcore convention, as in the paper), {self.true_macs / 1e9:.2f} GMACs (all convs)"
        )


def model_size(cfg: ModelConfig) -> ModelSize:
    """Parameters from the layout table, FLOPs analytically; tests check both against the
    built models."""
    cfg.validate()
    d, p, kp = cfg.dim, cfg.patch, cfg.encoder_kernel
    h, w = cfg.image_size
    latent = (h // p) * (w // p)
    t_in, t_out = cfg.frames_in * cfg.channels, cfg.frames_out * cfg.channels
    d_up = d // (p * p)

    encoder_macs = latent * d * t_in * kp * kp
    pointwise_macs = latent * d * d
    depthwise_macs = latent * d * (cfg.k1**2 + cfg.k2**2)
    if cfg.decoder == "reassemble_shuffle":  # 1x1 conv d -> T'*C*p^2 on the latent grid
        reassemble_macs = latent * d * t_out * p * p
    else:
        reassemble_macs = h * w * d_up * t_out
    bn_flops = 2 * latent * d

    fvcore = encoder_macs + bn_flops + cfg.depth * (pointwise_macs + 2 * bn_flops)
    fvcore += reassemble_macs
    true = encoder_macs + cfg.depth * (pointwise_macs + depthwise_macs) + reassemble_macs
    return ModelSize(params=count_trainable(cfg), fvcore_flops=fvcore, true_macs=true)


def count_params(model) -> int:
    """Trainable parameters of a built NNX model (BatchNorm running statistics excluded)."""
    import jax
    from flax import nnx

    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# The paper's Table 3 sizes (docs/conventions.md §6): name -> (model fields, paper params,
# paper GFLOPs). Configs build their models from here so the table lives in one place.
# mmnist_XL is Table 4's "42M" column, which has no FLOPs and no dim in the paper. Table 4's
# headers truncate (L's 32.9M is its "32M", 11.1M / 17.1M / 24.3M are "11M / 17M / 24M"), so
# "42M" is [42.0M, 43.0M): dims 1588-1604 at depth 16, patch 2 (dim % 4 == 0). 1600 is the one
# that also continues the other sizes' even 200 steps (800 / 1000 / 1200 / 1400): 42,696,810 params.
_MMNIST = dict(frames_in=10, frames_out=10, channels=1, image_size=(64, 64), depth=16, patch=2)
_TAXIBJ = dict(frames_in=4, frames_out=4, channels=2, image_size=(32, 32), patch=1)
PAPER_SIZES: dict[str, tuple[dict, float, float | None]] = {
    "mmnist_XS": ({**_MMNIST, "dim": 800}, 11.1e6, 10.6e9),
    "mmnist_S": ({**_MMNIST, "dim": 1000}, 17.1e6, 16.5e9),
    "mmnist_M": ({**_MMNIST, "dim": 1200}, 24.3e6, 23.7e9),
    "mmnist_L": ({**_MMNIST, "dim": 1400}, 32.9e6, 32.3e9),
    "mmnist_XL": ({**_MMNIST, "dim": 1600}, 42e6, None),  # Table 4 only: no FLOPs given
    "taxibj_S": ({**_TAXIBJ, "dim": 256, "depth": 12}, 0.99e6, 0.82e9),
    "taxibj_M": ({**_TAXIBJ, "dim": 256, "depth": 20}, 1.65e6, 1.37e9),
    "taxibj_L": ({**_TAXIBJ, "dim": 512, "depth": 10}, 2.96e6, 2.71e9),
}
