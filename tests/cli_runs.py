"""The repository's scripts run in a subprocess as a user runs them, and the check that a user
error ends one of them with one line on stderr and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

from stlight_jax.cli import errors as cli_errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script: list[str], *args: str, env: dict | None = None, timeout: int = 120):
    """`python <script> <args>` in the repository on CPU, without --verbose_errors' variable."""
    base = {k: v for k, v in os.environ.items() if k != cli_errors.VERBOSE_ENV}
    env = {**base, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(
        [sys.executable, *script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc, prog: str, *needles: str) -> str:
    """Exit status 2, no traceback, and exactly one 'prog: error:' line holding `needles`."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith(lines[0]), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
