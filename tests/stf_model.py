"""A PyTorch STLight with the module names of the unofficial STF code (not imported from it).

Same network as the Figure 10 reference; only the names differ: `encoder.encoder.{0 conv,
1 BN}`, `translator.{i}.depthwise_conv.fn.{0 k1, 1 k2 dilated, 3 BN}`,
`translator.{i}.pointwise_conv.{0 1x1, 2 BN}`, `patch_reassemble`. `save_like_stf_trainer`
writes a checkpoint the way STF's trainer does.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from stlight_jax.models import ModelConfig


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        p, o = cfg.patch, cfg.overlap
        self.encoder = nn.Sequential(
            nn.Conv2d(
                cfg.frames_in * cfg.channels,
                cfg.dim,
                kernel_size=p * max(1, o),
                stride=p,
                padding=max(0, o - 1) * p // 2,
            ),
            nn.BatchNorm2d(cfg.dim),
            nn.GELU(),
        )

    def forward(self, x):
        return self.encoder(x)


class Mixer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.depthwise_conv = Residual(
            nn.Sequential(
                nn.Conv2d(d, d, cfg.k1, groups=d, padding="same"),
                nn.Conv2d(d, d, cfg.k2, groups=d, padding="same", dilation=cfg.dilation),
                nn.GELU(),
                nn.BatchNorm2d(d),
            )
        )
        self.pointwise_conv = nn.Sequential(nn.Conv2d(d, d, 1), nn.GELU(), nn.BatchNorm2d(d))

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class STFModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.out_layers = cfg.frames_out * cfg.channels
        self.encoder = Encoder(cfg)
        self.translator = nn.ModuleList([Mixer(cfg) for _ in range(cfg.depth)])
        self.up = nn.PixelShuffle(cfg.patch)
        self.patch_reassemble = nn.Conv2d(cfg.dim // cfg.patch**2, self.out_layers, 1)

    def forward(self, x):  # (B, T, C, H, W)
        b, t, c, h, w = x.shape
        x = self.encoder(x.reshape(b, t * c, h, w))
        for i, block in enumerate(self.translator):
            if i == len(self.translator) // 3:
                skip = x
            if i == 2 * len(self.translator) // 3:
                x = x + skip
            x = block(x)
        x = self.patch_reassemble(self.up(x))
        return x.reshape(b, self.out_layers // c, c, h, w)


def save_like_stf_trainer(model: STFModel, cfg: ModelConfig, path, epoch: int = 7) -> None:
    """One Adam step on random data (so the optimizer state holds tensors), then the dict STF's
    trainer saves: model, optimizer, scheduler and criterion states, the epoch, the validation
    loss and Python / numpy / torch RNG states. Leaves `model` in eval mode with the saved
    weights."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=10)
    criterion = nn.MSELoss()
    g = torch.Generator().manual_seed(epoch)
    h, w = cfg.image_size
    x = torch.rand(2, cfg.frames_in, cfg.channels, h, w, generator=g)
    y = torch.rand(2, cfg.frames_out, cfg.channels, h, w, generator=g)
    model.train()
    criterion(model(x), y).backward()
    optimizer.step()
    scheduler.step()
    model.eval()
    # The dict of STF's Trainer_Base.save_checkpoint, entry for entry.
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(),
            "criterion_state_dict": criterion.state_dict(),
            "epoch": epoch,
            "val_loss": np.float64(0.0123),
            "random_python": random.getstate(),
            "random_numpy": np.random.get_state(),  # noqa: NPY002 - what STF stores
            "random_torch": torch.get_rng_state(),
            "cuda": None,  # torch.cuda.get_rng_state_all() on a GPU machine
        },
        path,
    )
