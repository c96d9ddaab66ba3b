"""The PyTorch reference model, transcribed from the paper's Figure 10 (for tests and conversion).

Module names match the paper's listing so `state_dict()` keys are the ones users' checkpoints
carry (docs/conventions.md §1). Two fixes relative to the printed listing: the decoder runs
once after the block loop (the listing's indentation puts it inside), and the dilation of the
k2 conv is a parameter (3 in the paper). The paper's ablations are switches with the
paper's model as default: `init` (appendix D), `decoder` (appendix F) and `skip` (Table 4).
torch is imported lazily: training never needs it.
"""

from __future__ import annotations

from typing import Any

from stlight_jax.config import schema


def build_reference(
    in_layers: int,
    out_layers: int,
    dim: int,
    depth: int,
    patch_size: int,
    overlapping: int,
    K_1: int = 3,  # noqa: N803 - the paper's argument names
    K_2: int = 7,  # noqa: N803
    dilation: int = 3,
    init: str = "hybrid",
    decoder: str = "shuffle_reassemble",
    skip: str = "thirds",
) -> Any:
    """Returns the Figure 10 `STLight` torch.nn.Module, by default with the Hybrid init.

    init: 'hybrid' (kaiming-normal fan_out/relu, bias 0, on the encoder and mixer convs),
    'kaiming_normal' (the same on every conv, as Listing 1 applies it to the whole model) or
    'kaiming_uniform' (PyTorch's default init everywhere). decoder: 'shuffle_reassemble'
    (PixelShuffle, then Conv2d(d/p^2 -> T'*C, 1)) or 'reassemble_shuffle' (Conv2d(d ->
    T'*C*p^2, 1), then PixelShuffle). skip: 'thirds' (keep before block depth//3, add before
    block 2*depth//3), 'fifths' (depth//5, 4*depth//5) or 'none'.
    """
    import torch
    from torch import nn

    choices = {"init": schema.INITS, "decoder": schema.DECODERS, "skip": schema.SKIPS}
    for name, value in (("init", init), ("decoder", decoder), ("skip", skip)):
        if value not in choices[name]:
            raise ValueError(f"{name}={value!r} is not one of {choices[name]}")
    skip_at = {
        "thirds": (depth // 3, 2 * depth // 3),
        "fifths": (depth // 5, 4 * depth // 5),
        "none": (-1, -1),
    }[skip]

    class Residual(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x) + x

    def stl_mixer(dim, k_1, k_2):
        return nn.Sequential(
            Residual(
                nn.Sequential(
                    nn.Conv2d(dim, dim, k_1, groups=dim, padding="same"),
                    nn.Conv2d(dim, dim, k_2, groups=dim, padding="same", dilation=dilation),
                    nn.GELU(),
                    nn.BatchNorm2d(dim),
                ),
            ),
            nn.Sequential(nn.Conv2d(dim, dim, kernel_size=1), nn.GELU(), nn.BatchNorm2d(dim)),
        )

    def patch_encoder(in_layers, dim, patch_size, overlapping):
        return nn.Sequential(
            nn.Conv2d(
                in_layers,
                dim,
                kernel_size=patch_size * max(1, overlapping),
                stride=patch_size,
                padding=max(0, overlapping - 1) * patch_size // 2,
            ),
            nn.BatchNorm2d(dim),
            nn.GELU(),
        )

    class STLight(nn.Module):
        def __init__(self):
            super().__init__()
            self.out_layers = out_layers
            self.patch_encoder = patch_encoder(in_layers, dim, patch_size, overlapping)
            self.net = nn.ModuleList([stl_mixer(dim, K_1, K_2) for _ in range(depth)])
            if decoder == "shuffle_reassemble":
                self.patch_reassemble = nn.Conv2d(dim // patch_size**2, out_layers, 1)
            else:
                self.patch_reassemble = nn.Conv2d(dim, out_layers * patch_size**2, 1)
            self.up = nn.PixelShuffle(patch_size)
            if init == "hybrid":
                self.patch_encoder.apply(self._init_weights)
                self.net.apply(self._init_weights)
            elif init == "kaiming_normal":
                self.apply(self._init_weights)

        @staticmethod
        def _init_weights(m):
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

        def forward(self, x):
            B, T, C, H, W = x.shape  # noqa: N806
            x = x.reshape(B, T * C, H, W)
            x = self.patch_encoder(x)
            for i, block in enumerate(self.net):
                if i == skip_at[0]:
                    x1 = x
                if i == skip_at[1]:
                    x = x + x1
                x = block(x)
            if decoder == "shuffle_reassemble":
                x = self.patch_reassemble(self.up(x))
            else:
                x = self.up(self.patch_reassemble(x))
            return x.reshape(B, self.out_layers // C, C, H, W)

    del torch  # only needed to make sure it imports before the classes are built
    return STLight()


def reference_from_config(cfg: Any) -> Any:
    """Builds the reference with the sizes of a `models.ModelConfig`."""
    return build_reference(
        in_layers=cfg.frames_in * cfg.channels,
        out_layers=cfg.frames_out * cfg.channels,
        dim=cfg.dim,
        depth=cfg.depth,
        patch_size=cfg.patch,
        overlapping=cfg.overlap,
        K_1=cfg.k1,
        K_2=cfg.k2,
        dilation=cfg.dilation,
        init=cfg.init,
        decoder=cfg.decoder,
        skip=cfg.skip,
    )
