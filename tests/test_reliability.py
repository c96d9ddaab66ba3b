"""Reliability: real faults and real bad inputs (issue 10), each refused or survived as the
README's "Reliability" table says."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import ml_dtypes
import numpy as np
import pytest

from stlight_jax import data
from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.cli import errors as cli_errors
from stlight_jax.config import files as config_io
from stlight_jax.config import validation as config_validation
from stlight_jax.weights import torch_files as convert
from stlight_jax.training import loop as train
from stlight_jax.training import workdir_lock
from stlight_jax.models import create_model
from tests import tiny_config
from tests.test_train import abstract_state, read_jsonl, train_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def config(tmp_path):
    return tiny_config.get_config(tiny_config.write_data(str(tmp_path / "data.npz")))


def _half_state_dict(config, dtype) -> dict[str, np.ndarray]:
    model = create_model(config_io.model_config(config), seed=5)
    return {
        k: v.astype(dtype) if v.dtype == np.float32 else v
        for k, v in convert.model_state_dict(model).items()
    }


def _floating_dtypes(tree) -> set[np.dtype]:
    return {
        np.dtype(x.dtype)
        for x in jax.tree.leaves(tree)
        if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
    }


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bfloat16", "float16"])
def test_half_precision_weights_import_as_float32(config, tmp_path, dtype):
    from flax import nnx
    from safetensors.numpy import save_file

    path = str(tmp_path / "half.safetensors")
    save_file(_half_state_dict(config, dtype), path)
    model = create_model(config_io.model_config(config), seed=0)
    convert.load_into_model(model, convert.load_state_dict_file(path), source=path)
    assert _floating_dtypes(nnx.state(model, nnx.Param)) == {np.dtype(np.float32)}
    assert _floating_dtypes(nnx.state(model, nnx.BatchStat)) == {np.dtype(np.float32)}
    # The values too: each the file's half-precision value, exactly, in float32.
    half = _half_state_dict(config, dtype)
    got = convert.model_state_dict(model)
    assert got.keys() == half.keys()
    for key, value in half.items():
        np.testing.assert_array_equal(got[key], value.astype(got[key].dtype), err_msg=key)
        assert value.dtype == dtype or not np.issubdtype(value.dtype, np.floating), key


def _first_step_loss(config, init_from: str | None) -> float:
    """The loss of train.py's first step from `init_from`'s weights (None: a fresh init),
    computed here with the same train step on the same first batch."""
    from stlight_jax import sharding, steps
    from stlight_jax.training import optimizer as optim
    from stlight_jax.training import schedules
    from stlight_jax.weights import loading as weights

    scheds = schedules.create_schedules(config, data.steps_per_epoch(config))
    tx = optim.create_optimizer(config, scheds)
    graphdef, state = steps.create_train_state(config, tx)
    if init_from:
        params, stats, _ = weights.load_init_from(
            init_from, graphdef, state["params"], state["batch_stats"]
        )
        state = {**state, "params": params, "batch_stats": stats, "opt_state": tx.init(params)}
    mesh = sharding.create_mesh(jax.devices()[:1])
    step = steps.create_train_step(graphdef, tx, scheds.lr, mesh)
    it = data.create_train_iterator(config)
    _, metrics = step(jax.device_put(state), sharding.global_batch(next(it), mesh))
    it.close()
    return float(metrics["loss"])


def test_bfloat16_init_from_trains_in_float32_and_resumes(config, tmp_path):
    """train.py --config.init_from= a bfloat16 .safetensors: training starts from those
    weights (its first loss is theirs, not a fresh init's); params, BN stats and Adam state
    are float32, so the next rerun restores the checkpoint instead of starting over."""
    from safetensors.numpy import save_file

    from tests.test_train import run_cli

    weights = str(tmp_path / "half.safetensors")
    save_file(_half_state_dict(config, ml_dtypes.bfloat16), weights)
    workdir = str(tmp_path / "run")
    args = [
        f"--config=tests/tiny_config.py:{config.data.path}",
        f"--workdir={workdir}",
        f"--config.init_from={weights}",
        "--config.num_epochs=1",
    ]
    proc = run_cli(args, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Initialised from PyTorch weights {weights}" in proc.stderr, proc.stderr[-3000:]
    first = next(r["train_loss"] for r in read_jsonl(workdir) if "train_loss" in r)
    imported, fresh = _first_step_loss(config, weights), _first_step_loss(config, None)
    assert first == pytest.approx(imported, rel=1e-6)
    assert abs(first - fresh) > 1e-3 * fresh, (first, fresh)
    config.init_from = weights
    config.num_epochs = 1

    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    restored = checkpoint.restore_latest_readable(manager, abstract_state(config))
    manager.close()
    assert restored is not None and restored[0] == 4
    assert _floating_dtypes(restored[1]) == {np.dtype(np.float32)}

    # The same command again (the same experiment): it restores step 4 rather than setting it
    # aside and training from init_from again.
    train.train_and_evaluate(config, workdir)
    records = read_jsonl(workdir)
    assert {"step": 4, "resumed_from_step": 4} in records
    assert train_steps(records) == [1, 2, 3, 4]
    assert not os.path.exists(os.path.join(workdir, checkpoint.UNREADABLE_DIR))


# ---------------------------------------------------------------------------------------------
# Non-finite data is refused at load, naming the file, the split and the first bad index.


def test_nan_in_custom_val_split_is_refused(config, tmp_path):
    with np.load(config.data.path) as z:
        parts = {k: z[k].copy() for k in z.files}
    parts["val"][5, 2, 3, 4, 0] = np.nan
    parts["val"][6, 0, 0, 0, 0] = np.inf
    np.savez(config.data.path, **parts)
    with pytest.raises(ValueError) as err:
        data.steps_per_epoch(config)
    msg = str(err.value)
    assert "data.npz: val" in msg and "sample 5" in msg and "(5, 2, 3, 4, 0)" in msg
    assert "nan" in msg and "\n" not in msg


def test_inf_in_lone_custom_array_is_refused(config, tmp_path):
    with np.load(config.data.path) as z:
        train_part = z["train"].copy()
    train_part[31, 7, 15, 15, 0] = -np.inf
    config.data.path = str(tmp_path / "lone.npy")
    np.save(config.data.path, train_part)
    with pytest.raises(ValueError, match=r"lone.npy .*train part, sample 31 .*-inf.*\(31, 7"):
        data.steps_per_epoch(config)


def test_nan_in_taxibj_is_refused(tmp_path):
    from stlight_jax.configs.common import get_base_config

    rng = np.random.default_rng(1)
    arrays = {
        f"{xy}_{s}": rng.uniform(-1, 1, (n, 4, 2, 32, 32)).astype(np.float32)
        for s, n in (("train", 6), ("test", 3))
        for xy in "XY"
    }
    arrays["Y_test"][2, 1, 0, 7, 9] = np.nan
    path = str(tmp_path / "dataset.npz")
    np.savez(path, **arrays)
    c = get_base_config()
    c.data.name, c.data.path, c.data.num_val = "taxibj", path, 2
    c.model.frames_in, c.model.frames_out, c.model.image_size, c.model.channels = 4, 4, (32, 32), 2
    with pytest.raises(ValueError, match=r"dataset.npz: Y_test: sample 2 .*nan.*\(2, 1, 0, 7, 9\)"):
        data.steps_per_epoch(c)


# ---------------------------------------------------------------------------------------------
# One config validation pass before any work; one-line errors with exit status 2 on the CLIs.


@pytest.mark.parametrize(
    "field, value, rule",
    [
        ("optimizer.learning_rate", -0.01, "must be a finite number > 0"),
        ("optimizer.learning_rate", 0.0, "must be a finite number > 0"),
        ("checkpoint_every_steps", -1, "must be >= 0"),
        ("data.batch_size", 0, "must be >= 1"),
        ("data.batch_size", -4, "must be >= 1"),
        ("num_epochs", 0, "must be >= 1"),
        ("optimizer.pct_start", 1.0, "must be a finite number > 0 and < 1"),
        ("optimizer.final_div_factor", float("nan"), "must be a finite number > 0"),
        ("optimizer.schedule", "linear", "must be one of ['onecycle', 'cosine']"),
    ],
)
def test_impossible_settings_are_refused_before_any_work(config, tmp_path, field, value, rule):
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    workdir = tmp_path / "run"
    with pytest.raises(config_validation.ConfigError) as err:
        train.train_and_evaluate(config, str(workdir))
    assert f"config.{field}={value!r}: {rule}" in str(err.value)
    assert "\n" not in str(err.value)
    assert not workdir.exists()  # refused before the workdir, data or compilation


def test_several_bad_fields_are_all_named_in_one_line(config, tmp_path):
    config.optimizer.learning_rate = -0.01
    config.data.batch_size = 0
    config.num_epochs = 0
    config.optimizer.schedule = "linear"
    workdir = tmp_path / "run"
    with pytest.raises(config_validation.ConfigError) as err:
        train.train_and_evaluate(config, str(workdir))
    msg = str(err.value)
    for bad in (
        "config.optimizer.learning_rate=-0.01: must be a finite number > 0",
        "config.data.batch_size=0: must be >= 1",
        "config.num_epochs=0: must be >= 1",
        "config.optimizer.schedule='linear': must be one of ['onecycle', 'cosine']",
    ):
        assert bad in msg, msg
    assert "\n" not in msg and msg.count("; ") >= 3
    assert not workdir.exists()


def test_misspelled_key_in_a_config_names_the_closest_known_key(config, tmp_path):
    config.optimizer.learnig_rate = 1e-3  # a config file's typo adds a field silently
    with pytest.raises(
        config_validation.ConfigError,
        match=r"config.optimizer.learnig_rate is "
        r"not a known config field; the closest known key is "
        r"config.optimizer.learning_rate",
    ):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_every_shipped_config_passes_validation():
    import importlib

    args = {
        "mmnist": importlib.import_module("stlight_jax.configs.mmnist").SIZES,
        "taxibj": importlib.import_module("stlight_jax.configs.taxibj").SIZES,
        "kth": tuple(importlib.import_module("stlight_jax.configs.kth").DIMS),
        "kth40": (None,),
        "kitticaltech": tuple(importlib.import_module("stlight_jax.configs.kitticaltech").SIZES),
        "custom": (None,),
        "ablations": tuple(importlib.import_module("stlight_jax.configs.ablations").ROWS),
    }
    for name, choices in args.items():
        for arg in choices:
            config = importlib.import_module(f"stlight_jax.configs.{name}").get_config(arg)
            config_validation.validate(config)
    # Every field of the base schema has a rule (a new field without one is type-checked only).
    assert not config_validation._schema_defaults()


def _run(script: list[str], *args: str, env: dict | None = None, timeout: int = 120):
    base = {k: v for k, v in os.environ.items() if k != cli_errors.VERBOSE_ENV}
    env = {**base, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(
        [sys.executable, *script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc, prog: str, *needles: str) -> str:
    """Exit status 2, no traceback, and exactly one 'prog: error:' line holding `needles`."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith(lines[0]), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_train_cli_user_errors_are_one_line_exit_2(config, tmp_path):
    base = [f"--config=tests/tiny_config.py:{config.data.path}", f"--workdir={tmp_path}/run"]
    assert_one_line_error(
        _run(["train.py"], "--config=configs/nothere.py", f"--workdir={tmp_path}/run"),
        "train.py",
        "config file 'configs/nothere.py' does not exist",
    )
    assert_one_line_error(
        _run(["train.py"], *base, "--config.optimizer.learnig_rate=1e-3"),
        "train.py",
        "--config.optimizer.learnig_rate is not a known config field",
        "closest known key is --config.optimizer.learning_rate",
    )
    assert_one_line_error(
        _run(["train.py"], *base, "--config.data.batch_size=0"),
        "train.py",
        "config.data.batch_size=0: must be >= 1",
    )
    # A flag value that does not parse, in a config override and in a plain flag.
    assert_one_line_error(
        _run(["train.py"], *base, "--config.num_epochs=ten"),
        "train.py",
        "flag --config.num_epochs=ten: invalid literal for int()",
    )
    assert_one_line_error(
        _run(["train.py"], *base, "--num_processes=two"),
        "train.py",
        "flag --num_processes=two: invalid literal for int()",
    )
    # Asked for, the traceback is there (flag or environment variable).
    for extra, env in ((["--verbose_errors"], None), ([], {cli_errors.VERBOSE_ENV: "1"})):
        proc = _run(["train.py"], *base, "--config.data.batch_size=0", *extra, env=env)
        assert proc.returncode != 0 and "Traceback" in proc.stderr
        assert "ConfigError" in proc.stderr


def test_convert_and_evaluate_cli_bad_files_are_one_line_exit_2(config, tmp_path):
    from PIL import Image
    from safetensors.numpy import save_file

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    cfg = f"tests/tiny_config.py:{config.data.path}"
    convert_cli = ["-m", "stlight_jax.convert"]
    imp = ["import", f"--weights={empty}", f"--config={cfg}", f"--out={tmp_path}/ckpt"]
    assert_one_line_error(
        _run(convert_cli, *imp), "python -m stlight_jax.convert", "empty.safetensors", "empty"
    )
    proc = _run(convert_cli, *imp, "--verbose_errors")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    # A damaged, non-empty one: the second half of a real weights file cut off.
    cut = tmp_path / "cut.safetensors"
    save_file(_half_state_dict(config, np.float32), str(cut))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    imp_cut = ["import", f"--weights={cut}", f"--config={cfg}", f"--out={tmp_path}/ckpt"]
    assert_one_line_error(
        _run(convert_cli, *imp_cut),
        "python -m stlight_jax.convert",
        f"cannot read {str(cut)!r} as .safetensors",
        "file not fully covered",
    )

    # Predict mode on a folder holding a damaged PNG.
    weights = str(tmp_path / "w.safetensors")
    save_file(_half_state_dict(config, np.float32), weights)
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for t in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(frames / f"{t}.png")
    good = (frames / "2.png").read_bytes()
    (frames / "2.png").write_bytes(good[: len(good) // 3])  # a truncated file
    assert_one_line_error(
        _run(
            ["evaluate.py"],
            f"--config={cfg}",
            f"--weights={weights}",
            "--mode=predict",
            f"--input={frames}",
            f"--out={tmp_path}/pred",
        ),
        "evaluate.py",
        "2.png: cannot read as an image",
    )


# ---------------------------------------------------------------------------------------------
# Workdir lock; a full disk.

_HOLDER = """
import sys, time
from stlight_jax.training import workdir_lock
with workdir_lock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _start_holder(workdir: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, workdir],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_job_on_a_workdir_stops_at_once_naming_the_holder(config, tmp_path):
    import socket

    workdir = str(tmp_path / "run")
    holder = _start_holder(workdir)
    try:
        lock_file = os.path.join(workdir, workdir_lock.LOCK_FILE)
        with open(lock_file) as f:
            before = f.read()
        with pytest.raises(workdir_lock.WorkdirLockedError) as err:
            train.train_and_evaluate(config, workdir)
        msg = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started " in msg
        assert "\n" not in msg
        # The first job's workdir is untouched: no config.json, metrics or checkpoints written.
        assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE]
        with open(lock_file) as f:
            assert f.read() == before
        # The same through train.py: one line, exit status 2.
        assert_one_line_error(
            _run(
                ["train.py"],
                f"--config=tests/tiny_config.py:{config.data.path}",
                f"--workdir={workdir}",
            ),
            "train.py",
            f"is in use by another job (pid {holder.pid}",
        )
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up, its lock file stays filled in
        holder.wait()

    warnings = []
    with workdir_lock.hold(workdir, log=warnings.append):
        with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert len(warnings) == 1 and f"left by a job that is gone (pid {holder.pid}" in warnings[0]
    with workdir_lock.hold(workdir, log=warnings.append):  # a clean exit leaves no stale lock
        pass
    assert len(warnings) == 1


def _mount_tmpfs(where, size: str) -> None:
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"a real full disk needs a small tmpfs, and mount failed (not root?): "
            f"{proc.stderr.strip()}"
        )


def test_disk_full_while_saving_names_the_workdir_keeps_checkpoints_and_resumes(config, tmp_path):
    disk = tmp_path / "small_disk"
    _mount_tmpfs(disk, "300k")  # room for one checkpoint of the tiny model, not two
    try:
        workdir = str(disk / "run")
        config.num_epochs = 1
        config.checkpoint_every_steps = 1
        with pytest.raises(checkpoint.DiskFullError) as err:
            train.train_and_evaluate(config, workdir)
        msg = str(err.value)
        assert f"disk full while writing to workdir {workdir} (No space left on device)" in msg
        # Which step fills the disk depends on when Orbax deletes the older checkpoint (CI once
        # fitted step 2): the message must name the step that really restores.
        named = re.search(r"latest complete checkpoint, step (\d+), is intact", msg)
        assert named is not None and "\n" not in msg, msg
        manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
        restored = checkpoint.restore_latest_readable(manager, abstract_state(config))
        manager.close()
        assert restored is not None and restored[0] == int(named.group(1)) < 4
        resumed_step = restored[0]

        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        train.train_and_evaluate(config, workdir)
        records = read_jsonl(workdir)
        assert {"step": resumed_step, "resumed_from_step": resumed_step} in records
        assert train_steps(records) == [1, 2, 3, 4]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ---------------------------------------------------------------------------------------------
# After a resume, metrics.jsonl and TensorBoard hold each step once.


def _tensorboard_steps(workdir: str) -> dict[str, list[int]]:
    """Steps per scalar tag as TensorBoard shows them (it applies the purge events)."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="reading event files as TensorBoard does needs the tensorboard package",
    )
    acc = accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_steps_redone_after_a_resume_are_logged_once(config, tmp_path):
    workdir = str(tmp_path / "run")
    config.num_epochs = 1
    config.checkpoint_every_steps = 2
    train.train_and_evaluate(config, workdir)
    # Damage step 4 (its biggest array chunk): the rerun sets it aside, resumes at step 2 and
    # trains, validates and tests steps 3-4 again.
    chunks = glob.glob(
        os.path.join(checkpoint.checkpoint_dir(workdir), "4", "state", "*", "d", "*")
    )
    with open(max(chunks, key=os.path.getsize), "r+b") as f:
        f.seek(100)
        f.write(bytes(200))
    train.train_and_evaluate(config, workdir)
    records = read_jsonl(workdir)
    assert {"step": 2, "resumed_from_step": 2} in records
    # And once more with nothing left to train: only the test pass is redone.
    train.train_and_evaluate(config, workdir)

    records = read_jsonl(workdir)
    assert train_steps(records) == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_mse" in r] == [4]
    assert [r["step"] for r in records if "test_mse" in r] == [4]
    tb = _tensorboard_steps(workdir)
    assert tb["train_loss"] == [1, 2, 3, 4] and tb["val_mse"] == [4] and tb["test_mse"] == [4]


# ---------------------------------------------------------------------------------------------
# Integrity that damage cannot switch off: digests beside the data, a copy in Orbax's metadata.


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A tiny run with checkpoints at steps 2 and 4 (each test damages a copy of it)."""
    root = tmp_path_factory.mktemp("trained")
    config = tiny_config.get_config(tiny_config.write_data(str(root / "data.npz")))
    config.num_epochs = 1
    config.checkpoint_every_steps = 2
    train.train_and_evaluate(config, str(root / "run"))
    return config, str(root / "run")


def _damage_metadata(step_dir: str, how: str) -> None:
    path = os.path.join(step_dir, "_CHECKPOINT_METADATA")
    if how == "delete":
        os.remove(path)
    elif how == "truncate":
        os.truncate(path, os.path.getsize(path) // 3)
    else:  # garble
        with open(path, "r+b") as f:
            f.seek(20)
            f.write(b"\x00garbage\xff" * 8)


def _garble_biggest_chunk(step_dir: str) -> None:
    chunks = glob.glob(os.path.join(step_dir, "state", "*", "d", "*"))
    with open(max(chunks, key=os.path.getsize), "r+b") as f:
        f.seek(100)
        f.write(bytes(200))


@pytest.mark.parametrize(
    "damage",
    [
        "metadata deleted + chunk garbled",
        "metadata truncated + chunk garbled",
        "metadata garbled + chunk garbled",
        "metadata deleted + digest file deleted",
        "digest file garbled",
    ],
)
def test_damaged_digests_never_let_a_step_be_used(trained_workdir, tmp_path, damage):
    import shutil

    from stlight_jax.evaluation import runner as evaluation
    from stlight_jax.weights import loading as weights

    config, original = trained_workdir
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)
    step_dir = os.path.join(checkpoint.checkpoint_dir(workdir), "4")
    digest_file = os.path.join(step_dir, checkpoint.DIGEST_FILE)
    assert os.path.exists(digest_file)
    for part in damage.split(" + "):
        what, _, how = part.rpartition(" ")
        if what == "metadata":
            _damage_metadata(step_dir, how)
        elif what == "chunk":
            _garble_biggest_chunk(step_dir)
        elif how == "deleted":
            os.remove(digest_file)
        else:
            with open(digest_file, "r+b") as f:
                f.seek(30)
                f.write(b"#####")

    # Evaluation of that step: refused in one line when its digests are gone; with them, it
    # either refuses or loads exactly the saved weights (the garbled bytes may lie in Adam's
    # state, which evaluation does not read). Never a silent 'MSE nan'.
    if "chunk" not in damage:
        with pytest.raises(checkpoint.CorruptCheckpointError, match=r"^step 4: [^\n]*$"):
            evaluation.run(
                evaluation.EvalOptions(workdir=workdir, step="latest", out=str(tmp_path / "eval"))
            )
    else:
        try:
            loaded = weights.load_model(config, workdir=workdir, step="latest")
        except checkpoint.CorruptCheckpointError as e:
            assert str(e).startswith("step 4: ") and "\n" not in str(e)
        else:
            with open(os.path.join(original, "checkpoints", "4", checkpoint.DIGEST_FILE)) as f:
                want = json.load(f)[checkpoint.DIGEST_KEY]
            got = checkpoint.digests({"params": loaded.params, "batch_stats": loaded.batch_stats})
            assert got == {k: want[k] for k in got}
    # Training: the step is set aside and the run resumes from step 2.
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir))
    warnings = []
    restored = checkpoint.restore_latest_readable(
        manager, abstract_state(config), log=warnings.append
    )
    manager.close()
    assert restored is not None and restored[0] == 2, warnings
    assert "checkpoint at step 4" in warnings[0] and "unreadable" in warnings[0]
    assert glob.glob(os.path.join(workdir, checkpoint.UNREADABLE_DIR, "4.*"))


def test_evaluate_cli_refuses_an_unverifiable_step_in_one_line(trained_workdir, tmp_path):
    import shutil

    _, original = trained_workdir
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)
    step_dir = os.path.join(checkpoint.checkpoint_dir(workdir), "4")
    _damage_metadata(step_dir, "delete")
    os.remove(os.path.join(step_dir, checkpoint.DIGEST_FILE))
    _garble_biggest_chunk(step_dir)
    assert_one_line_error(
        _run(["evaluate.py"], f"--workdir={workdir}", "--step=latest"),
        "evaluate.py",
        "step 4: no readable SHA-256 digests",
    )


def test_a_failed_checkpoint_read_is_reported_in_one_short_line(trained_workdir, tmp_path):
    import shutil

    config, original = trained_workdir
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)
    chunks = glob.glob(
        os.path.join(checkpoint.checkpoint_dir(workdir), "4", "state", "*", "d", "*")
    )
    biggest = max(chunks, key=os.path.getsize)
    os.truncate(biggest, 100)
    proc = _run(["evaluate.py"], f"--workdir={workdir}", "--step=4")
    line = assert_one_line_error(proc, "evaluate.py", "step 4: the checkpoint in", "OUT_OF_RANGE")
    for noise in ("TensorStore details", "bound method", "Event loop is closed"):
        assert noise not in proc.stderr
    assert len(line) < 600

    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir))
    warnings = []
    restored = checkpoint.restore_latest_readable(
        manager, abstract_state(config), log=warnings.append
    )
    manager.close()
    assert restored[0] == 2
    assert "OUT_OF_RANGE" in warnings[0] and "bound method" not in warnings[0]
    assert "\n" not in warnings[0] and len(warnings[0]) < 600


# ---------------------------------------------------------------------------------------------
# SIGTERM during validation or the test pass: acted on within a batch, checkpoint kept, exit 0.


@pytest.mark.parametrize("phase", ["validation", "the test pass"])
def test_sigterm_during_an_evaluation_pass_saves_exits_0_and_the_rerun_redoes_it(tmp_path, phase):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "data.npz")
    # 2,000 validation and test sequences (250 batches each): passes that last long enough
    # for the signal to land inside them.
    np.savez(
        path,
        train=rng.random((32, 8, 16, 16, 1), dtype=np.float32),
        val=rng.random((2000, 8, 16, 16, 1), dtype=np.float32),
        test=rng.random((2000, 8, 16, 16, 1), dtype=np.float32),
    )
    workdir = str(tmp_path / "run")
    args = [
        f"--config=tests/tiny_config.py:{path}",
        f"--workdir={workdir}",
        "--config.num_epochs=1",
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            text = log_path.read_text()
            # Logged once the loop has checked for a signal after step 4 (the epoch's end); a
            # signal sent on the train loss record alone could land before that check.
            if phase == "validation" and "step 4: validating" in text:
                break
            if phase == "the test pass" and "val MSE" in text:  # logged before the test pass
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before the signal"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text()
    assert rc == 0, text[-3000:]
    assert "signal 15 received: stopping after the current step or evaluation batch" in text
    assert f"signal 15 received during {phase}" in text, text[-3000:]
    assert not os.path.exists(os.path.join(workdir, "test_metrics.json"))
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    assert manager.latest_step() == 4
    val_saved = checkpoint.VAL_METRIC in (manager.metrics(4) or {})
    manager.close()
    assert val_saved == (phase == "the test pass")

    proc = _run(["train.py"], *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(workdir)
    assert train_steps(records) == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_mse" in r] == [4]
    assert [r["step"] for r in records if "test_mse" in r] == [4]
    with open(os.path.join(workdir, "test_metrics.json")) as f:
        assert json.load(f)["checkpoint_step"] == 4
    manager = checkpoint.create_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
    assert checkpoint.best_step(manager) == 4
    manager.close()


def test_empty_weights_files_say_why_they_cannot_be_read(tmp_path):
    pytest.importorskip("torch", reason="reading a .pth needs the PyTorch CPU wheel")
    for name, kind in (("empty.pth", "a torch checkpoint"), ("empty.safetensors", ".safetensors")):
        path = tmp_path / name
        path.write_bytes(b"")
        with pytest.raises(ValueError) as err:
            convert.load_state_dict_file(str(path))
        msg = str(err.value)
        assert f"cannot read {str(path)!r} as {kind}: the file is empty (0 bytes;" in msg
        assert "\n" not in msg


def test_damaged_weights_files_say_why_they_cannot_be_read(config, tmp_path):
    """Non-empty but damaged .safetensors: cut short, a garbled header, not one at all."""
    from safetensors.numpy import save_file

    good = tmp_path / "good.safetensors"
    save_file(_half_state_dict(config, np.float32), str(good))
    raw = good.read_bytes()
    garbled = bytearray(raw)
    garbled[8:40] = bytes(32)  # the JSON header's first bytes
    damaged = {
        "cut.safetensors": (raw[: len(raw) // 2], "file not fully covered"),
        "garbled.safetensors": (bytes(garbled), "invalid JSON in header"),
        "text.safetensors": (b"not weights " * 40, "header too large"),
    }
    for name, (content, reason) in damaged.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError) as err:
            convert.load_state_dict_file(str(path))
        msg = str(err.value)
        assert f"cannot read {str(path)!r} as .safetensors:" in msg and reason in msg, msg
        assert "\n" not in msg


_LOCK_WORKER = """
import sys
import jax
jax.distributed.initialize(f"127.0.0.1:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[3]))
from stlight_jax.training import workdir_lock
try:
    with workdir_lock.hold_for_job(sys.argv[1]):
        print("locked", jax.process_index(), flush=True)
except workdir_lock.WorkdirLockedError as e:
    print("refused", jax.process_index(), e, flush=True)
"""


def test_two_process_job_takes_the_lock_on_process_0_and_every_process_is_refused_together(
    tmp_path,
):
    from tests.test_distributed import free_port

    workdir = str(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")

    def job() -> list[str]:
        port = str(free_port())
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _LOCK_WORKER, workdir, port, str(pid)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for pid in (0, 1)
        ]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        return outs

    outs = job()
    assert "locked 0" in outs[0] and "locked 1" in outs[1]
    holder = _start_holder(workdir)
    try:
        outs = job()
    finally:
        holder.kill()
        holder.wait()
    assert f"refused 0 workdir {workdir} is in use by another job (pid {holder.pid}" in outs[0]
    assert f"refused 1 process 0 found workdir {workdir} in use by another job" in outs[1]
