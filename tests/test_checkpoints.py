"""Orbax checkpoints under real damage (checkpoints/): a full disk named in one line with the
earlier steps intact and resumable (disk_full.py), digests that damage cannot switch off
(integrity.py), and a failed read reported in one short line (manager.py)."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess

import pytest

from stlight_jax.checkpoints import disk_full, integrity
from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.training import loop as train
from tests import tiny_config
from tests.cli_runs import assert_one_line_error, run_script
from tests.test_train import abstract_state, read_jsonl, train_steps

# ---------------------------------------------------------------------------------------------
# A full disk while saving.


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


@pytest.mark.slow  # two training runs on a tmpfs: ~20 s on 2 cores
def test_disk_full_while_saving_names_the_workdir_keeps_checkpoints_and_resumes(config, tmp_path):
    disk = tmp_path / "small_disk"
    _mount_tmpfs(disk, "300k")  # room for one checkpoint of the tiny model, not two
    try:
        workdir = str(disk / "run")
        config.num_epochs = 1
        config.checkpoint_every_steps = 1
        with pytest.raises(disk_full.DiskFullError) as err:
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
    digest_file = os.path.join(step_dir, integrity.DIGEST_FILE)
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
        with pytest.raises(integrity.CorruptCheckpointError, match=r"^step 4: [^\n]*$"):
            evaluation.run(
                evaluation.EvalOptions(workdir=workdir, step="latest", out=str(tmp_path / "eval"))
            )
    else:
        try:
            loaded = weights.load_model(config, workdir=workdir, step="latest")
        except integrity.CorruptCheckpointError as e:
            assert str(e).startswith("step 4: ") and "\n" not in str(e)
        else:
            with open(os.path.join(original, "checkpoints", "4", integrity.DIGEST_FILE)) as f:
                want = json.load(f)[integrity.DIGEST_KEY]
            got = integrity.digests({"params": loaded.params, "batch_stats": loaded.batch_stats})
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
    os.remove(os.path.join(step_dir, integrity.DIGEST_FILE))
    _garble_biggest_chunk(step_dir)
    assert_one_line_error(
        run_script(["evaluate.py"], f"--workdir={workdir}", "--step=latest"),
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
    proc = run_script(["evaluate.py"], f"--workdir={workdir}", "--step=4")
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
