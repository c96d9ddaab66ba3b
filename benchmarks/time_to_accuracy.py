"""Time to accuracy: stlight-jax and the PyTorch reference train the same run for the same time.

Both sides train the quick-start config (`configs/mmnist.py:cpu` by default) each in its own
process, one after the other, from the same initial weights (the JAX model's, converted to a
PyTorch state_dict with `stlight_jax.convert`), on the same batches (the project's
deterministic Moving MNIST stream; each side checks the first batch's hash), with the same
schedule (Adam + OneCycle with beta1 cycled: `schedules.create_optimizer` on one side,
torch.optim.Adam + OneCycleLR on the other) and the same element-mean MSE loss. Each side
trains until its wall-clock budget is spent (the first step's compile counts, evaluation
passes do not) and evaluates the validation MSE (OpenSTL's per-frame MSE, as train.py
reports it) every `--eval-every` seconds of training. Writes
`results/<host>-cpuN-<date>-time-to-accuracy.json` and a .png of val MSE against seconds.

    nice -n 10 python benchmarks/time_to_accuracy.py              # 200 s per side
    nice -n 10 python benchmarks/time_to_accuracy.py --short      # 45 s per side, 100 val seqs
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIDES = ("jax", "torch")


def _val_batches(config) -> list[dict[str, np.ndarray]]:
    from stlight_jax import data

    return [dict(b) for b in data.create_eval_iterator(config, "val")]


def _frame_mse(pred: np.ndarray, batch: dict) -> tuple[float, float]:
    """(sum over real sequences of the mean per-frame MSE, their count); pred as targets."""
    err = pred.astype(np.float64) - batch["targets"].astype(np.float64)
    per_seq = np.sum(err * err, axis=(2, 3, 4)).mean(axis=1)
    return float(np.sum(per_seq * batch["mask"])), float(np.sum(batch["mask"]))


def _batch_hash(batch: dict) -> str:
    h = hashlib.sha256()
    for k in ("inputs", "targets"):
        h.update(np.ascontiguousarray(batch[k]).tobytes())
    return h.hexdigest()[:16]


class _Jax:
    def __init__(self, config, weights: str, steps_per_epoch: int):
        import jax

        from stlight_jax import sharding, steps
        from stlight_jax.config import files as config_io
        from stlight_jax.models import create_model
        from stlight_jax.training import optimizer as optim
        from stlight_jax.training import schedules
        from stlight_jax.weights import torch_files as convert

        self.sharding = sharding
        model = create_model(config_io.model_config(config), seed=config.seed)
        convert.load_into_model(model, convert.load_state_dict_file(weights))
        scheds = schedules.create_schedules(config, steps_per_epoch)
        tx = optim.create_optimizer(config, scheds)
        graphdef, state = steps.split_model(model, tx)
        self.mesh = sharding.create_mesh(jax.devices()[:1])
        self.state = sharding.replicate(state, self.mesh)  # as train.py: no second compile
        self.step_fn = steps.create_train_step(graphdef, tx, scheds.lr, self.mesh)
        self.forward = steps.create_forward(graphdef, self.mesh)

    def step(self, batch) -> float:
        self.state, m = self.step_fn(self.state, self.sharding.global_batch(batch, self.mesh))
        return float(m["loss"])  # blocks: the clock sees the whole step

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        s = self.state
        x = self.sharding.global_batch({"inputs": inputs}, self.mesh)["inputs"]
        return np.asarray(self.forward(s["params"], s["batch_stats"], x))


class _Torch:
    def __init__(self, config, weights: str, total_steps: int, threads: int):
        import torch

        from stlight_jax.config import files as config_io
        from stlight_jax.reference import reference_from_config
        from stlight_jax.weights import torch_files as convert

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = reference_from_config(config_io.model_config(config))
        sd = convert.load_state_dict_file(weights)
        self.model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
        opt = config.optimizer
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=opt.learning_rate, betas=(0.9, opt.b2), eps=opt.eps
        )
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt,
            max_lr=opt.learning_rate,
            total_steps=total_steps,
            pct_start=opt.pct_start,
            div_factor=opt.div_factor,
            final_div_factor=opt.final_div_factor,
            cycle_momentum=opt.cycle_momentum,
            base_momentum=opt.base_momentum,
            max_momentum=opt.max_momentum,
        )

    @staticmethod
    def _video(x: np.ndarray):  # (B, T, H, W, C) -> the reference's (B, T, C, H, W)
        import torch

        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)))

    def step(self, batch) -> float:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        pred = self.model(self._video(batch["inputs"]))
        loss = self.torch.nn.functional.mse_loss(pred, self._video(batch["targets"]))
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss.item()

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        self.model.eval()
        with self.torch.inference_mode():
            out = self.model(self._video(inputs)).numpy()
        return out.transpose(0, 1, 3, 4, 2)


def worker(args) -> dict:
    """One side: trains for `args.budget` seconds of training time, evaluating on the way."""
    from stlight_jax import data
    from stlight_jax.config import files as config_io

    config = config_io.load_config(args.config)
    config.data.num_val = args.num_val
    config.data.data_dir = args.data_dir
    per_epoch = data.steps_per_epoch(config)
    total = per_epoch * config.num_epochs
    if args.worker == "jax":
        side = _Jax(config, args.weights, per_epoch)
    else:
        side = _Torch(config, args.weights, total, os.cpu_count() or 1)
    val = _val_batches(config)
    it = data.create_train_iterator(config)
    curve: list[dict[str, Any]] = []

    def evaluate(step: int, seconds: float, loss: float | None) -> None:
        sums = [_frame_mse(side.predict(b["inputs"]), b) for b in val]
        mse = sum(s for s, _ in sums) / sum(n for _, n in sums)
        curve.append({"seconds": seconds, "step": step, "val_mse": mse, "train_loss": loss})
        print(f"{args.worker}: {seconds:7.1f} s step {step:5d} val MSE {mse:8.2f}", flush=True)

    evaluate(0, 0.0, None)
    trained, step, first_step_s, first_hash = 0.0, 0, None, None
    next_eval, loss = args.eval_every, None
    while trained < args.budget and step < total:
        batch = next(it)
        if first_hash is None:
            first_hash = _batch_hash(batch)
        t = time.perf_counter()
        loss = side.step(batch)
        dt = time.perf_counter() - t
        trained += dt
        step += 1
        first_step_s = dt if first_step_s is None else first_step_s
        if trained >= next_eval:
            evaluate(step, trained, loss)
            next_eval += args.eval_every
    if curve[-1]["step"] != step:
        evaluate(step, trained, loss)
    it.close()
    return {
        "side": args.worker,
        "curve": curve,
        "steps": step,
        "schedule_steps": total,
        "train_seconds": trained,
        "first_step_s": first_step_s,
        "steps_per_s_after_first": (step - 1) / (trained - first_step_s) if step > 1 else None,
        "first_batch_sha256": first_hash,
        "val_sequences": int(sum(b["mask"].sum() for b in val)),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"jax": "stlight-jax", "torch": "PyTorch reference (eager)"}
    for side in SIDES:
        r = result["sides"].get(side)
        if r and "curve" in r:
            xs = [p["seconds"] for p in r["curve"]]
            ys = [p["val_mse"] for p in r["curve"]]
            ax.plot(xs, ys, marker="o", label=f"{labels[side]} ({r['steps']} steps)")
    ax.set_xlabel("training seconds (first-step compile included, evaluation excluded)")
    ax.set_ylabel("validation MSE per frame")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    m = result["machine"]
    ax.set_title(f"{result['config']}, {m['cpu_count']} CPU cores", fontsize=9)
    if ax.lines:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "mmnist.py") + ":cpu")
    p.add_argument("--budget", type=float, default=200.0, help="training seconds per side")
    p.add_argument("--eval-every", type=float, default=25.0, help="training seconds")
    p.add_argument("--num-val", type=int, default=500, help="validation sequences")
    p.add_argument("--short", action="store_true", help="--budget 45 --eval-every 15 --num-val 100")
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.short:
        args.budget, args.eval_every, args.num_val = 45.0, 15.0, 100
    if args.budget <= 0 or args.eval_every <= 0 or args.num_val < 1:
        p.error("--budget and --eval-every must be > 0 and --num-val >= 1")
    if args.worker:
        res = worker(args)
        Path(args.out).write_text(json.dumps(res))
        return res

    from benchmarks.bench import machine_info, write_result
    from stlight_jax import runtime
    from stlight_jax.config import files as config_io
    from stlight_jax.models import create_model
    from stlight_jax.weights import torch_files as convert

    try:
        config = config_io.load_config(args.config)
    except (ValueError, FileNotFoundError) as e:
        p.error(f"--config {args.config}: {e}")
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info("cpu"),
        "python": platform.python_version(),
        "config": args.config.replace(str(ROOT) + os.sep, ""),
        "budget_s": args.budget,
        "eval_every_s": args.eval_every,
        "num_val": args.num_val,
        "sides": {},
    }
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    if runtime.malloc_hugepages_possible():  # both sides, as train.py runs
        tunables = [t for t in (env.get("GLIBC_TUNABLES", ""), runtime.HUGETLB_TUNABLE) if t]
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    result["glibc_tunables"] = env.get("GLIBC_TUNABLES", "")
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "init.safetensors")
        model = create_model(config_io.model_config(config), seed=config.seed)
        convert.save_state_dict_file(convert.model_state_dict(model), weights)
        for side in args.sides:
            out = os.path.join(tmp, f"{side}.json")
            cmd = [sys.executable, str(Path(__file__)), "--worker", side, "--weights", weights,
                   "--config", args.config, "--budget", str(args.budget),
                   "--eval-every", str(args.eval_every), "--num-val", str(args.num_val),
                   "--data-dir", args.data_dir, "--out", out]  # fmt: skip
            proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, stderr=subprocess.PIPE)
            if proc.returncode != 0:
                result["sides"][side] = {"error": proc.stderr[-2000:]}
                print(proc.stderr[-2000:], file=sys.stderr)
            else:
                result["sides"][side] = json.loads(Path(out).read_text())
    hashes = {r.get("first_batch_sha256") for r in result["sides"].values() if "curve" in r}
    result["same_first_batch"] = len(hashes) == 1
    result["machine"]["loadavg_end"] = os.getloadavg()
    path = write_result(result, args.out, suffix="-time-to-accuracy")
    plot(result, path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.png')}")
    for side, r in result["sides"].items():
        if "curve" in r:
            last = r["curve"][-1]
            print(
                f"{side:6s} {r['steps']:5d} steps in {r['train_seconds']:.1f} s "
                f"(first step {r['first_step_s']:.1f} s): val MSE {last['val_mse']:.2f}"
            )
    return result


if __name__ == "__main__":
    done = main()
    if any("error" in r for r in done.get("sides", {}).values()):
        sys.exit(1)
