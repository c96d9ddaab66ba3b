"""`python -m stlight_jax.convert` / `stlight-convert`: PyTorch weights <-> Orbax checkpoints.

    python -m stlight_jax.convert import --config=configs/mmnist.py:S --weights=w.pth --out=ckpt
    python -m stlight_jax.convert export --config=configs/mmnist.py:S --checkpoint=ckpt \\
        --out=w.safetensors [--layout=stf]
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from stlight_jax.cli import errors as cli_errors
from stlight_jax.cli import flag_parsing
from stlight_jax.weights import key_formats, torch_files

PROG = "python -m stlight_jax.convert"


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "config",
        None,
        "config file with optional argument, e.g. configs/mmnist.py:S, or a workdir (its "
        "config.json) or a config.json",
        flag_values=fv,
    )
    flags.DEFINE_string("weights", None, "PyTorch weights file", flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "workdir, checkpoints dir or ckpt dir", flag_values=fv)
    flags.DEFINE_string(
        "out",
        None,
        "import: directory for the Orbax checkpoint; export: output file (.safetensors or .pth)",
        flag_values=fv,
    )
    flags.DEFINE_bool("non_strict", False, "allow missing/unexpected keys", flag_values=fv)
    flags.DEFINE_string(
        "key_map",
        None,
        "JSON file(s), comma-separated, of regex -> Figure 10 key for other layouts",
        flag_values=fv,
    )
    flags.DEFINE_string("step", None, "'best', 'latest' or a step number", flag_values=fv)
    flags.DEFINE_enum(
        "layout",
        "paper",
        sorted(key_formats.LAYOUTS),
        "key names written: paper (Figure 10) or stf",
        flag_values=fv,
    )


COMMAND = flag_parsing.Command(
    prog=PROG,
    usage=__doc__,
    define=_define,
    subcommands={
        "import": flag_parsing.Subcommand(
            "PyTorch .pt/.pth/.ckpt/.safetensors -> Orbax checkpoint",
            ("config", "weights", "out", "non_strict", "key_map"),
            required=("config", "weights", "out"),
        ),
        "export": flag_parsing.Subcommand(
            "Orbax checkpoint or workdir -> .safetensors / .pth",
            ("config", "checkpoint", "out", "step", "layout"),
            required=("config", "checkpoint", "out"),
        ),
    },
)


def main(argv: Sequence[str] | None = None) -> None:
    """`argv`: the arguments after the program name (default: sys.argv[1:])."""
    from stlight_jax.config import files as config_io
    from stlight_jax.config import validation as config_validation

    parsed = flag_parsing.parse(COMMAND, argv)
    f = parsed.flags
    with cli_errors.user_errors_reported(PROG, parsed.verbose):
        config = config_io.load_config(f.config)
        config_validation.validate(config)
        if parsed.subcommand == "import":
            where = torch_files.import_to_checkpoint(
                f.weights, config, f.out, not f.non_strict, f.key_map
            )
            print(f"wrote {where}; start from it with --config.init_from={f.out}")
        else:
            where = torch_files.export_from_checkpoint(
                f.checkpoint, config, f.out, f.step, f.layout
            )
            print(f"wrote {where}")
