"""Deployable exports of a trained STLight's eval-mode forward, weights inside: a serialized
`jax.export.Exported` (StableHLO; runs where only jax is installed) and an ONNX model.

    python -m stlight_jax.export stablehlo --workdir=runs/cpu --out=stlight.stablehlo
    python -m stlight_jax.export onnx --config=configs/mmnist.py:S --weights=w.pth \
        --out=stlight.onnx [--batch=16]

Both take (N, frames_in, H, W, C) float32 frames on [0, 1] and return (N, frames_out, H, W, C);
N is symbolic (any batch) unless --batch fixes it. Running a StableHLO export:

    exported = jax.export.deserialize(open("stlight.stablehlo", "rb").read())
    predictions = exported.call(frames)

ONNX goes through the PyTorch reference network (torch.onnx, dynamo exporter) with the same
weights; the README's Exports section gives the measurements behind that choice. It needs
`pip install -r requirements-export.txt` and is checked against the JAX model after writing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PLATFORMS = ("cpu", "cuda", "tpu")
# Exports use the grouped-conv depthwise formulation: the standard op on every backend and in
# ONNX (the 'shifted' one is a CPU training speed-up computing the same function).
EXPORT_CONV_IMPL = "lax"


def eval_forward(loaded: Any) -> Callable:
    """frames (N, T, H, W, C) -> float32 predictions, with the weights as constants."""
    from stlight_jax.steps import apply_model

    graphdef, params, batch_stats = loaded.graphdef, loaded.params, loaded.batch_stats

    def forward(frames):
        return apply_model(graphdef, params, batch_stats, frames, train=False)[0]

    return forward


def input_spec(loaded: Any, batch: int | None) -> Any:
    """The input's ShapeDtypeStruct; a symbolic batch dimension unless `batch` is given."""
    import jax
    import jax.numpy as jnp

    cfg = loaded.model_config
    if batch is None:
        (n,) = jax.export.symbolic_shape("batch")
    else:
        if batch < 1:
            raise ValueError(f"--batch must be >= 1, got {batch}")
        n = batch
    h, w = cfg.image_size
    return jax.ShapeDtypeStruct((n, cfg.frames_in, h, w, cfg.channels), jnp.float32)


def export_stablehlo(
    loaded: Any, batch: int | None = None, platforms: Sequence[str] = PLATFORMS
) -> Any:
    """The `jax.export.Exported` of the eval-mode forward, lowered for every platform given."""
    import jax

    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
        raise ValueError(f"platforms {list(platforms)}: choose from {list(PLATFORMS)}")
    fn = jax.jit(eval_forward(loaded))
    return jax.export.export(fn, platforms=tuple(platforms))(input_spec(loaded, batch))


def write_stablehlo(loaded: Any, out: str, batch: int | None, platforms: Sequence[str]) -> str:
    exported = export_stablehlo(loaded, batch, platforms)
    with open(out, "wb") as f:
        f.write(exported.serialize())
    return (
        f"{out}: input {exported.in_avals[0].str_short()}, "
        f"output {exported.out_avals[0].str_short()}, platforms {', '.join(exported.platforms)}"
    )


def reference_module(loaded: Any) -> Any:
    """The PyTorch Figure 10 network with `loaded`'s weights, taking and returning NHWC
    video (N, T, H, W, C) like the JAX model, in eval mode."""
    import torch

    from stlight_jax.reference import reference_from_config
    from stlight_jax.weights import torch_files as convert
    from stlight_jax.weights.loading import rebuild_model

    cfg = loaded.model_config
    ref = reference_from_config(cfg)
    model = rebuild_model(loaded.graphdef, loaded.params, loaded.batch_stats)
    state = {k: torch.tensor(v) for k, v in convert.model_state_dict(model).items()}
    ref.load_state_dict(state, strict=True)

    class ChannelsLast(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, frames):
            return self.net(frames.permute(0, 1, 4, 2, 3)).permute(0, 1, 3, 4, 2)

    return ChannelsLast(ref).eval()


def write_onnx(loaded: Any, out: str, batch: int | None, check: bool = True) -> str:
    """Writes the ONNX model; with `check`, runs it in onnxruntime on random frames and
    refuses (ValueError) a model off by more than 1e-5 relative from the JAX one."""
    try:
        import onnx  # noqa: F401 - torch.onnx needs it; fail here with the install line
        import onnxscript  # noqa: F401
        import torch
    except ImportError as e:
        raise ImportError(
            f"the ONNX export needs {e.name}: pip install -r requirements-export.txt"
        ) from None
    cfg = loaded.model_config
    h, w = cfg.image_size
    example = torch.rand(batch or 2, cfg.frames_in, h, w, cfg.channels)
    dynamic = None if batch else ({0: torch.export.Dim("batch", min=1)},)
    torch.onnx.export(
        reference_module(loaded),
        (example,),
        out,
        input_names=["frames"],
        output_names=["predictions"],
        dynamic_shapes=dynamic,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    note = f"{out}: input frames ({batch or 'batch'}, {cfg.frames_in}, {h}, {w}, {cfg.channels})"
    if check:
        err = check_onnx(loaded, out, batch or 3)
        note += f"; onnxruntime vs JAX max relative error {err:.1e}"
    return note


def check_onnx(loaded: Any, path: str, batch: int, tolerance: float = 1e-5) -> float:
    """max |onnx - jax| / max |jax| on random frames; ValueError above `tolerance`."""
    import jax
    import onnxruntime

    cfg = loaded.model_config
    h, w = cfg.image_size
    frames = np.random.default_rng(0).random((batch, cfg.frames_in, h, w, cfg.channels))
    frames = frames.astype(np.float32)
    with jax.default_matmul_precision("highest"):
        want = np.asarray(jax.jit(eval_forward(loaded))(frames))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"frames": frames})[0]
    err = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
    if not err <= tolerance:
        raise ValueError(f"{path}: onnxruntime differs from the JAX model by {err:.2e} relative")
    return err


if __name__ == "__main__":
    from stlight_jax.cli.export import main

    main()
