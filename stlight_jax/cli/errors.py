"""User errors on the command line: one line on stderr and exit status 2; `--verbose_errors` (or
STLIGHT_VERBOSE_ERRORS=1) shows the traceback instead. Program bugs keep their traceback."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence

from stlight_jax import log_noise
from stlight_jax.errors import RunCannotContinue

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)
VERBOSE_FLAG = "verbose_errors"
VERBOSE_ENV = "STLIGHT_VERBOSE_ERRORS"
VERBOSE_HELP = f"Show the traceback of a user error (or set {VERBOSE_ENV}=1)."


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that describe a bad input, setting or environment (a full disk, a missing
    file), not a bug: their message is the whole story."""
    return (ValueError, OSError, ImportError, RunCannotContinue)


def verbose_requested(argv: Sequence[str]) -> bool:
    if os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    flag = f"--{VERBOSE_FLAG}"
    return any(a == flag or a == f"{flag}=true" or a == f"{flag}=1" for a in argv)


def one_line(error: BaseException) -> str:
    """The message on one line (Orbax, TensorStore and ml_collections spread theirs over
    several); the exception type when the message says nothing."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    if len(text) > 1000:
        text = text[:1000] + " ..."
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{text} ({error.filename})"
    return text or type(error).__name__


@contextlib.contextmanager
def unraisables_held(verbose: bool) -> Iterator[None]:
    """Holds back what a failed Orbax read leaves for Python to report at random moments: the
    "Exception ignored in <coroutine>" tracebacks of its other pending reads and asyncio's
    "Task exception was never retrieved" records, each pages of TensorStore spec. A user error
    (exit status 2) drops them, its one line says it all, and so are any later ones (the
    process ends); otherwise they are reported as usual when the block ends. `verbose`: no
    holding back."""
    if verbose:
        yield
        return
    held = []
    previous = sys.unraisablehook
    sys.unraisablehook = held.append
    held_records = log_noise.hold_asyncio_records()
    user_error = False
    try:
        yield
    except SystemExit as e:
        user_error = e.code in (EXIT_USER_ERROR, EXIT_INTERRUPTED)
        raise
    finally:
        if not user_error:
            sys.unraisablehook = previous
            for unraisable in held:
                previous(unraisable)
            held_records.release()


@contextlib.contextmanager
def user_errors_reported(prog: str, verbose: bool) -> Iterator[None]:
    """Inside: a user error becomes one line on stderr and exit status 2 (`verbose`: its
    traceback instead), with what a failed read leaves behind held back (`unraisables_held`)."""
    with unraisables_held(verbose):
        try:
            yield
        except user_error_types() as e:
            if verbose:
                raise
            fail(prog, one_line(e))


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def interrupted(prog: str, message: str) -> None:
    """Ctrl-C or SIGTERM: one line on stderr and exit status 130, no traceback.

    Called once the command's own cleanup (output-set and lock `finally` blocks) has run; it
    ends the process with os._exit, because an interrupted pass can leave the input pipeline's
    native threads running, and interpreter shutdown beside them crashed once in ~20 runs
    ("Fatal Python error: Segmentation fault", status -11) after the one line was printed."""
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


def _config_file_problem(argv: Sequence[str]) -> str | None:
    """A --config=<file>[:arg] naming a file that does not exist (ml_collections would say so
    in a multi-line OSError)."""
    for a in argv:
        if a.startswith("--config="):
            path = a[len("--config=") :].partition(":")[0]
            if path and not os.path.exists(path):
                return f"--config: config file {path!r} does not exist"
            if path.endswith(".json"):
                return (
                    f"--config: {path!r} is a saved config.json; --config takes a config .py "
                    "file, e.g. configs/mmnist.py:S (override fields with --config.<field>=...)"
                )
    return None


def _override_problem(argv: Sequence[str]) -> str | None:
    """The first --config.<key>=... naming no known config field, with the closest known key."""
    from stlight_jax.config import validation as config_validation

    known = set(config_validation.known_keys())
    for a in argv:
        if a.startswith("--config."):
            key = a[len("--config.") :].partition("=")[0]
            if key not in known:
                return config_validation.unknown_key_message(key, prefix="--config.")
    return None


def make_flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
    """An absl `flags_parser` that reports a bad flag in one line and exits 2 (absl's own
    prints several lines, or a traceback for a misspelled --config.<key>)."""

    def parse(argv: list[str]) -> list[str]:
        from absl import flags

        if not verbose_requested(argv):
            problem = _config_file_problem(argv)
            if problem:
                fail(prog, problem)
        try:
            return flags.FLAGS(argv)
        except Exception as e:
            if verbose_requested(argv):
                raise
            fail(prog, _override_problem(argv) or one_line(e))
        raise AssertionError("unreachable")

    return parse


def run_absl(main: Callable[[list[str]], None], prog: str) -> None:
    """`absl.app.run(main)` with user errors (while parsing flags and in `main`) reported in
    one line with exit status 2."""
    from absl import app, flags

    if VERBOSE_FLAG not in flags.FLAGS:
        flags.DEFINE_bool(VERBOSE_FLAG, False, VERBOSE_HELP)
    with user_errors_reported(prog, verbose_requested(sys.argv)):
        app.run(main, flags_parser=make_flags_parser(prog))
