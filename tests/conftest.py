"""Shared test helpers: a randomised PyTorch reference and NHWC <-> NCHW video layout."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Parity tolerances are float32 ones. On a GPU, XLA's default precision would run float32
# matmuls and convs as TF32 (10-bit mantissa); the parity tests must compare full float32.
# XLA:CPU computes float32 in full either way, so this changes nothing there.
jax.config.update("jax_default_matmul_precision", "highest")


def randomize_reference(ref, seed: int = 0) -> None:
    """Random weights and BatchNorm statistics (never defaults, never zeros) in place."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # BatchNorm scale around 1
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
        for name, b in ref.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                b.fill_(int(torch.randint(1, 1000, (1,), generator=g)))


def to_torch_video(x: np.ndarray):
    """(B, T, H, W, C) numpy -> (B, T, C, H, W) torch tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)))


def from_torch_video(y) -> np.ndarray:
    """(B, T, C, H, W) torch tensor -> (B, T, H, W, C) numpy."""
    return y.detach().numpy().transpose(0, 1, 3, 4, 2)


def max_rel_err(got, want) -> float:
    """max |got - want| / max |want|: the relative error the parity tolerances refer to."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def config(tmp_path):
    """tests/tiny_config.py's run config on a fresh tiny dataset in tmp_path (a test file may
    define its own `config`)."""
    from tests import tiny_config

    return tiny_config.get_config(tiny_config.write_data(str(tmp_path / "data.npz")))


@pytest.fixture
def weights(config, tmp_path) -> str:
    """A safetensors file of the tiny model, random weights (tests/tiny_weights.py)."""
    from tests import tiny_weights

    return tiny_weights.write_safetensors(config, str(tmp_path / "w.safetensors"))
