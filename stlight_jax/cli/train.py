"""`train.py` / `stlight-train`: the flags and main; see the script's docstring.

Trains STLight from a config file; rerunning the same command resumes from the workdir.
"""

from absl import app, flags
from ml_collections import config_flags

from stlight_jax import runtime
from stlight_jax.cli import errors as cli_errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/mmnist.py:S.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
runtime.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from stlight_jax.log_noise import quiet_library_logs

    quiet_library_logs()
    runtime.initialize_distributed_from_flags()
    from stlight_jax import peers
    from stlight_jax.training.loop import train_and_evaluate

    with peers.watched(FLAGS.workdir):  # a dead peer (multi-process): one line, exit 3
        train_and_evaluate(FLAGS.config, FLAGS.workdir)


def main() -> None:
    """Entry point of the script and the console script. Config paths such as
    configs/mmnist.py:S also resolve to the installed configs, so it works from any directory."""
    import os
    import sys

    from stlight_jax.config.packaged import resolve_config_flag

    runtime.reexec_with_malloc_hugepages()  # XLA:CPU's per-step temp block on 2 MB pages
    sys.argv[:] = resolve_config_flag(sys.argv)
    cli_errors.run_absl(_main, os.path.basename(sys.argv[0]))
