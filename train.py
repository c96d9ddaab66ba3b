"""Trains STLight from a config file; rerunning the same command resumes from the workdir.

    python train.py --config=configs/mmnist.py:L --workdir=runs/mmnist_l
    python train.py --config=configs/mmnist.py:cpu --workdir=runs/cpu \
        --config.optimizer.learning_rate=1e-3

Multi-host: start one process per host with --coordinator_address, --num_processes and
--process_id (or let jax.distributed.initialize detect a cluster with --distributed).
A bad flag or input stops it with one line on stderr and exit status 2 (--verbose_errors or
STLIGHT_VERBOSE_ERRORS=1: the traceback). Everything else lives in
`stlight_jax.train.train_and_evaluate`.
"""

from absl import app, flags
from ml_collections import config_flags

from stlight_jax import cli_errors, runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/mmnist.py:S.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
runtime.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from stlight_jax.writers import quiet_library_logs

    quiet_library_logs()
    runtime.initialize_distributed_from_flags()
    from stlight_jax.train import train_and_evaluate

    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    runtime.reexec_with_malloc_hugepages()  # XLA:CPU's per-step temp block on 2 MB pages
    cli_errors.run_absl(main, "train.py")
