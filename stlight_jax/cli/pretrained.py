"""`python -m stlight_jax.pretrained`: list the shipped models, or ship a finished training run
as one (see stlight_jax/pretrained.py).

    python -m stlight_jax.pretrained list
    python -m stlight_jax.pretrained ship --workdir=runs/cpu --name=mmnist_cpu_2h \\
        --train_command="..." --hardware="..." --wall_seconds=4686 [--note=...] [--out_dir=...]
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import flags

from stlight_jax.cli import errors as cli_errors
from stlight_jax.cli import flag_parsing
from stlight_jax.pretrained import available, read_record, ship

PROG = "python -m stlight_jax.pretrained"
SHIP_REQUIRED = ("workdir", "name", "train_command", "hardware", "wall_seconds")


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "the finished training run", flag_values=fv)
    flags.DEFINE_string("name", None, "the shipped model's name", flag_values=fv)
    flags.DEFINE_string("train_command", None, "the command that trained it", flag_values=fv)
    flags.DEFINE_string("hardware", None, "what it trained on", flag_values=fv)
    flags.DEFINE_float("wall_seconds", None, "the run's wall time", flag_values=fv)
    flags.DEFINE_string("note", "", "what the wall time covers, in words", flag_values=fv)
    flags.DEFINE_string("out_dir", None, "default: the package's pretrained/", flag_values=fv)


COMMAND = flag_parsing.Command(
    prog=PROG,
    usage=__doc__,
    define=_define,
    subcommands={
        "list": flag_parsing.Subcommand("the shipped models and their test metrics", ()),
        "ship": flag_parsing.Subcommand(
            "workdir -> pretrained/<name>.{safetensors,json,metrics.jsonl}",
            (*SHIP_REQUIRED, "note", "out_dir"),
            required=SHIP_REQUIRED,
        ),
    },
)


def main(argv: Sequence[str] | None = None) -> None:
    """`argv`: the arguments after the program name (default: sys.argv[1:])."""
    parsed = flag_parsing.parse(COMMAND, argv)
    f = parsed.flags
    with cli_errors.user_errors_reported(PROG, parsed.verbose):
        if parsed.subcommand == "list":
            for name in available():
                m = read_record(name)["test"]["metrics"]["model"]
                print(f"{name}: test MSE {m['mse']:.2f}, SSIM {m['ssim']:.4f}")
            return
        record = ship(
            f.workdir,
            f.name,
            command=f.train_command,
            hardware=f.hardware,
            wall_seconds=f.wall_seconds,
            note=f.note,
            out_dir=f.out_dir,
        )
        print(json.dumps(record["test"]["metrics"]["model"]))
