"""Grain worker processes (config.data.worker_count > 0): the same batches, exact resume.

Worker i of W reads batches i, i + W, ... and Grain takes them in turn, so the stream does not
depend on the worker count, and the iterator state ({'next_index': n}) does not either: a
checkpoint written with W workers resumes with any other count, 0 included.
"""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest

from stlight_jax import data
from stlight_jax.checkpoints import manager as checkpoint


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k])


def _save_and_restore(tmp_path, step, data_state):
    """The iterator state through an Orbax checkpoint, as train.py saves and resumes it."""
    manager = checkpoint.create_manager(str(tmp_path / "ckpt"))
    state = {"step": np.array(step, np.int32)}
    checkpoint.save(manager, step, state, data_state)
    restored = checkpoint.restore_latest_readable(manager, checkpoint.abstract_like(state))
    manager.close()
    assert restored is not None and restored[0] == step
    return restored[2]


def test_resume_with_two_worker_processes_gives_the_exact_next_batches(config, tmp_path):
    assert data.steps_per_epoch(config) == 4  # 32 training sequences in batches of 8
    children = set(multiprocessing.active_children())
    serial = data.create_train_iterator(config)
    want = [next(serial) for _ in range(9)]

    config.data.worker_count = 2
    uninterrupted = data.create_train_iterator(config)
    got = [next(uninterrupted) for _ in range(6)]  # into epoch 1
    assert len(set(multiprocessing.active_children()) - children) == 2  # 2 worker processes
    _assert_same(got, want[:6])  # the stream does not depend on the worker count
    data_state = _save_and_restore(tmp_path, 6, uninterrupted.get_state())
    assert data_state == {"next_index": 6}

    resumed = data.create_train_iterator(config)
    resumed.set_state(data_state)
    after = [next(resumed) for _ in range(3)]
    _assert_same(after, [next(uninterrupted) for _ in range(3)])
    _assert_same(after, want[6:])
    for it in (resumed, uninterrupted):
        it.close()
    assert set(multiprocessing.active_children()) <= children  # close() stopped the workers

    # The same checkpoint resumes in-process (and a worker_count=0 one with workers, as the
    # states are the same).
    config.data.worker_count = 0
    in_process = data.create_train_iterator(config)
    in_process.set_state(json.loads(json.dumps(data_state)))
    _assert_same([next(in_process) for _ in range(3)], want[6:])


def test_eval_batches_with_worker_processes_match_in_process(config):
    config.data.eval_batch_size = 3  # 8 val sequences: 3 batches, the last one padded
    want = list(data.create_eval_iterator(config, "val"))
    config.data.worker_count = 2
    _assert_same(list(data.create_eval_iterator(config, "val")), want)
    assert want[-1]["mask"].tolist() == [1, 1, 0]


def test_state_of_another_format_is_refused(config):
    it = data.create_train_iterator(config)
    # Grain's own multi-worker state, as an iterator without the wrapper would have saved it.
    grain_state = {"next_index_in_cycle": 1, "iterators_in_use_states": [{"next_index": 3}]}
    for bad in (grain_state, {}, {"next_index": -1}, {"next_index": 2.0}):
        with pytest.raises(ValueError, match=r"is not \{'next_index': n >= 0\}"):
            it.set_state(bad)
    assert it.get_state() == {"next_index": 0}
