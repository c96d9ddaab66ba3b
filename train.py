"""Trains STLight from a config file; rerunning the same command resumes from the workdir.

    python train.py --config=configs/mmnist.py:L --workdir=runs/mmnist_l
    python train.py --config=configs/mmnist.py:cpu --workdir=runs/cpu \
        --config.optimizer.learning_rate=1e-3

Multi-host: start one process per host with --coordinator_address, --num_processes and
--process_id (or let jax.distributed.initialize detect a cluster with --distributed).
Everything else lives in `stlight_jax.train.train_and_evaluate`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/mmnist.py:S.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detect).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from stlight_jax.train import quiet_library_logs

    quiet_library_logs()
    import jax

    if FLAGS.coordinator_address or FLAGS.distributed:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    from stlight_jax.train import train_and_evaluate

    logging.info(
        "process %d/%d, devices %s", jax.process_index(), jax.process_count(), jax.devices()
    )
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    from stlight_jax import runtime

    runtime.reexec_with_malloc_hugepages()  # XLA:CPU's per-step temp block on 2 MB pages
    app.run(main)
