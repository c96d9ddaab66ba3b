"""The paper's rows: for each number of Tables 3, 4, 6-9 and Figure 4, the config that trains it
(`configs/<file>.py:<size>` plus the row's overrides), the paper's metrics, and the estimated
hours of its training and test on one A6000. `python -m stlight_jax.reproduce` runs a row
(stlight_jax/reproduce.py) and `--list` prints this table (`list_rows`).
"""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

REPRODUCE = "python -m stlight_jax.reproduce"  # the command that runs a row
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Metric -> (label, key in test_metrics.json's "model", factor). TaxiBJ's column is MSE x 100.
METRICS = {
    "mse": ("MSE", "mse", 1.0),
    "mse_x100": ("MSE x 100", "mse", 100.0),
    "mae": ("MAE", "mae", 1.0),
    "ssim": ("SSIM", "ssim", 1.0),
    "psnr": ("PSNR", "psnr", 1.0),
}


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    source: str  # where the paper reports it, e.g. "Table 3"
    spec: str  # config file and argument
    overrides: tuple[tuple[str, Any], ...]  # config fields the row sets beyond the spec
    paper: tuple[tuple[str, float], ...]  # metric (METRICS key) -> the paper's number
    note: str = ""

    @property
    def paper_dict(self) -> dict[str, float]:
        return dict(self.paper)


def _rows() -> dict[str, Row]:
    rows: list[Row] = []

    def add(name, source, spec, paper, note="", **overrides):
        fields = tuple((k.replace("__", "."), v) for k, v in overrides.items())
        rows.append(Row(name, source, spec, fields, tuple(paper.items()), note))

    l_mse = {"XS": 24.48, "S": 23.29, "M": 22.21, "L": 21.80}
    for size, mse in l_mse.items():
        extra = {"mae": 66.92, "ssim": 0.9515} if size == "L" else {}
        add(f"table3-mmnist-{size}", "Table 3", f"configs/mmnist.py:{size}", {"mse": mse, **extra})
    taxibj = {"S": (34.79, 15.58, 0.9825), "M": (32.54, 15.25, 0.9839), "L": (30.87, 15.00, 0.9853)}
    for size, (mse, mae, ssim) in taxibj.items():
        paper = {"mse_x100": mse, "mae": mae, "ssim": ssim}
        add(f"table3-taxibj-{size}", "Table 3", f"configs/taxibj.py:{size}", paper)
    kth = {  # the paper's XS / S / M / L are kth.py's S / M / L / XL (its docstring)
        "XS": ("S", 376.1, 27.50, 0.9052),
        "S": ("M", 377.8, 27.52, 0.9078),
        "M": ("L", 367.9, 27.54, 0.9102),
        "L": ("XL", 363.8, 27.57, 0.9113),
    }
    for size, (ours, mae, psnr, ssim) in kth.items():
        paper = {"mae": mae, "psnr": psnr, "ssim": ssim}
        add(f"table3-kth-{size}", "Table 3", f"configs/kth.py:{ours}", paper)
    table4 = {
        "thirds": (24.48, 23.29, 22.21, 21.80, 21.55),
        "no_skip": (24.86, 23.66, 22.59, 22.28, 21.97),
        "skip_fifths": (24.94, 23.68, 22.62, 22.13, 21.92),
    }
    for variant, values in table4.items():
        for size, mse in zip(("XS", "S", "M", "L", "XL"), values, strict=True):
            spec = f"configs/ablations.py:{variant},{size}"
            add(f"table4-{variant}-{size}", "Table 4", spec, {"mse": mse})
    add(
        "table6-mmnist-L",
        "Table 6",
        "configs/mmnist.py:L",
        {"mse": 14.77, "mae": 47.17, "ssim": 0.9686},
        "2000 epochs at lr 1e-3 (Table 8's last row)",
        num_epochs=2000,
        optimizer__learning_rate=1e-3,
    )
    table7 = {  # k1 -> MSE at k2 = 3, 5, 7, 9, 11 (the paper does not say which size: L here)
        3: (24.16, 22.48, 22.33, 22.33, 22.75),
        5: (24.01, 22.67, 22.45, 22.78, 23.03),
        7: (23.75, 22.83, 22.88, 23.00, 24.00),
        9: (23.45, 23.02, 23.10, 23.38, 23.62),
        11: (23.04, 23.14, 23.24, 23.65, 24.51),
    }
    for k1, values in table7.items():
        for k2, mse in zip((3, 5, 7, 9, 11), values, strict=True):
            add(
                f"table7-k{k1}x{k2}",
                "Table 7",
                "configs/mmnist.py:L",
                {"mse": mse},
                "size not stated in the paper; L here",
                model__k1=k1,
                model__k2=k2,
            )
    table8 = {
        ("3e-4", 200): (27.42, 76.86, 0.937),
        ("1e-3", 200): (22.28, 66.11, 0.950),
        ("3e-3", 200): (21.80, 64.90, 0.951),
        ("1e-2", 200): (38.47, 90.42, 0.939),
        ("1e-3", 500): (18.88, 58.59, 0.957),
        ("1e-3", 1000): (17.89, 54.25, 0.962),
        ("1e-3", 2000): (14.77, 47.17, 0.969),
    }
    for (lr, epochs), (mse, mae, ssim) in table8.items():
        add(
            f"table8-lr{lr}-e{epochs}",
            "Table 8",
            "configs/mmnist.py:L",
            {"mse": mse, "mae": mae, "ssim": ssim},
            num_epochs=epochs,
            optimizer__learning_rate=float(lr),
        )
    table9 = {  # final_div -> MSE at lr 3e-4, 1e-3, 3e-3, 1e-2 (STLight-33M: L)
        1000: (26.04, 22.41, 22.01, 35.99),
        3000: (27.14, 22.49, 21.85, 38.35),
        10000: (27.42, 22.33, 21.80, 38.47),
    }
    for fd, values in table9.items():
        for lr, mse in zip(("3e-4", "1e-3", "3e-3", "1e-2"), values, strict=True):
            add(
                f"table9-lr{lr}-fd{fd}",
                "Table 9",
                "configs/mmnist.py:L",
                {"mse": mse},
                optimizer__learning_rate=float(lr),
                optimizer__final_div_factor=float(fd),
            )
    for size in ("0.1M", "0.5M", "1M", "3M", "6M", "15M"):
        add(
            f"figure4-kitticaltech-{size}",
            "Figure 4",
            f"configs/kitticaltech.py:{size}",
            {},
            "a plot of Caltech MSE against parameters, no numbers; sizes ours",
        )
    return {r.name: r for r in rows}


ROWS = _rows()


def get_row(name: str) -> Row:
    if name not in ROWS:
        close = [r for r in ROWS if r.startswith(name.split("-")[0])][:6]
        hint = f"; e.g. {', '.join(close)}" if close else ""
        raise ValueError(f"unknown row {name!r}: `{REPRODUCE} --list` shows all {len(ROWS)}{hint}")
    return ROWS[name]


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(sets: Sequence[str]) -> list[tuple[str, Any]]:
    out = []
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. compute_dtype=bfloat16")
        out.append((key.strip(), _parse_value(value.strip())))
    return out


def _set_field(config, key: str, value: Any, where: str) -> None:
    """Sets an existing config field (ml_collections checks the type); a new key is an error."""
    *parents, leaf = key.split(".")
    target = config
    for part in parents:
        if part not in target:
            raise ValueError(f"{where}: {key!r} is not a config field")
        target = target[part]
    if leaf not in target:
        raise ValueError(f"{where}: {key!r} is not a config field")
    if isinstance(target[leaf], tuple) and isinstance(value, list):
        value = tuple(value)
    try:
        target[leaf] = value
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {key}={value!r}: {e}") from None


def row_config(row: Row, data: str | None = None, sets: Sequence[tuple[str, Any]] = ()):
    """The row's training config: its spec, its overrides, `--data`, then `--set`s."""
    from stlight_jax.config.files import load_config

    path = os.path.join(REPO, row.spec)  # a checkout; else load_config finds the packaged one
    config = load_config(path if os.path.exists(path.partition(":")[0]) else row.spec)
    for key, value in row.overrides:
        _set_field(config, key, value, row.name)
    if data:
        key = "data.test_file" if config.data.name == "mmnist" else "data.path"
        _set_field(config, key, data, "--data")
    for key, value in sets:
        _set_field(config, key, value, f"--set {key}")
    return config


# ---------------------------------------------------------------------------------------------
# Expected time on one A6000-class GPU.
#
# Measured: MMNIST-L (32.9M) bf16 train step 102.8 ms at batch 16 on one H200
# (benchmarks/results/h200-2026-12-04/summary.json). There the step reached 4.3% of the H200's
# measured bf16 matmul peak and 3% of its memory bandwidth (XLA's bytes estimate): neither
# bound, so no roofline gives the A6000 time. We assume the A6000 reaches the same shares of
# its own peaks: NVIDIA's datasheet figures are 154.8 TFLOPS bf16 dense and 768 GB/s against
# the H200's 989 TFLOPS and 4.8 TB/s, ratios 6.4 and 6.25, so the H200 time x 6.3. Other sizes
# and datasets scale by their multiply-accumulates per sample (stlight_jax.model_size, all
# convs); an evaluation sample costs 1/3.05 of a training one (the measured forward / train
# step ratio, same run). Validation runs every epoch on the validation split (for TaxiBJ, KTH
# and KITTI -> Caltech that is the test split, num_val=0), plus one test pass. Sample counts:
# Moving MNIST as configured; TaxiBJ 20,461 / 500, KTH 5,200 / 3,167 and KITTI -> Caltech
# 2,042 / 1,983 train / test sequences (OpenSTL's docs/en/install.md). An estimate, not a
# measurement: it is pessimistic if the H200 step was bound by kernel launches (which do not
# slow down by 6.3x), and it leaves out checkpoints and compilation (minutes).
H200_L_STEP_S = 0.1028
H200_L_BATCH = 16
A6000_OVER_H200 = 6.3
EVAL_OVER_TRAIN = 1 / 3.05
_SAMPLES = {  # dataset -> (train sequences per epoch, test sequences), when not in the config
    "taxibj": (20_461, 500),
    "kth": (5_200, 3_167),
    "kitticaltech": (2_042, 1_983),
}


def expected_hours(config) -> float:
    """Estimated hours of `config`'s training and test on one A6000 (see the comment above)."""
    from stlight_jax.model_size import PAPER_SIZES, model_size
    from stlight_jax.models import ModelConfig
    from stlight_jax.weights.loading import model_config

    ref = model_size(ModelConfig(**PAPER_SIZES["mmnist_L"][0])).true_macs
    per_sample = H200_L_STEP_S / H200_L_BATCH * A6000_OVER_H200
    per_sample *= model_size(model_config(config)).true_macs / ref
    d = config.data
    if d.name == "mmnist":
        train, val, test = int(d.num_train), int(d.num_val), int(d.num_test)
    else:
        train, test = _SAMPLES[d.name]
        val = int(d.num_val) or test
        train -= int(d.num_val)
    epochs = int(config.num_epochs)
    evals = epochs // max(1, int(config.eval_every_epochs)) * val + test
    return per_sample * (epochs * train + EVAL_OVER_TRAIN * evals) / 3600


def list_rows() -> list[str]:
    lines = [f"{'row':<28} {'paper':<9} {'A6000 h':>8}  trains"]
    for row in ROWS.values():
        config = row_config(row)
        what = row.spec + "".join(f" {k}={v}" for k, v in row.overrides)
        lines.append(f"{row.name:<28} {row.source:<9} {expected_hours(config):8.1f}  {what}")
    total = sum(expected_hours(row_config(r)) for r in ROWS.values())
    lines.append(
        f"{len(ROWS)} rows, {total:,.0f} A6000 hours in all. Estimates: the measured H200 "
        "MMNIST-L step x 6.3, scaled by MACs per sample (stlight_jax/paper_rows.py says why)"
    )
    return lines
