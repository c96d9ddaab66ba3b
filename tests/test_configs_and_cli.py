"""Every config file builds a valid model of the documented size; the convert CLI round-trips."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from stlight_jax.config.files import load_config
from stlight_jax.model_size import PAPER_SIZES, model_size
from stlight_jax.models import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPECS = [f"configs/mmnist.py:{s}" for s in ("XS", "S", "M", "L", "XL", "cpu")]
SPECS += [f"configs/taxibj.py:{s}" for s in ("S", "M", "L")]
SPECS += [f"configs/kth.py:{s}" for s in ("S", "M", "L", "XL")] + ["configs/custom.py"]
SPECS += [f"configs/kth40.py:{s}" for s in ("S", "M", "L", "XL")]
SPECS += [f"configs/kitticaltech.py:{s}" for s in ("0.1M", "0.5M", "1M", "3M", "6M", "15M")]
SPECS += ["configs/ablations.py:no_skip,XS", "configs/ablations.py:reassemble_shuffle"]
SPECS += ["configs/ablations.py:skip_fifths,XL"]


@pytest.mark.parametrize("spec", SPECS)
def test_config_builds_a_valid_model(spec):
    config = load_config(os.path.join(ROOT, spec))
    cfg = ModelConfig.from_config(config.model)
    key = config.name
    if key in PAPER_SIZES:
        assert model_size(cfg).params == model_size(ModelConfig(**PAPER_SIZES[key][0])).params
    module = open(os.path.join(ROOT, spec.split(":")[0])).read()
    assert "python train.py --config=" in module  # the docstring gives the command


def test_unknown_size_is_an_error():
    with pytest.raises(ValueError, match="unknown size 'XXL'"):
        load_config(os.path.join(ROOT, "configs/mmnist.py:XXL"))
    for name in ("kth40", "kitticaltech"):
        with pytest.raises(ValueError, match=f"configs/{name}.py: unknown size 'XXL'"):
            load_config(os.path.join(ROOT, f"configs/{name}.py:XXL"))


def test_ablation_rows_change_one_switch_of_the_mmnist_config():
    from stlight_jax.configs import ablations

    for row, switch in ablations.ROWS.items():
        for size in ablations.SIZES:
            c = load_config(os.path.join(ROOT, f"configs/ablations.py:{row},{size}"))
            base = load_config(os.path.join(ROOT, f"configs/mmnist.py:{size}"))
            assert c.model.to_dict() == {**base.model.to_dict(), **switch}, (row, size)
            assert c.optimizer.to_dict() == base.optimizer.to_dict()
    assert load_config(os.path.join(ROOT, "configs/ablations.py:no_skip")).model.dim == 1000
    with pytest.raises(ValueError, match="configs/ablations.py: unknown row 'skip'"):
        load_config(os.path.join(ROOT, "configs/ablations.py:skip"))
    with pytest.raises(ValueError, match="configs/ablations.py: unknown size 'cpu'"):
        load_config(os.path.join(ROOT, "configs/ablations.py:no_skip,cpu"))


def test_kitticaltech_sizes_span_figure_4_with_the_stated_counts():
    from stlight_jax.configs import kitticaltech

    doc = kitticaltech.__doc__
    counts = []
    for size, stated in kitticaltech.PARAMS.items():
        c = load_config(os.path.join(ROOT, f"configs/kitticaltech.py:{size}"))
        n = model_size(ModelConfig.from_config(c.model)).params
        assert n == stated, size
        assert f"{stated:,}" in doc, size  # the docstring table states the same count
        counts.append(n)
    assert 0.1e6 <= min(counts) < 0.15e6 and 14e6 < max(counts) <= 15e6
    assert (c.model.frames_in, c.model.frames_out, c.model.channels) == (10, 1, 3)
    assert tuple(c.model.image_size) == (128, 160)


def test_table2_hyperparameters():
    c = load_config(os.path.join(ROOT, "configs/mmnist.py:L"))
    assert (c.optimizer.learning_rate, c.data.batch_size, c.num_epochs) == (3e-3, 16, 200)
    assert (c.optimizer.schedule, c.optimizer.final_div_factor) == ("onecycle", 1e4)
    t = load_config(os.path.join(ROOT, "configs/taxibj.py:L"))
    assert (t.optimizer.learning_rate, t.optimizer.schedule, t.num_epochs) == (3e-3, "cosine", 50)
    k = load_config(os.path.join(ROOT, "configs/kth.py:L"))
    assert (k.optimizer.learning_rate, k.data.batch_size, k.num_epochs) == (5e-4, 12, 100)
    k40 = load_config(os.path.join(ROOT, "configs/kth40.py:L"))
    assert (k40.model.frames_in, k40.model.frames_out, k40.name) == (10, 40, "kth40_L")
    assert k40.model.to_dict() == {**k.model.to_dict(), "frames_out": 40}
    assert (k40.optimizer.to_dict(), k40.num_epochs) == (k.optimizer.to_dict(), 100)
    kc = load_config(os.path.join(ROOT, "configs/kitticaltech.py:15M"))
    assert (kc.optimizer.learning_rate, kc.data.batch_size, kc.num_epochs) == (1e-2, 8, 100)
    assert (kc.optimizer.schedule, kc.optimizer.final_div_factor) == ("onecycle", 3000)


@pytest.mark.slow  # four convert runs: ~30 s on 2 cores
def test_convert_cli_round_trip(tmp_path):
    torch = pytest.importorskip("torch", reason="the CLI round trip starts from a torch file")
    from conftest import randomize_reference

    from stlight_jax.reference import reference_from_config

    config = load_config(os.path.join(ROOT, "configs/mmnist.py:cpu"))
    config.model.dim, config.model.depth = 32, 3
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(config.to_json())
    ref = reference_from_config(ModelConfig.from_config(config.model))
    randomize_reference(ref, seed=3)
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "w.ckpt"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "stlight_jax.convert", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = cli(
        "import",
        f"--config={cfg_path}",
        f"--weights={tmp_path / 'w.ckpt'}",
        f"--out={tmp_path / 'ckpt'}",
    )
    assert r.returncode == 0, r.stderr
    for out in ("back.safetensors", "back.pth"):
        r = cli(
            "export",
            f"--config={cfg_path}",
            f"--checkpoint={tmp_path / 'ckpt'}",
            f"--out={tmp_path / out}",
        )
        assert r.returncode == 0, r.stderr
    from safetensors.numpy import load_file

    back_st = load_file(str(tmp_path / "back.safetensors"))
    back_pt = torch.load(tmp_path / "back.pth", weights_only=True)
    for k, v in ref.state_dict().items():
        assert np.array_equal(back_st[k], v.numpy()) and back_st[k].dtype == v.numpy().dtype, k
        assert torch.equal(back_pt[k], v), k
    # A wrongly sized model is refused with one line naming the keys.
    config.model.dim = 48
    cfg_path.write_text(config.to_json())
    r = cli(
        "import",
        f"--config={cfg_path}",
        f"--weights={tmp_path / 'w.ckpt'}",
        f"--out={tmp_path / 'bad'}",
    )
    assert r.returncode != 0
    assert "wrongly shaped" in r.stderr and "patch_encoder.0.weight" in r.stderr


_UNRAISABLE = """
import asyncio, gc, logging, sys
from stlight_jax.cli import errors as cli_errors

logging.basicConfig()  # as absl does: asyncio's complaints reach stderr

class Leftover:  # what Orbax leaves after a failed read: a finaliser that raises
    def __del__(self):
        raise RuntimeError("a pending read failed too")

# ... and futures whose failure nobody retrieved, collected once the command has failed.
loop = asyncio.new_event_loop()
orphan = loop.create_future()
orphan.set_exception(RuntimeError("an orphaned read failed"))
try:
    with cli_errors.unraisables_held(verbose=sys.argv[2] == "verbose"):
        Leftover()
        inner = loop.create_future()  # one collected while the command still runs
        inner.set_exception(RuntimeError("an inner read failed"))
        del inner
        print("inside", file=sys.stderr, flush=True)
        if sys.argv[1] == "user-error":
            cli_errors.fail("prog", "the one line")
finally:
    del orphan
    gc.collect()
"""


@pytest.mark.parametrize("outcome", ["user-error", "success"])
@pytest.mark.parametrize("verbose", ["quiet", "verbose"])
def test_exceptions_python_cannot_raise_never_add_a_traceback_to_a_user_error(outcome, verbose):
    proc = subprocess.run(
        [sys.executable, "-c", _UNRAISABLE, outcome, verbose],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    shown = "RuntimeError: a pending read failed too" in proc.stderr
    for orphan in ("an orphaned read failed", "an inner read failed"):
        assert (orphan in proc.stderr) == (outcome == "success" or verbose == "verbose")
    if outcome == "user-error":
        assert proc.returncode == 2
        assert "prog: error: the one line" in proc.stderr
        # Held back and dropped unless the traceback was asked for.
        assert shown == (verbose == "verbose"), proc.stderr
        if verbose == "quiet":
            assert proc.stderr.splitlines() == ["inside", "prog: error: the one line"]
    else:
        assert proc.returncode == 0
        assert shown, proc.stderr  # otherwise printed as usual, once the block ends
        if verbose == "quiet":  # held back until then
            assert proc.stderr.index("inside") < proc.stderr.index("Exception ignored")
            assert proc.stderr.index("inside") < proc.stderr.index("an inner read failed")
