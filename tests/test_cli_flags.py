"""The commands that are not absl.app programs (convert, export, pretrained, reproduce) on absl
flags through cli/flag_parsing.py: subcommands, required and one-of flags, a flag another
subcommand takes, --help, repeated in-process calls; every usage error one line, exit 2."""

from __future__ import annotations

import pytest

from stlight_jax.cli import convert, export, flag_parsing, pretrained, reproduce


def _usage_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, (argv, err)
    return err


@pytest.mark.parametrize(
    "main, prog, argv, message",
    [
        (convert.main, convert.PROG, [], "give a command first: import | export"),
        (convert.main, convert.PROG, ["imprt"], "unknown command 'imprt'"),
        (convert.main, convert.PROG, ["import", "--out=x", "--weights=w"], "import needs --config"),
        (
            convert.main,
            convert.PROG,
            ["import", "--config=c", "--weights=w", "--out=o", "--layout=stf"],
            "import does not take --layout",
        ),
        (
            convert.main,
            convert.PROG,
            ["export", "--config=c", "--checkpoint=k", "--out=o", "--layout=x"],
            "flag --layout=x: value should be one of <paper|stf>",
        ),
        (convert.main, convert.PROG, ["import", "--bogus"], "Unknown command line flag 'bogus'"),
        (
            export.main,
            export.PROG,
            ["onnx", "--out=o"],
            "onnx needs one of --workdir, --checkpoint",
        ),
        (
            export.main,
            export.PROG,
            ["stablehlo", "--out=o", "--workdir=a", "--weights=b"],
            "stablehlo takes only one of --workdir, --checkpoint, --weights",
        ),
        (export.main, export.PROG, ["onnx", "--workdir=a", "--out=o", "x"], "unexpected arguments"),
        (export.main, export.PROG, ["stablehlo", "--batch=two"], "flag --batch=two"),
        (pretrained.main, pretrained.PROG, ["ship", "--workdir=w"], "ship needs --name"),
        (pretrained.main, pretrained.PROG, ["list", "--name=n"], "list does not take --name"),
        (reproduce.main, reproduce.PROG, ["--set"], "Missing value for flag --set"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, main, prog, argv, message):
    err = _usage_error(capsys, main, argv)
    assert err.startswith(f"{prog}: error: ") and message in err, err


def test_help_lists_a_subcommands_flags_and_exits_0(capsys):
    for argv in (["import", "--help"], ["import", "-h"]):
        with pytest.raises(SystemExit) as e:
            convert.main(argv)
        out = capsys.readouterr().out
        assert e.value.code == 0
        flag_lines = out.split("flags:", 1)[1]
        assert "--weights: PyTorch weights file" in flag_lines and "--checkpoint" not in flag_lines
        assert "--out: directory for the Orbax checkpoint" in out and "--[no]verbose_errors" in out
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--[no]dry-run" in out and "--set" in out
    text = flag_parsing.help_text(export.COMMAND)
    assert "stablehlo: serialized jax.export.Exported" in text and "onnx: ONNX model" in text


def test_repeated_in_process_calls_start_from_the_defaults(capsys):
    """A fresh FlagValues per call: a flag of one call does not carry into the next."""
    reproduce.main(["--list"])
    assert "A6000 hours in all" in capsys.readouterr().out
    reproduce.main(["--table"])  # --list from the previous call would make this an error
    assert capsys.readouterr().out.startswith("| row | paper |")
    first = flag_parsing.parse(reproduce.COMMAND, ["--set=a=1", "--set", "b=2", "--dry-run", "r"])
    assert first.flags.set == ["a=1", "b=2"] and first.flags["dry-run"].value
    assert first.args == ["r"] and first.subcommand is None and not first.verbose
    again = flag_parsing.parse(reproduce.COMMAND, ["--verbose_errors"])
    assert again.flags.set == [] and not again.flags["dry-run"].value and again.verbose


def test_table_takes_its_directories_as_arguments_or_after_an_equals_sign(tmp_path, capsys):
    err = _usage_error(capsys, reproduce.main, [f"--table={tmp_path}"])
    assert f"{tmp_path}: holds no row.json" in err
    err = _usage_error(capsys, reproduce.main, ["--table", str(tmp_path)])
    assert f"{tmp_path}: holds no row.json" in err
