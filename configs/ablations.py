"""The paper's ablations on Moving MNIST 10 -> 10, by row name; `configs/mmnist.py` otherwise.

    python train.py --config=configs/ablations.py:no_skip,XS --workdir=runs/no_skip_xs

The argument is `ROW` or `ROW,SIZE` with SIZE one of XS / S / M / L / XL (default S: dims
800 / 1000 / 1200 / 1400 / 1600, depth 16, patch 2), trained exactly as `configs/mmnist.py`
(Table 2: lr 3e-3, OneCycle, batch 16, 200 epochs). Rows, with what the paper reports for them:

    Table 4, inter-block skip (test MSE at XS / S / M / L / XL = 11M / 17M / 24M / 32M / 42M):
      thirds              keep before block depth//3, add before 2*depth//3 (the paper's
                          model): 24.48 / 23.29 / 22.21 / 21.80 / 21.55
      no_skip             no inter-block skip: 24.86 / 23.66 / 22.59 / 22.28 / 21.97
      skip_fifths         keep before depth//5, add before 4*depth//5: 24.94 / 23.68 / 22.62 /
                          22.13 / 21.92
    Appendix D, initialisation (Figure 8: learning curves only, no table of numbers):
      hybrid              kaiming-normal (fan_out, relu, bias 0) for encoder and mixer convs,
                          PyTorch's default for the reassemble conv (the paper's choice)
      kaiming_normal      kaiming-normal for every conv, as Listing 1 (the paper: unstable)
      kaiming_uniform     PyTorch's default for every conv (the paper: slow to start)
    Appendix F, decoder order (Figure 9: loss dispersion only, no table of numbers):
      shuffle_reassemble  pixel shuffle, then a 1x1 conv d/p^2 -> T'*C (the paper's choice)
      reassemble_shuffle  a 1x1 conv d -> T'*C*p^2, then the pixel shuffle

Each run is a full 200-epoch Moving MNIST training of its size (one GPU of the H100 class;
see configs/mmnist.py), so every row is a separate run. None of these rows has been trained
to the end here.
"""

from __future__ import annotations

from stlight_jax.configs import mmnist

ROWS = {
    "thirds": {"skip": "thirds"},
    "no_skip": {"skip": "none"},
    "skip_fifths": {"skip": "fifths"},
    "hybrid": {"init": "hybrid"},
    "kaiming_normal": {"init": "kaiming_normal"},
    "kaiming_uniform": {"init": "kaiming_uniform"},
    "shuffle_reassemble": {"decoder": "shuffle_reassemble"},
    "reassemble_shuffle": {"decoder": "reassemble_shuffle"},
}
SIZES = ("XS", "S", "M", "L", "XL")


def get_config(arg: str | None = None):
    row, _, size = (arg or "").partition(",")
    size = size or "S"
    if row not in ROWS:
        raise ValueError(
            f"configs/ablations.py: unknown row {row!r}; choose one of {tuple(ROWS)} "
            "(optionally ',SIZE')"
        )
    if size not in SIZES:
        raise ValueError(f"configs/ablations.py: unknown size {size!r}; choose one of {SIZES}")
    config = mmnist.get_config(size)
    config.name = f"mmnist_{size}_{row}"
    config.model.update(ROWS[row])
    return config
