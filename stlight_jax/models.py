"""STLight (paper Figure 10) in Flax NNX: patch encoder, STLMixer stack, shuffle-reassemble decoder.

Layout is NHWC: inputs (B, T, H, W, C) -> outputs (B, T', H, W, C). The mixer blocks keep their
parameters stacked along a leading `depth` axis and run under one `lax.scan` (unrolled for
inference), so a depth-16 train step compiles one block body instead of sixteen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from stlight_jax import ops
from stlight_jax.config import schema


@dataclasses.dataclass(frozen=True)
class ModelConfig(schema.Model):
    """Every size of the network: the fields and defaults of `config.model` as
    config/schema.py declares them; `validate()` rejects combinations Figure 10 cannot build."""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any) -> ModelConfig:
        """Builds from `config.model` (a ConfigDict or mapping); unknown fields are an error."""
        values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model config has unknown field(s) {unknown}; known: {sorted(known)}")
        if "image_size" in values:
            values["image_size"] = tuple(int(s) for s in values["image_size"])
        model_config = cls(**values)
        model_config.validate()
        return model_config

    @property
    def encoder_kernel(self) -> int:
        return self.patch * max(1, self.overlap)

    @property
    def encoder_padding(self) -> int:
        return max(0, self.overlap - 1) * self.patch // 2

    def validate(self) -> None:
        """Raises ValueError naming the field and the numbers of the first invalid setting."""
        specs = {f.name: schema.spec_of(f) for f in dataclasses.fields(self)}
        for name, spec in specs.items():  # the schema's integer fields and their lower bounds
            if not isinstance(spec.rule, schema.Integer):
                continue
            value, lo = getattr(self, name), spec.rule.lo
            if not isinstance(value, int) or (lo is not None and value < lo):
                kinds = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}
                what = kinds.get(lo, f"an integer >= {lo}")
                raise ValueError(f"model.{name} must be {what}, got {value!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"model.image_size must be (H, W) > 0, got {self.image_size!r}")
        for name, spec in specs.items():  # the schema's choice fields
            if isinstance(spec.rule, schema.OneOf) and getattr(self, name) not in spec.rule.options:
                raise ValueError(
                    f"model.{name}={getattr(self, name)!r} is not one of {spec.rule.options}"
                )
        h, w = self.image_size
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"model.image_size {h}x{w} is not divisible by model.patch={p}")
        if self.decoder == "shuffle_reassemble" and self.dim % (p * p):
            raise ValueError(
                f"model.dim={self.dim} is not divisible by model.patch**2={p * p} "
                "(the pixel shuffle needs dim/patch^2 channels)"
            )
        if (max(0, self.overlap - 1) * p) % 2:
            k, pad = self.encoder_kernel, self.encoder_padding
            out = (h + 2 * pad - k) // p + 1
            raise ValueError(
                f"model.overlap={self.overlap} with model.patch={p} gives an encoder kernel {k}, "
                f"padding {pad} and a latent height {out} instead of {h // p}: "
                "(overlap-1)*patch must be even"
            )

    @property
    def skip_blocks(self) -> tuple[int, int]:
        """(keep before block, add before block) of the inter-block skip; (-1, -1) for none."""
        n = self.depth
        return {"thirds": (n // 3, 2 * n // 3), "fifths": (n // 5, 4 * n // 5)}.get(
            self.skip, (-1, -1)
        )

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Raises ValueError if an input of `shape` is not (B, frames_in, H, W, channels)."""
        if len(shape) != 5:
            raise ValueError(
                f"STLight input must be (B, T, H, W, C), got rank {len(shape)} shape {shape}"
            )
        _, t, h, w, c = shape
        expected = (self.frames_in, *self.image_size, self.channels)
        for name, got, want in zip(
            ("frames_in", "image height", "image width", "channels"),
            (t, h, w, c),
            expected,
            strict=True,
        ):
            if got != want:
                raise ValueError(
                    f"input shape {tuple(shape)} does not match the model config: {name} is "
                    f"{got}, model expects (B, {expected[0]}, {expected[1]}, {expected[2]}, "
                    f"{expected[3]})"
                )


# Allowed values of the ablation fields (config/schema.py says what each one means).
ABLATIONS = {"init": schema.INITS, "decoder": schema.DECODERS, "skip": schema.SKIPS}

# ---------------------------------------------------------------------------------------------
# Initialisers of the paper's appendix D.


def kaiming_normal_fan_out(key: jax.Array, shape: tuple[int, ...], fan_out: int) -> jax.Array:
    """torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2/fan_out)."""
    return jax.random.normal(key, shape, jnp.float32) * math.sqrt(2.0 / fan_out)


def torch_default_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """PyTorch's default Conv2d init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), ...)."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def init_conv(
    scheme: str,
    torch_default: bool,
    rngs: nnx.Rngs,
    kernel_shape: tuple[int, ...],
    bias_shape: tuple[int, ...],
    fan_in: int,
    fan_out: int,
) -> tuple[jax.Array, jax.Array]:
    """(kernel, bias) of one conv under init `scheme`; `torch_default` marks the conv that
    'hybrid' leaves at PyTorch's default. Keys are drawn in a fixed order (kernel, then bias
    only if random), so 'hybrid' draws exactly what it always drew for a given seed."""
    if scheme == "kaiming_uniform" or (scheme == "hybrid" and torch_default):
        kernel = torch_default_uniform(rngs.params(), kernel_shape, fan_in)
        return kernel, torch_default_uniform(rngs.params(), bias_shape, fan_in)
    kernel = kaiming_normal_fan_out(rngs.params(), kernel_shape, fan_out)
    return kernel, jnp.zeros(bias_shape, jnp.float32)


class BatchNorm(nnx.Module):
    """PyTorch BatchNorm2d semantics (see `ops.batch_norm`); optional leading stack axes.

    `count` mirrors PyTorch's num_batches_tracked so a state_dict survives import/export.
    """

    def __init__(self, features: int, stack: tuple[int, ...] = ()):
        self.scale = nnx.Param(jnp.ones((*stack, features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((*stack, features), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((*stack, features), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((*stack, features), jnp.float32))
        self.count = nnx.BatchStat(jnp.zeros(stack, jnp.int32))
        self.use_running_average = False

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        eval_mode = self.use_running_average if use_running_average is None else use_running_average
        y, mean, var = ops.batch_norm(
            x, self.scale[...], self.bias[...], self.mean[...], self.var[...], not eval_mode
        )
        if not eval_mode:
            self.mean[...] = mean
            self.var[...] = var
            self.count[...] = self.count[...] + 1
        return y


class PatchEncoder(nnx.Module):
    """Conv2d(T*C -> d, kernel p*max(1,O), stride p, symmetric padding) -> BatchNorm -> GELU."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        k, d = cfg.encoder_kernel, cfg.dim
        in_ch = cfg.frames_in * cfg.channels
        self.stride = cfg.patch
        self.padding = cfg.encoder_padding
        kernel, bias = init_conv(
            cfg.init, False, rngs, (k, k, in_ch, d), (d,), in_ch * k * k, d * k * k
        )
        self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)
        self.norm = BatchNorm(d)

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        pad = (self.padding, self.padding)
        y = lax.conv_general_dilated(
            x,
            self.kernel[...].astype(x.dtype),
            window_strides=(self.stride, self.stride),
            padding=(pad, pad),  # explicit: Flax 'SAME' pads a strided conv (0, 1)
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = y + self.bias[...].astype(x.dtype)
        return ops.gelu(self.norm(y, use_running_average))


class STLMixerBlock(nnx.Module):
    """One STLMixer block: x = x + BN(GELU(DW_k2,dil(DW_k1(x)))); x = BN(GELU(Conv1x1(x))).

    With `stack=(n,)` every parameter has a leading axis of n blocks (see `MixerStack`).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack: tuple[int, ...] = ()):
        d, k1, k2 = cfg.dim, cfg.k1, cfg.k2
        self.dilation = cfg.dilation
        self.conv_impl = cfg.conv_impl
        # Depthwise convs have fan_in k*k (one input channel per group) and fan_out d*k*k.
        dw1_kernel, dw1_bias = init_conv(
            cfg.init, False, rngs, (*stack, k1, k1, d), (*stack, d), k1 * k1, d * k1 * k1
        )
        self.dw1_kernel, self.dw1_bias = nnx.Param(dw1_kernel), nnx.Param(dw1_bias)
        dw2_kernel, dw2_bias = init_conv(
            cfg.init, False, rngs, (*stack, k2, k2, d), (*stack, d), k2 * k2, d * k2 * k2
        )
        self.dw2_kernel, self.dw2_bias = nnx.Param(dw2_kernel), nnx.Param(dw2_bias)
        self.norm1 = BatchNorm(d, stack=stack)
        pw_kernel, pw_bias = init_conv(cfg.init, False, rngs, (*stack, d, d), (*stack, d), d, d)
        self.pw_kernel, self.pw_bias = nnx.Param(pw_kernel), nnx.Param(pw_bias)
        self.norm2 = BatchNorm(d, stack=stack)
        self.use_running_average = False

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        eval_mode = self.use_running_average if use_running_average is None else use_running_average
        return self.block(x, eval_mode)

    def block(self, x: jax.Array, eval_mode: bool) -> jax.Array:
        """The block on unstacked parameters; BatchNorm updates its statistics unless eval_mode."""
        impl = ops.resolve_conv_impl(self.conv_impl)
        dtype = x.dtype
        h = ops.depthwise_conv(
            x, self.dw1_kernel[...].astype(dtype), self.dw1_bias[...].astype(dtype), 1, impl
        )
        h = checkpoint_name(h, "dw1_out")
        h = ops.depthwise_conv(
            h,
            self.dw2_kernel[...].astype(dtype),
            self.dw2_bias[...].astype(dtype),
            self.dilation,
            impl,
        )
        h = checkpoint_name(h, "dw2_out")
        x = checkpoint_name(x + self.norm1(ops.gelu(h), eval_mode), "pw_in")
        h = jnp.einsum("bhwc,cd->bhwd", x, self.pw_kernel[...].astype(dtype))
        h = checkpoint_name(h + self.pw_bias[...].astype(dtype), "pw_out")
        return self.norm2(ops.gelu(h), eval_mode)


# What the train step keeps of each block for its backward pass: the two depthwise outputs, the
# 1x1 conv's input and its pre-activation (plus the block input, which jax.checkpoint always
# keeps). GELU and BatchNorm outputs are recomputed from these in the backward fusions, so the
# scan stacks 5 activation-sized residuals per block instead of 8: 1 GB less XLA temp memory at
# MMNIST-S batch 4, no slower (benchmarks/README.md, "What it cost").
SAVED_FOR_BACKWARD = ("dw1_out", "dw2_out", "pw_in", "pw_out")


class MixerStack(STLMixerBlock):
    """`depth` STLMixer blocks, their parameters stacked on axis 0, and the inter-block skip.

    Skip ('thirds'): before block depth//3 keep x1 = x; before block 2*depth//3 add x1 to x
    ('fifths': depth//5 and 4*depth//5; 'none': no skip). A subclass so that the NNX paths
    (`mixer/dw1_kernel`, ...) stay those of one block.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs, stack=(cfg.depth,))
        self.depth = cfg.depth
        self.skip_blocks = cfg.skip_blocks

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        eval_mode = self.use_running_average if use_running_average is None else use_running_average
        train = not eval_mode
        keep_at, add_at = self.skip_blocks  # (-1, -1): no skip
        graphdef, params, stats = nnx.split(self, nnx.Param, nnx.BatchStat)

        def run_block(x, block_params, block_stats):
            block = nnx.merge(graphdef, block_params, block_stats)
            x = block.block(x, eval_mode)
            return x, (nnx.state(block, nnx.BatchStat) if train else None)

        if train:
            run_block = jax.checkpoint(
                run_block,
                policy=jax.checkpoint_policies.save_only_these_names(*SAVED_FOR_BACKWARD),
            )

        def body(carry, xs):
            x, x1 = carry
            i, block_params, block_stats = xs
            # The skip is a select inside the one scanned body rather than three scans.
            x1 = jnp.where(i == keep_at, x, x1)
            x = jnp.where(i == add_at, x + x1, x)
            x, new_stats = run_block(x, block_params, block_stats)
            return (x, x1), new_stats

        # Training scans one block body: compile time stays flat in depth (~4 s at depth 16 on
        # CPU, 16 s unrolled) and the step runs faster than unrolled. Inference has no
        # backward pass to compile and runs ~1.8x faster unrolled (MMNIST-S, batch 4, CPU).
        (x, _), new_stats = lax.scan(
            body,
            (x, jnp.zeros_like(x)),
            (jnp.arange(self.depth), params, stats),
            unroll=1 if train else self.depth,
        )
        if train:
            nnx.update(self, new_stats)
        return x


class PatchReassemble(nnx.Module):
    """Decoder: PyTorch-ordered PixelShuffle(p), then Conv2d(d/p^2 -> T'*C, kernel 1); or, with
    decoder='reassemble_shuffle' (appendix F), Conv2d(d -> T'*C*p^2, kernel 1) then the shuffle."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        p2 = cfg.patch**2
        self.shuffle_first = cfg.decoder == "shuffle_reassemble"
        d_in = cfg.dim // p2 if self.shuffle_first else cfg.dim
        d_out = cfg.frames_out * cfg.channels * (1 if self.shuffle_first else p2)
        self.patch = cfg.patch
        # The paper's Hybrid init keeps PyTorch's default init for this layer only.
        kernel, bias = init_conv(cfg.init, True, rngs, (d_in, d_out), (d_out,), d_in, d_out)
        self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.shuffle_first:
            x = ops.pixel_shuffle(x, self.patch)
        dtype = x.dtype
        x = jnp.einsum("bhwc,cd->bhwd", x, self.kernel[...].astype(dtype)) + self.bias[...].astype(
            dtype
        )
        return x if self.shuffle_first else ops.pixel_shuffle(x, self.patch)


class STLight(nnx.Module):
    """The STLight network. `model.train()` / `model.eval()` switch BatchNorm's mode.

    Call with x of shape (B, frames_in, H, W, channels); returns (B, frames_out, H, W, channels)
    in `dtype` (the compute dtype; parameters and BatchNorm statistics stay float32).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype: jnp.dtype | str = jnp.float32):
        cfg.validate()
        self.config = cfg
        self.dtype = jnp.dtype(dtype)
        self.patch_encoder = PatchEncoder(cfg, rngs=rngs)
        self.mixer = MixerStack(cfg, rngs=rngs)
        self.patch_reassemble = PatchReassemble(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        cfg = self.config
        cfg.check_input(x.shape)
        b, t, h, w, c = x.shape
        # Frames are the outer channel index (t*C + c), as PyTorch's reshape(B, T*C, H, W).
        x = x.astype(self.dtype).transpose(0, 2, 3, 1, 4).reshape(b, h, w, t * c)
        x = self.patch_encoder(x, use_running_average)
        x = self.mixer(x, use_running_average)
        x = self.patch_reassemble(x)
        x = x.reshape(b, h, w, cfg.frames_out, c).transpose(0, 3, 1, 2, 4)
        return x


def create_model(cfg: ModelConfig, seed: int = 0, dtype: str = "float32") -> STLight:
    """Builds an STLight initialised from `seed` as `cfg.init` says (default: Hybrid)."""
    return STLight(cfg, rngs=nnx.Rngs(params=seed), dtype=dtype)


def model_from_config(config: Any, *, seed: int | None = None, dtype: str | None = None) -> STLight:
    """The one way to build the network of a run config: `config.model` (validated) initialised
    from `seed` (default: `config.seed`), computing in `dtype` (default: `config.compute_dtype`)."""
    seed = config.get("seed", 0) if seed is None else seed
    dtype = config.get("compute_dtype", "float32") if dtype is None else dtype
    return create_model(ModelConfig.from_config(config.model), seed=int(seed), dtype=dtype)
