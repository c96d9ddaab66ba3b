"""Trains STLight from a config file; rerunning the same command resumes from the workdir.

    python train.py --config=configs/mmnist.py:L --workdir=runs/mmnist_l
    python train.py --config=configs/mmnist.py:cpu --workdir=runs/cpu \
        --config.optimizer.learning_rate=1e-3

Multi-host: start one process per host with --coordinator_address, --num_processes and
--process_id (or let jax.distributed.initialize detect a cluster with --distributed).
A bad flag or input stops it with one line on stderr and exit status 2 (--verbose_errors or
STLIGHT_VERBOSE_ERRORS=1: the traceback). Everything else lives in
`stlight_jax.training.loop.train_and_evaluate`.
"""

from stlight_jax.cli.train import main

if __name__ == "__main__":
    main()
