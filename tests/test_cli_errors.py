"""User errors on the command lines (cli/errors.py): bad flags, configs and files end train.py,
`python -m stlight_jax.convert` and evaluate.py with one line on stderr and exit status 2;
--verbose_errors shows the traceback."""

from __future__ import annotations

import numpy as np
import pytest

from stlight_jax.cli import errors as cli_errors
from tests import tiny_weights
from tests.cli_runs import assert_one_line_error, run_script


@pytest.mark.slow  # seven train.py runs: ~17 s on 2 cores
def test_train_cli_user_errors_are_one_line_exit_2(config, tmp_path):
    base = [f"--config=tests/tiny_config.py:{config.data.path}", f"--workdir={tmp_path}/run"]
    assert_one_line_error(
        run_script(["train.py"], "--config=configs/nothere.py", f"--workdir={tmp_path}/run"),
        "train.py",
        "config file 'configs/nothere.py' does not exist",
    )
    assert_one_line_error(
        run_script(["train.py"], *base, "--config.optimizer.learnig_rate=1e-3"),
        "train.py",
        "--config.optimizer.learnig_rate is not a known config field",
        "closest known key is --config.optimizer.learning_rate",
    )
    assert_one_line_error(
        run_script(["train.py"], *base, "--config.data.batch_size=0"),
        "train.py",
        "config.data.batch_size=0: must be >= 1",
    )
    # A flag value that does not parse, in a config override and in a plain flag.
    assert_one_line_error(
        run_script(["train.py"], *base, "--config.num_epochs=ten"),
        "train.py",
        "flag --config.num_epochs=ten: invalid literal for int()",
    )
    assert_one_line_error(
        run_script(["train.py"], *base, "--num_processes=two"),
        "train.py",
        "flag --num_processes=two: invalid literal for int()",
    )
    # Asked for, the traceback is there (flag or environment variable).
    for extra, env in ((["--verbose_errors"], None), ([], {cli_errors.VERBOSE_ENV: "1"})):
        proc = run_script(["train.py"], *base, "--config.data.batch_size=0", *extra, env=env)
        assert proc.returncode != 0 and "Traceback" in proc.stderr
        assert "ConfigError" in proc.stderr


@pytest.mark.slow  # four command-line runs: ~35 s on 2 cores
def test_convert_and_evaluate_cli_bad_files_are_one_line_exit_2(config, tmp_path):
    from PIL import Image
    from safetensors.numpy import save_file

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    cfg = f"tests/tiny_config.py:{config.data.path}"
    convert_cli = ["-m", "stlight_jax.convert"]
    imp = ["import", f"--weights={empty}", f"--config={cfg}", f"--out={tmp_path}/ckpt"]
    assert_one_line_error(
        run_script(convert_cli, *imp), "python -m stlight_jax.convert", "empty.safetensors", "empty"
    )
    proc = run_script(convert_cli, *imp, "--verbose_errors")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    # A damaged, non-empty one: the second half of a real weights file cut off.
    cut = tmp_path / "cut.safetensors"
    save_file(tiny_weights.state_dict(config, np.float32), str(cut))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    imp_cut = ["import", f"--weights={cut}", f"--config={cfg}", f"--out={tmp_path}/ckpt"]
    assert_one_line_error(
        run_script(convert_cli, *imp_cut),
        "python -m stlight_jax.convert",
        f"cannot read {str(cut)!r} as .safetensors",
        "file not fully covered",
    )

    # Predict mode on a folder holding a damaged PNG.
    weights = str(tmp_path / "w.safetensors")
    save_file(tiny_weights.state_dict(config, np.float32), weights)
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for t in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(frames / f"{t}.png")
    good = (frames / "2.png").read_bytes()
    (frames / "2.png").write_bytes(good[: len(good) // 3])  # a truncated file
    assert_one_line_error(
        run_script(
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
