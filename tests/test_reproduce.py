"""`python -m stlight_jax.reproduce`: every row's config, --list, --table (and the README's copy
of it), the one-line errors, and --dry-run through the real training code."""

from __future__ import annotations

import copy
import json
import os

import pytest

from stlight_jax import paper_rows as pr
from stlight_jax import reproduce as rp
from stlight_jax.cli import reproduce as cli_reproduce
from stlight_jax.config import validation as config_validation
from stlight_jax.model_size import model_size
from stlight_jax.weights.loading import model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_row_builds_validates_and_shrinks(tmp_path):
    assert len(pr.ROWS) == 77
    for row in pr.ROWS.values():
        config = pr.row_config(row)
        config_validation.validate(config)
        for key, value in row.overrides:
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == value, (row.name, key)
        assert set(row.paper_dict) <= set(pr.METRICS), row.name
        assert bool(row.paper) != (row.source == "Figure 4"), row.name
        assert 0 < pr.expected_hours(config) < 300, row.name
        tiny = rp.shrink_for_dry_run(copy.deepcopy(config), str(tmp_path / "data"))
        config_validation.validate(tiny)
        assert (tiny.model.dim, tiny.model.depth, tiny.num_epochs) == (16, 3, 1)
        for field in ("skip", "decoder", "init", "k1", "k2", "overlap", "patch"):
            assert tiny.model[field] == config.model[field], (row.name, field)
        assert tiny.optimizer.to_dict() == config.optimizer.to_dict()
    xl = pr.row_config(pr.get_row("table4-no_skip-XL"))
    assert xl.model.skip == "none" and model_size(model_config(xl)).params == 42_696_810
    assert pr.get_row("table4-thirds-XL").paper_dict == {"mse": 21.55}
    assert pr.get_row("table4-skip_fifths-XL").paper_dict == {"mse": 21.92}
    e500 = pr.row_config(pr.get_row("table8-lr1e-3-e500"))
    assert (e500.num_epochs, e500.optimizer.learning_rate, e500.model.dim) == (500, 1e-3, 1400)
    assert pr.get_row("table3-taxibj-L").paper_dict["mse_x100"] == 30.87
    # The estimate reproduces its own basis: MMNIST-L, 125,000 steps at 6.3 x 102.8 ms.
    l_train_h = 125_000 * 0.1028 * 6.3 / 3600
    assert pr.expected_hours(pr.row_config(pr.get_row("table3-mmnist-L"))) == pytest.approx(
        l_train_h * (1 + 200 * 1_000 / 3.05 / 2_000_000 + 10_000 / 3.05 / 2_000_000)
    )


def test_data_and_set_options_and_their_errors():
    row = pr.get_row("table3-mmnist-S")
    c = pr.row_config(row, "x/mnist_test_seq.npy", pr.parse_sets(["compute_dtype=bfloat16"]))
    assert c.data.test_file == "x/mnist_test_seq.npy" and c.compute_dtype == "bfloat16"
    assert pr.row_config(pr.get_row("table3-kth-S"), "kth/").data.path == "kth/"
    with pytest.raises(ValueError, match="'model.dimm' is not a config field"):
        pr.row_config(row, sets=pr.parse_sets(["model.dimm=3"]))
    with pytest.raises(ValueError, match="--set 'lr': expected KEY=VALUE"):
        pr.parse_sets(["lr"])
    with pytest.raises(ValueError, match="unknown row 'table4-no_skip-XXL'.*table4-thirds-XS"):
        pr.get_row("table4-no_skip-XXL")


def _fake_row(tmp_path, name, dry_run=False, **measured):
    d = tmp_path / name
    d.mkdir()
    paper = pr.get_row(name).paper_dict
    rec = {
        "row": name,
        "measured": measured,
        "difference": {m: measured[m] - v for m, v in paper.items()},
        "hardware": {"devices": "1 x NVIDIA RTX A6000"},
        "wall_time_s": 3600 * 21.5,
        "commit": "0123456789abcdef",
        "dry_run": dry_run,
    }
    (d / "row.json").write_text(json.dumps(rec))
    return str(d)


def test_table_list_and_the_readme_copy(tmp_path, capsys):
    done = _fake_row(tmp_path, "table4-no_skip-M", mse=22.80)
    table = rp.render_table([done]).splitlines()
    assert len(table) == 2 + 77
    (line,) = [ln for ln in table if ln.startswith("| table4-no_skip-M |")]
    assert (
        "MSE 22.59 | MSE 22.80 (+0.21); 1 x NVIDIA RTX A6000, 21.5 h, commit 0123456789 |" in line
    )
    assert sum("| not run |" in ln for ln in table) == 76
    cli_reproduce.main(["--table", done])
    assert capsys.readouterr().out.strip().splitlines() == table
    # The README's table is the one --table renders with no finished row.
    readme = open(os.path.join(REPO, "README.md")).read()
    begin = "<!-- generated: python -m stlight_jax.reproduce --table"
    inside = readme.split(begin, 1)[1].split("\n", 1)[1].split("<!-- end of generated table -->")[0]
    assert inside.strip() == rp.render_table([]), "README table: rerun --table and paste it"
    cli_reproduce.main(["--list"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 77 + 1 and "A6000 hours in all" in out[-1]
    assert any(ln.startswith("table8-lr1e-3-e500 ") and " 58.1 " in ln for ln in out)
    # One line naming the culprit for every bad input.
    dry = _fake_row(tmp_path, "table3-mmnist-L", dry_run=True, mse=99.0, mae=1.0, ssim=0.5)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "row.json").write_text("{")
    for argv, message in [
        (["--table", dry], f"{dry}/row.json: a --dry-run result"),
        (["--table", str(bad)], f"{bad}/row.json: not a row.json written by"),
        (["--table", str(tmp_path)], f"{tmp_path}: holds no row.json"),
        (["--table", done, done], "row table4-no_skip-M is given twice"),
        (["nope", "--workdir=x"], "unknown row 'nope'"),
        (["table3-mmnist-L"], "usage: python -m stlight_jax.reproduce ROW --workdir=DIR"),
        (["--list", "--dry-run"], "give one of --list, --table, --dry-run"),
        (["--dry-run", "table3-mmnist-L"], "--dry-run needs --workdir=DIR"),
        (["--dry-run", "--workdir=x", "tableX"], "unknown row 'tableX'"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli_reproduce.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_dry_run_writes_row_json_through_the_training_code(tmp_path, capsys):
    """One row through `--dry-run` (the real train_and_evaluate, tiny): its row.json, and
    --table refusing it. test_dry_run_every_family covers one row per dataset and override."""
    cli_reproduce.main(["--dry-run", f"--workdir={tmp_path}", "table4-skip_fifths-XL"])
    assert "table4-skip_fifths-XL: dry run ok" in capsys.readouterr().out
    rec = json.load(open(tmp_path / "table4-skip_fifths-XL" / "row.json"))
    assert rec["dry_run"] is True and rec["paper"]["metrics"] == {"mse": 21.92}
    assert rec["difference"]["mse"] == pytest.approx(rec["measured"]["mse"] - 21.92)
    assert rec["config"]["spec"] == "configs/ablations.py:skip_fifths,XL"
    assert rec["hardware"]["platform"] == "cpu" and rec["wall_time_s"] > 0
    assert len(rec["commit"].split()[0]) == 40 and rec["checkpoint_step"] == 2
    saved = json.load(open(tmp_path / "table4-skip_fifths-XL" / "run" / "config.json"))
    assert saved["model"]["skip"] == "fifths" and saved["model"]["dim"] == 16


@pytest.mark.slow
def test_dry_run_every_family(tmp_path):
    """A row per dataset and per kind of override (about 30-60 s each on 2 busy cores)."""
    names = [
        "table3-mmnist-XS", "table3-taxibj-S", "table3-kth-XS", "table4-no_skip-S",
        "table6-mmnist-L", "table7-k11x3", "table8-lr1e-3-e500", "table9-lr1e-2-fd3000",
        "figure4-kitticaltech-15M",
    ]  # fmt: skip
    for rec in rp.dry_run(names, str(tmp_path)):
        assert set(rec["measured"]) == set(rec["paper"]["metrics"]) or not rec["paper"]["metrics"]
