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

The rows and their configs: stlight_jax/paper_rows.py; the command line:
stlight_jax/cli/reproduce.py.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from stlight_jax.paper_rows import (
    METRICS,
    REPO,
    REPRODUCE,
    ROWS,
    Row,
    expected_hours,
    get_row,
    row_config,
)

ROW_FILE = "row.json"


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
            raise ValueError(f"{path}: not a row.json written by {REPRODUCE} ({e})") from None
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


if __name__ == "__main__":
    from stlight_jax.cli.reproduce import main

    main()
