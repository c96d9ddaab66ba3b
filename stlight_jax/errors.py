"""The library's exceptions: the errors stlight_jax raises for an expected reason a run stops,
as opposed to a bug. The command lines (`stlight_jax.cli`) report them in one line."""

from __future__ import annotations


class RunCannotContinue(RuntimeError):
    """An expected reason a run stops (a non-finite loss, a workdir held by another job): not
    a bug, and its message is the whole story."""
