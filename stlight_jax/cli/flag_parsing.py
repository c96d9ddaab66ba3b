"""absl flags for the commands that are plain functions rather than `absl.app` programs
(convert, export, pretrained, reproduce), so that every command takes its flags the same way.

Each call parses into a fresh `flags.FlagValues` (no global state: the commands can be called
in-process, again and again, and none collides with train.py's or evaluate.py's flags). A
command may have subcommands, the first argument: the flags are the union of theirs, and each
subcommand's own list, required flags and one-of groups are checked here. A usage error is one
line on stderr and exit status 2 (`cli_errors.fail`), as a user error in the command itself;
`-h` / `--help` prints the usage and the flags (a subcommand's only, after its name) and exits 0.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Callable, Sequence

from absl import flags

from stlight_jax.cli import errors as cli_errors

HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


@dataclasses.dataclass(frozen=True)
class Subcommand:
    help: str
    flags: tuple[str, ...]  # the flags it takes (--verbose_errors is always allowed)
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()  # exactly one of these must be given


@dataclasses.dataclass(frozen=True)
class Command:
    prog: str
    usage: str  # printed by --help above the flags
    define: Callable[[flags.FlagValues], None]  # defines the flags into the FlagValues given
    subcommands: dict[str, Subcommand] | None = None
    positional: bool = False  # whether arguments other than flags are taken


@dataclasses.dataclass(frozen=True)
class Parsed:
    flags: flags.FlagValues
    args: list[str]  # the arguments that are not flags (the subcommand excluded)
    subcommand: str | None
    verbose: bool  # --verbose_errors or STLIGHT_VERBOSE_ERRORS=1


def _flag_values(command: Command) -> flags.FlagValues:
    fv = flags.FlagValues()
    command.define(fv)
    flags.DEFINE_bool(cli_errors.VERBOSE_FLAG, False, cli_errors.VERBOSE_HELP, flag_values=fv)
    return fv


def _own_flags(fv: flags.FlagValues) -> list[str]:
    """The command's flags, without absl's --flagfile and --undefok."""
    return [name for name in fv if name not in ("flagfile", "undefok")]


def _describe(flag: flags.Flag, subcommands: Sequence[str] = (), subcommand: str = "") -> str:
    """One flag's help; under `subcommand`, only its part of a help written as
    "import: ...; export: ..." (a flag the subcommands share with different meanings)."""
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    help_ = flag.help
    parts = {p.partition(": ")[0]: p.partition(": ")[2] for p in help_.split("; ")}
    if subcommand and set(parts) <= set(subcommands) and subcommand in parts:
        help_ = parts[subcommand]
    text = f"  {name}: {help_}"
    if flag.default not in (None, "", False, []):
        text += f" (default: {flag.default_as_str or flag.default})"
    return textwrap.fill(text, width=96, subsequent_indent="      ")


def help_text(command: Command, subcommand: str | None = None) -> str:
    fv = _flag_values(command)
    lines = [command.usage.strip(), ""]
    if command.subcommands and subcommand is None:
        lines.append("commands:")
        lines += [f"  {name}: {sub.help}" for name, sub in command.subcommands.items()]
        lines += ["", f"{command.prog} COMMAND --help: the command's flags", ""]
        return "\n".join(lines)
    names = _own_flags(fv)
    if subcommand is not None:
        sub = command.subcommands[subcommand]
        lines[-1:] = ["", f"{command.prog} {subcommand}: {sub.help}", ""]
        names = [*sub.flags, cli_errors.VERBOSE_FLAG]
    lines.append("flags:")
    subcommands = list(command.subcommands or ())
    lines += [_describe(fv[name], subcommands, subcommand or "") for name in names]
    return "\n".join(lines)


def _before_separator(argv: Sequence[str]) -> list[str]:
    return list(argv[: argv.index("--")] if "--" in argv else argv)


def parse(command: Command, argv: Sequence[str] | None = None) -> Parsed:
    """Parses `argv` (the arguments after the program name; default sys.argv[1:])."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = command.prog
    subcommand = None
    if command.subcommands is not None:
        names = " | ".join(command.subcommands)
        first = argv[0] if argv else ""
        if first in command.subcommands:
            subcommand, argv = first, argv[1:]
        elif not set(_before_separator(argv)) & set(HELP_ARGS):
            given = f"unknown command {first!r}; " if first else ""
            cli_errors.fail(prog, f"{given}give a command first: {names} (or --help)")
    if set(_before_separator(argv)) & set(HELP_ARGS):
        print(help_text(command, subcommand))
        sys.exit(0)
    fv = _flag_values(command)
    try:
        args = fv([prog, *argv])[1:]
    except flags.Error as e:
        if cli_errors.verbose_requested(argv):
            raise
        cli_errors.fail(prog, cli_errors.one_line(e))
    if args and not command.positional:
        cli_errors.fail(prog, f"unexpected arguments {args} (flags are --name=value)")
    if subcommand is not None:
        _check_subcommand(prog, fv, subcommand, command.subcommands[subcommand])
    verbose = fv[cli_errors.VERBOSE_FLAG].value or cli_errors.verbose_requested([])
    return Parsed(fv, args, subcommand, verbose)


def _check_subcommand(prog: str, fv: flags.FlagValues, name: str, sub: Subcommand) -> None:
    allowed = {*sub.flags, cli_errors.VERBOSE_FLAG}
    for flag in _own_flags(fv):
        if fv[flag].present and flag not in allowed:
            takes = ", ".join(f"--{f}" for f in sub.flags) or "no flags"
            cli_errors.fail(prog, f"{name} does not take --{flag} (it takes {takes})")
    for flag in sub.required:
        if not fv[flag].present:
            cli_errors.fail(prog, f"{name} needs --{flag}")
    if sub.one_of:
        given = [f for f in sub.one_of if fv[f].present]
        choices = ", ".join(f"--{f}" for f in sub.one_of)
        if len(given) != 1:
            what = "needs one" if not given else "takes only one"
            cli_errors.fail(prog, f"{name} {what} of {choices}")
