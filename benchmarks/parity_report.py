"""Prints the measured parity errors of stlight-jax against the PyTorch reference.

    python benchmarks/parity_report.py [--precision=highest]

Same configs and randomisation as tests/test_parity.py (whose assertions are the contract);
this script reports the numbers themselves, e.g. for the README or a GPU run at 'highest'
matmul precision (with TF32 disabled on the PyTorch side).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="highest", help="jax default_matmul_precision")
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp
    import torch
    from conftest import from_torch_video, max_rel_err, randomize_reference, to_torch_video
    from flax import nnx
    from test_parity import CONFIGS, IMPLS

    from stlight_jax.models import create_model
    from stlight_jax.reference import reference_from_config
    from stlight_jax.weights import torch_files as convert

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__}")
    print(
        f"{'config':16s} {'impl':8s} {'eval':>9s} {'train':>9s} {'train64':>9s} "
        f"{'stats':>9s} {'grad max':>9s}"
    )
    with jax.default_matmul_precision(args.precision):
        for name, base in CONFIGS.items():
            for impl in IMPLS:
                cfg = dataclasses.replace(base, conv_impl=impl)
                ref = reference_from_config(cfg)
                randomize_reference(ref, 0)
                model = create_model(cfg, seed=1)
                convert.load_into_model(model, ref.state_dict())
                rng = np.random.default_rng(0)
                x = rng.random((4, cfg.frames_in, *cfg.image_size, cfg.channels), np.float32)
                y = rng.random((4, cfg.frames_out, *cfg.image_size, cfg.channels), np.float32)
                ref.eval()
                model.eval()
                with torch.no_grad():
                    e_want = from_torch_video(ref(to_torch_video(x)))
                e_err = max_rel_err(np.asarray(model(jnp.asarray(x))), e_want)
                ref64 = copy.deepcopy(ref).double().train()
                exact = from_torch_video(ref64(to_torch_video(x).double()))
                ref.train()
                model.train()
                out = ref(to_torch_video(x))
                torch.mean((out - to_torch_video(y)) ** 2).backward()

                def loss_fn(m, x=x, y=y):
                    pred = m(jnp.asarray(x))
                    return jnp.mean((pred - jnp.asarray(y)) ** 2), pred

                (_, pred), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
                t_err = max_rel_err(np.asarray(pred), from_torch_video(out))
                t64 = max_rel_err(np.asarray(pred), exact)
                ours = convert.model_state_dict(model)
                s_err = max(
                    max_rel_err(ours[k], v.numpy())
                    for k, v in ref.state_dict().items()
                    if k.endswith(("running_mean", "running_var"))
                )
                stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
                g = convert.variables_to_state_dict(nnx.to_pure_dict(grads), stats, cfg)
                g_err = max(
                    max_rel_err(g[k], p.grad.numpy())
                    for k, p in ref.named_parameters()
                    if k != "patch_encoder.0.bias"
                )  # exact gradient 0: noise only
                print(
                    f"{name:16s} {impl:8s} {e_err:9.2e} {t_err:9.2e} {t64:9.2e} "
                    f"{s_err:9.2e} {g_err:9.2e}"
                )


if __name__ == "__main__":
    main()
