"""`python -m stlight_jax.export` / `stlight-export`: a trained STLight's eval-mode forward as
StableHLO (a serialized `jax.export.Exported`) or ONNX; see stlight_jax/export.py.

    stlight-export stablehlo --workdir=runs/cpu --out=stlight.stablehlo   # any batch size
    stlight-export onnx --config=configs/mmnist.py:S --weights=w.pth --out=stlight.onnx \\
        [--batch=16]
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from stlight_jax.cli import errors as cli_errors
from stlight_jax.cli import flag_parsing
from stlight_jax.export import EXPORT_CONV_IMPL, PLATFORMS, write_onnx, write_stablehlo

PROG = "stlight-export"
SOURCES = ("workdir", "checkpoint", "weights")
COMMON = (*SOURCES, "config", "out", "batch", "step", "key_map")


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "workdir", None, "training workdir (best checkpoint, else latest)", flag_values=fv
    )
    flags.DEFINE_string(
        "checkpoint", None, "Orbax checkpoints dir, step dir or converted ckpt", flag_values=fv
    )
    flags.DEFINE_string(
        "weights", None, "PyTorch/safetensors file (Figure 10 or STF keys)", flag_values=fv
    )
    flags.DEFINE_string(
        "config",
        None,
        "config file (e.g. configs/mmnist.py:S), config.json or workdir; default: the "
        "workdir's config.json",
        flag_values=fv,
    )
    flags.DEFINE_string("out", None, "output file", flag_values=fv)
    flags.DEFINE_integer("batch", None, "fixed batch size (default: any)", flag_values=fv)
    flags.DEFINE_string("step", None, "'best', 'latest' or a step number", flag_values=fv)
    flags.DEFINE_string("key_map", None, "JSON key map for --weights", flag_values=fv)
    flags.DEFINE_string(
        "platforms",
        ",".join(PLATFORMS),
        "comma-separated platforms to lower for",
        flag_values=fv,
    )


COMMAND = flag_parsing.Command(
    prog=PROG,
    usage=__doc__,
    define=_define,
    subcommands={
        "stablehlo": flag_parsing.Subcommand(
            "serialized jax.export.Exported (runs with jax alone)",
            (*COMMON, "platforms"),
            required=("out",),
            one_of=SOURCES,
        ),
        "onnx": flag_parsing.Subcommand(
            "ONNX model for onnxruntime (needs requirements-export.txt)",
            COMMON,
            required=("out",),
            one_of=SOURCES,
        ),
    },
)


def main(argv: Sequence[str] | None = None) -> None:
    """`argv`: the arguments after the program name (default: sys.argv[1:])."""
    from stlight_jax import api

    parsed = flag_parsing.parse(COMMAND, argv)
    f = parsed.flags
    # A user error: one line naming the culprit, exit status 2.
    with cli_errors.user_errors_reported(PROG, parsed.verbose):
        source = f.workdir or f.checkpoint or f.weights
        loaded = api.load_model_from(
            source, f.config, f.step, f.key_map, conv_impl=EXPORT_CONV_IMPL
        )
        if parsed.subcommand == "stablehlo":
            platforms = [p for p in f.platforms.split(",") if p]
            print(f"wrote {write_stablehlo(loaded, f.out, f.batch, platforms)}")
        else:
            print(f"wrote {write_onnx(loaded, f.out, f.batch)}")
