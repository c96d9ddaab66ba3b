"""`python -m stlight_jax.reproduce`: train and test one of the paper's rows with its settings
and write row.json (stlight_jax/reproduce.py); list the rows, render the README's table, or
dry-run rows at a tiny size.

    python -m stlight_jax.reproduce ROW --workdir=DIR [--data=FILE] [--set KEY=VALUE ...]
    python -m stlight_jax.reproduce --list              # every row and its A6000 hours
    python -m stlight_jax.reproduce --table [DIR ...]   # the README's table from row dirs
    python -m stlight_jax.reproduce --dry-run --workdir=DIR [ROW ...]   # tiny, on CPU
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import flags

from stlight_jax.cli import errors as cli_errors
from stlight_jax.cli import flag_parsing
from stlight_jax.paper_rows import REPRODUCE, get_row, list_rows, parse_sets
from stlight_jax.reproduce import dry_run, render_table, run_row

PROG = REPRODUCE
DRY_RUN = "dry-run"


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "the row's directory (row.json, run/)", flag_values=fv)
    flags.DEFINE_string(
        "data", None, "Moving MNIST: mnist_test_seq.npy; else data.path", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "set",
        [],
        "KEY=VALUE: override a config field, e.g. compute_dtype=bfloat16 (repeatable)",
        flag_values=fv,
    )
    flags.DEFINE_bool("list", False, "every row and its A6000 hours", flag_values=fv)
    flags.DEFINE_bool(
        "table",
        False,
        "render the README's table; the arguments are the finished rows' directories",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        DRY_RUN, False, "the rows named (all if none) at a tiny size, on CPU", flag_values=fv
    )


COMMAND = flag_parsing.Command(prog=PROG, usage=__doc__, define=_define, positional=True)


def _table_dirs_as_arguments(argv: Sequence[str] | None) -> list[str] | None:
    """`--table=DIR` as `--table DIR` (the directories are arguments; --table is a switch)."""
    if argv is None:
        import sys

        argv = sys.argv[1:]
    out = []
    for a in argv:
        value = a.partition("=")[2]
        if a.startswith("--table=") and value.lower() not in ("true", "false", "1", "0"):
            out += ["--table", value]
        else:
            out.append(a)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """`argv`: the arguments after the program name (default: sys.argv[1:]). The arguments
    that are not flags are row names (one for a run, any for --dry-run), or with --table the
    directories of finished rows."""
    parsed = flag_parsing.parse(COMMAND, _table_dirs_as_arguments(argv))
    f, args = parsed.flags, parsed.args
    dry = f[DRY_RUN].value
    with cli_errors.user_errors_reported(PROG, parsed.verbose):
        if sum([f.list, f.table, dry]) > 1:
            raise ValueError("give one of --list, --table, --dry-run")
        if f.list:
            print("\n".join(list_rows()))
        elif f.table:
            print(render_table(args))
        elif dry:
            if not f.workdir:
                raise ValueError("--dry-run needs --workdir=DIR")
            for name in args:
                get_row(name)
            dry_run(args, f.workdir)
        else:
            if len(args) != 1 or not f.workdir:
                raise ValueError(f"usage: {PROG} ROW --workdir=DIR (or --list / --table)")
            from stlight_jax.log_noise import quiet_library_logs

            quiet_library_logs()
            rec = run_row(args[0], f.workdir, f.data, parse_sets(f.set))
            if rec is None:
                cli_errors.interrupted(PROG, "stopped; rerun the same command to resume")
            print(json.dumps({k: rec[k] for k in ("row", "measured", "difference")}, indent=2))
