"""One command per paper row: train and test it with the paper's settings, write paper vs measured.

    python -m stlight_jax.reproduce table3-mmnist-L --workdir=runs/table3-mmnist-L \
        --data=mnist_test_seq.npy            # the paper's test set (else a generated stand-in)
    python -m stlight_jax.reproduce --list   # every row, with its expected hours on an A6000
    python -m stlight_jax.reproduce --table runs/*   # the README's table ("not run" elsewhere)
    python -m stlight_jax.reproduce --dry-run --workdir=/tmp/dry   # every row, tiny, on CPU

A row trains `configs/<file>.py:<size>` with the row's overrides into `DIR/run` (rerunning the
same command resumes it), tests the best-validation checkpoint, and writes `DIR/row.json`: the
paper's numbers, the measured ones, their difference (measured - paper), the hardware, the wall
time of all the invocations that made it, and the commit. `--data` is the dataset
(`data.test_file` for Moving MNIST, `data.path` otherwise); `--set KEY=VALUE` overrides any
other config field (e.g. `--set compute_dtype=bfloat16`), and row.json records them all.
`--dry-run` runs each row's own config through the same code at a tiny size (dim 16, depth 3,
one epoch of a few synthetic sequences) so that no row's command can rot: 15-90 s a row on 2
shared CPU cores, most of it compiling (the first row is the slowest; rows share a compilation
cache). Its row.json files say `"dry_run": true` and `--table` refuses them.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

PROG = "python -m stlight_jax.reproduce"
ROW_FILE = "row.json"
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
        raise ValueError(f"unknown row {name!r}: `{PROG} --list` shows all {len(ROWS)}{hint}")
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
        "MMNIST-L step x 6.3, scaled by MACs per sample (stlight_jax/reproduce.py says why)"
    )
    return lines


# ---------------------------------------------------------------------------------------------
# Running a row.


def _commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    if not sha:
        from importlib import metadata

        try:
            return f"stlight-jax {metadata.version('stlight-jax')} (not a git checkout)"
        except metadata.PackageNotFoundError:
            return "unknown (not a git checkout)"
    return sha + (" (with uncommitted changes)" if dirty else "")


def hardware() -> dict[str, Any]:
    import jax

    devices = jax.devices()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "platform": devices[0].platform,
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "processes": jax.process_count(),
        "cpu": f"{cpu} ({os.cpu_count()} logical cores)",
        "jax": jax.__version__,
    }


def _measured(row: Row, test_metrics: dict) -> dict[str, float]:
    model = test_metrics["model"]
    keys = list(row.paper_dict) or ["mse", "mae", "ssim", "psnr"]
    return {m: float(model[METRICS[m][1]]) * METRICS[m][2] for m in keys}


def run_row(
    name: str,
    workdir: str,
    data: str | None = None,
    sets: Sequence[tuple[str, Any]] = (),
    dry_run_data: str | None = None,
) -> dict[str, Any] | None:
    """Trains and tests row `name` into `workdir`/run, writes `workdir`/row.json and returns it;
    None when a signal stopped the run (rerun to resume). `dry_run_data`: a folder for the
    tiny synthetic data of a dry run (the row's config is then shrunk, `shrink_for_dry_run`)."""
    from stlight_jax.training.loop import train_and_evaluate

    row = get_row(name)
    config = row_config(row, data, sets)
    hours = expected_hours(config)
    if dry_run_data is not None:
        config = shrink_for_dry_run(config, dry_run_data)
    os.makedirs(workdir, exist_ok=True)
    wall_file = os.path.join(workdir, "wall_time.json")
    before = 0.0
    if os.path.isfile(wall_file):
        with open(wall_file) as f:
            before = float(json.load(f)["seconds"])
    start = time.time()
    try:
        result = train_and_evaluate(config, os.path.join(workdir, "run"))
    finally:
        with open(wall_file, "w") as f:
            json.dump({"seconds": before + time.time() - start}, f)
    wall = before + time.time() - start
    if "interrupted_at_step" in result:
        return None
    measured = _measured(row, result)
    paper = row.paper_dict
    record = {
        "row": row.name,
        "paper": {"source": row.source, "metrics": paper, "note": row.note},
        "measured": measured,
        "difference": {m: measured[m] - v for m, v in paper.items()},
        "config": {
            "spec": row.spec,
            "overrides": dict(row.overrides),
            "data": data,
            "set": dict(sets),
            "name": config.name,
        },
        "test_data": result.get("data_source"),
        "checkpoint_step": result.get("checkpoint_step"),
        "hardware": hardware(),
        "wall_time_s": wall,
        "expected_a6000_hours": hours,
        "commit": _commit(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dry_run": dry_run_data is not None,
    }
    tmp = os.path.join(workdir, ROW_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, os.path.join(workdir, ROW_FILE))
    return record


# ---------------------------------------------------------------------------------------------
# Dry runs: every row's own config, shrunk, on tiny synthetic data.


def shrink_for_dry_run(config, data_dir: str):
    """`config` at a tiny size: the row's switches (skip, decoder, init, k1, k2, overlap, patch)
    and optimizer settings stay; dim 16, depth 3, one epoch of 8 sequences of synthetic data
    written under `data_dir`; the lax depthwise convs (the shortest compile)."""
    import numpy as np

    d = config.data
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    m = config.model
    m.dim, m.depth, m.conv_impl = 16, 3, "lax"
    if d.name == "mmnist":
        path = os.path.join(data_dir, "digits.npz")
        if not os.path.isfile(path):
            digits = (rng.random((2, 20, 28, 28)) * 255).astype(np.uint8)
            np.savez(path, x_train=digits[0], x_test=digits[1])
        d.mnist_path, d.test_file, d.tfds_dir, d.test_source = path, "", "", "auto"
        d.num_train, d.num_val, d.num_test = 8, 4, 4
    elif d.name == "taxibj":
        path = d.path = os.path.join(data_dir, "taxibj.npz")
        if not os.path.isfile(path):
            x = lambda n: rng.uniform(-1, 1, (n, 4, 2, 32, 32)).astype(np.float32)  # noqa: E731
            np.savez(path, X_train=x(8), Y_train=x(8), X_test=x(4), Y_test=x(4))
    elif d.name == "kth":
        m.image_size = (32, 32)
        d.path = _write_kth(os.path.join(data_dir, "kth"), m.frames_in + m.frames_out, rng)
    elif d.name == "kitticaltech":
        m.image_size = (16, 20)
        d.path = _write_kitticaltech(os.path.join(data_dir, "kitticaltech"), rng)
    else:  # pragma: no cover - every row's dataset is handled above
        raise ValueError(f"no dry-run data for dataset {d.name!r}")
    d.batch_size = d.eval_batch_size = 4
    d.data_dir = os.path.join(data_dir, "cache")
    d.worker_count = 0
    config.num_epochs, config.eval_every_epochs = 1, 1
    config.log_every_steps = 1
    return config


def _write_kth(root: str, seq_len: int, rng) -> str:
    from PIL import Image

    for person in ("01", "02", "17", "18"):  # train persons 1-16, test 17-25
        d = os.path.join(root, "boxing", f"person{person}_boxing_d1_uncomp")
        if os.path.isdir(d):
            continue
        os.makedirs(d)
        for f in range(1, 2 * seq_len + 1):
            img = rng.integers(0, 256, (24, 32, 3), dtype="uint8")
            Image.fromarray(img).save(os.path.join(d, f"image_{f:04d}.png"))
    return root


def _write_kitticaltech(root: str, rng) -> str:
    import numpy as np

    npy = os.path.join(root, "kitticaltech_npy")
    if not os.path.isdir(npy):
        os.makedirs(npy)
        for part, n in (("train", 24), ("test", 12)):
            frames = rng.integers(0, 256, (n, 16, 20, 3), dtype=np.uint8)
            np.save(os.path.join(npy, f"{part}_data.npy"), frames)
            np.save(os.path.join(npy, f"{part}_idx.npy"), np.arange(0, n - 11, 1, np.int32))
    return root


def dry_run(names: Sequence[str], workdir: str) -> list[dict[str, Any]]:
    """Every row of `names` (all when empty) at a tiny size into `workdir`/<row>/, with a
    compilation cache shared by the rows (they differ in few programs)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "_jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    out = []
    for name in names or list(ROWS):
        start = time.time()
        rec = run_row(
            name, os.path.join(workdir, name), dry_run_data=os.path.join(workdir, "_data")
        )
        if rec is None:
            raise KeyboardInterrupt
        print(f"{name}: dry run ok in {time.time() - start:.1f} s", flush=True)
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# The README's table.


def _fmt(metric: str, value: float) -> str:
    return f"{value:.4f}" if metric == "ssim" else f"{value:.2f}"


def _paper_text(row: Row) -> str:
    if not row.paper:
        return row.note or "no numbers"
    text = ", ".join(f"{METRICS[m][0]} {_fmt(m, v)}" for m, v in row.paper)
    return text + (f" ({row.note})" if row.note else "")


def read_rows(dirs: Sequence[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for d in dirs:
        path = os.path.join(d, ROW_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"{d}: holds no {ROW_FILE} (run the row first)")
        try:
            with open(path) as f:
                rec = json.load(f)
            name = rec["row"]
            rec["measured"], rec["hardware"]["devices"]  # noqa: B018 - the fields --table uses
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a row.json written by {PROG} ({e})") from None
        get_row(name)
        if rec.get("dry_run"):
            raise ValueError(f"{path}: a --dry-run result (tiny model), not a measurement")
        if name in found:
            raise ValueError(f"{path}: row {name} is given twice")
        found[name] = rec
    return found


def _measured_text(rec: dict) -> str:
    measured = rec["measured"]
    parts = [f"{METRICS[m][0]} {_fmt(m, v)}" for m, v in measured.items()]
    diff = rec.get("difference") or {}
    if diff:
        parts = [
            p + (f" ({diff[m]:+.{4 if m == 'ssim' else 2}f})" if m in diff else "")
            for p, m in zip(parts, measured, strict=True)
        ]
    hours = rec["wall_time_s"] / 3600
    return (
        ", ".join(parts)
        + f"; {rec['hardware']['devices']}, {hours:.1f} h, commit {rec['commit'][:10]}"
    )


def render_table(dirs: Sequence[str] = ()) -> str:
    """The README's markdown table: every row, with the measured numbers of `dirs`' row.json
    files ("not run" for the others)."""
    done = read_rows(dirs)
    lines = [
        "| row | paper | trains | A6000 h (est.) | the paper reports | measured here "
        "(difference) |",
        "|---|---|---|---|---|---|",
    ]
    for row in ROWS.values():
        trains = f"`{row.spec}`" + "".join(f" `{k}={v}`" for k, v in row.overrides)
        hours = expected_hours(row_config(row))
        measured = _measured_text(done[row.name]) if row.name in done else "not run"
        lines.append(
            f"| {row.name} | {row.source} | {trains} | {hours:.1f} | {_paper_text(row)} | "
            f"{measured} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> None:
    from stlight_jax.cli import errors as cli_errors

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and test one of the paper's rows with its settings; write row.json.",
    )
    parser.add_argument("rows", nargs="*", help="row name(s): one for a run, any for --dry-run")
    parser.add_argument("--workdir", help="the row's directory (row.json, run/)")
    parser.add_argument("--data", help="Moving MNIST: mnist_test_seq.npy; else data.path")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. compute_dtype=bfloat16 (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="every row and its A6000 hours")
    parser.add_argument("--table", nargs="*", metavar="DIR", help="render the README's table")
    parser.add_argument("--dry-run", action="store_true", help="rows at a tiny size, on CPU")
    parser.add_argument("--verbose_errors", action="store_true", help=cli_errors.VERBOSE_HELP)
    args = parser.parse_args(argv)
    modes = sum([args.list, args.table is not None, args.dry_run])
    with cli_errors.user_errors_reported(PROG, args.verbose_errors):
        if modes > 1:
            raise ValueError("give one of --list, --table, --dry-run")
        if args.list:
            print("\n".join(list_rows()))
        elif args.table is not None:
            print(render_table(args.table))
        elif args.dry_run:
            if not args.workdir:
                raise ValueError("--dry-run needs --workdir=DIR")
            for name in args.rows:
                get_row(name)
            dry_run(args.rows, args.workdir)
        else:
            if len(args.rows) != 1 or not args.workdir:
                raise ValueError(f"usage: {PROG} ROW --workdir=DIR (or --list / --table)")
            from stlight_jax.writers import quiet_library_logs

            quiet_library_logs()
            rec = run_row(args.rows[0], args.workdir, args.data, parse_sets(args.set))
            if rec is None:
                cli_errors.interrupted(PROG, "stopped; rerun the same command to resume")
            print(json.dumps({k: rec[k] for k in ("row", "measured", "difference")}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
