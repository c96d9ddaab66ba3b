"""`python -m stlight_jax.convert` / `stlight-convert`: PyTorch weights <-> Orbax checkpoints.

    python -m stlight_jax.convert import --config=configs/mmnist.py:S --weights=w.pth --out=ckpt
    python -m stlight_jax.convert export --config=configs/mmnist.py:S --checkpoint=ckpt \\
        --out=w.safetensors [--layout=stf]
"""

from __future__ import annotations

from stlight_jax.weights import key_formats, torch_files


def main(argv: list[str] | None = None) -> None:
    import argparse

    from stlight_jax.config import files as config_io

    parser = argparse.ArgumentParser(
        prog="python -m stlight_jax.convert",
        description="Convert STLight weights between PyTorch (Figure 10 keys) and stlight-jax.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="PyTorch .pt/.pth/.ckpt/.safetensors -> Orbax checkpoint")
    imp.add_argument("--weights", required=True, help="PyTorch weights file")
    imp.add_argument("--out", required=True, help="directory for the Orbax checkpoint")
    imp.add_argument("--non_strict", action="store_true", help="allow missing/unexpected keys")
    imp.add_argument(
        "--key_map",
        default=None,
        help="JSON file(s), comma-separated, of regex -> Figure 10 key for other layouts",
    )
    exp = sub.add_parser("export", help="Orbax checkpoint or workdir -> .safetensors / .pth")
    exp.add_argument("--checkpoint", required=True, help="workdir, checkpoints dir or ckpt dir")
    exp.add_argument("--out", required=True, help="output file (.safetensors or .pth)")
    exp.add_argument("--step", default=None, help="'best', 'latest' or a step number")
    exp.add_argument(
        "--layout",
        default="paper",
        choices=sorted(key_formats.LAYOUTS),
        help="key names written: paper (Figure 10) or stf",
    )
    for p in (imp, exp):
        p.add_argument(
            "--config",
            required=True,
            help="config file with optional argument, e.g. configs/mmnist.py:S, "
            "or a workdir (its config.json) or a config.json",
        )
    from stlight_jax.cli import errors as cli_errors

    for p in (imp, exp):
        p.add_argument(
            f"--{cli_errors.VERBOSE_FLAG}", action="store_true", help=cli_errors.VERBOSE_HELP
        )
    args = parser.parse_args(argv)
    verbose = args.verbose_errors or cli_errors.verbose_requested([])
    with cli_errors.user_errors_reported(parser.prog, verbose):
        config = config_io.load_config(args.config)
        from stlight_jax.config import validation as config_validation

        config_validation.validate(config)
        if args.command == "import":
            where = torch_files.import_to_checkpoint(
                args.weights, config, args.out, not args.non_strict, args.key_map
            )
            print(f"wrote {where}; start from it with --config.init_from={args.out}")
        else:
            where = torch_files.export_from_checkpoint(
                args.checkpoint, config, args.out, args.step, args.layout
            )
            print(f"wrote {where}")

