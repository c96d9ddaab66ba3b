"""The Grain input pipeline shared by all datasets: per-epoch order, sharding, resumable state."""

from __future__ import annotations

import functools
import math
import os

import grain
import numpy as np
from absl import flags

from stlight_jax.data import common


def _build(config) -> common.Dataset:
    name = config.data.name
    if name == "mmnist":
        from stlight_jax.data.moving_mnist import MovingMNIST

        return MovingMNIST(config)
    if name == "taxibj":
        from stlight_jax.data.taxibj import TaxiBJ

        return TaxiBJ(config)
    if name == "kth":
        from stlight_jax.data.kth import KTH

        return KTH(config)
    if name == "kitticaltech":
        from stlight_jax.data.kitticaltech import KittiCaltech

        return KittiCaltech(config)
    if name == "custom":
        from stlight_jax.data.custom import CustomArrays

        return CustomArrays(config)
    raise ValueError(
        f"config.data.name={name!r}: expected 'mmnist', 'taxibj', 'kth', 'kitticaltech' or 'custom'"
    )


_CACHE: dict[str, common.Dataset] = {}


def get_dataset(config) -> common.Dataset:
    """The dataset for `config`, built once per process (loading digits/arrays is the slow part)."""
    key = config.data.to_json() + config.model.to_json()
    for path in (config.data.path, config.data.mnist_path, config.data.test_file):
        if path and os.path.exists(path):  # a rewritten file must not hit a stale entry
            st = os.stat(path)
            key += f"|{path}:{st.st_mtime_ns}:{st.st_size}"
    if key not in _CACHE:
        _CACHE.clear()  # one live dataset at a time keeps memory bounded
        _CACHE[key] = _build(config)
    return _CACHE[key]


def _local_batch(batch_size: int, process_count: int, field: str) -> int:
    if batch_size % process_count:
        raise ValueError(
            f"config.data.{field}={batch_size} is not divisible by process_count={process_count}"
        )
    return batch_size // process_count


def steps_per_epoch(config) -> int:
    """Global batches per epoch; the last partial batch is dropped (OpenSTL's drop_last)."""
    ds = get_dataset(config)
    b = int(config.data.batch_size)
    if ds.train_size < b:
        raise ValueError(
            f"{ds.describe('train')}: {ds.train_size} training samples are fewer than "
            f"config.data.batch_size={b}"
        )
    return ds.train_size // b


class _TrainSample:
    """Global stream position g -> sample (epoch g // n, index g % n); picklable for workers."""

    def __init__(self, ds: common.Dataset, per_epoch: int):
        self.ds, self.per_epoch = ds, per_epoch

    def __call__(self, g: int, index_in_epoch: int) -> np.ndarray:
        return self.ds.train_sample(g // self.per_epoch, index_in_epoch)


class _EvalSample:
    def __init__(self, ds: common.Dataset, split: str, n: int):
        self.ds, self.split, self.n = ds, split, n
        self._pad = None

    def __call__(self, i: int) -> tuple[np.ndarray, np.float32]:
        if i < self.n:
            return self.ds.eval_sample(self.split, i), np.float32(1.0)
        if self._pad is None:
            self._pad = np.zeros_like(self.ds.eval_sample(self.split, 0))
        return self._pad, np.float32(0.0)


def _split_frames(seqs: np.ndarray, frames_in: int, frames_out: int) -> dict[str, np.ndarray]:
    return {
        "inputs": np.ascontiguousarray(seqs[:, :frames_in]),
        "targets": np.ascontiguousarray(seqs[:, frames_in : frames_in + frames_out]),
    }


def _stack_train(samples, frames_in: int, frames_out: int) -> dict[str, np.ndarray]:
    return _split_frames(np.stack(samples), frames_in, frames_out)


def _stack_eval(samples, frames_in: int, frames_out: int) -> dict[str, np.ndarray]:
    batch = _split_frames(np.stack([s for s, _ in samples]), frames_in, frames_out)
    batch["mask"] = np.array([m for _, m in samples], np.float32)
    return batch


def _to_iter(ds: grain.MapDataset, config) -> grain.IterDataset:
    d = config.data
    # A small buffer: batches are MBs each, and Grain's default (500) would hold gigabytes.
    it = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=int(d.read_threads), prefetch_buffer_size=int(d.prefetch_buffer_size)
        )
    )
    if int(d.worker_count) > 0:
        _allow_unparsed_grain_profiling_flag()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(d.worker_count)))
    return it


def _allow_unparsed_grain_profiling_flag() -> None:
    """Grain 0.2.18 reads the absl flag below with `.value` when it starts worker processes
    (with jaxlib >= 0.11 installed), which raises UnparsedFlagAccessError outside an absl app:
    a notebook, a test, `train_and_evaluate` called from Python (google/grain#1355). Marking
    just that flag present makes it read its default (False) without marking every absl flag
    parsed; a later command-line parse still sets it."""
    name = "grain_enable_multiprocess_worker_profiling"
    if not flags.FLAGS.is_parsed() and name in flags.FLAGS and not flags.FLAGS[name].present:
        flags.FLAGS[name].present = 1


class TrainIterator:
    """This process's batches from position `next_index` on, with a resumable state.

    The state is {'next_index': n}, the number of this process's batches consumed, whatever
    config.data.worker_count is. Grain's own state depends on the worker count (one entry per
    worker, interleaved), so a checkpoint written with one count would not restore with another;
    the batch order does not depend on it (worker i of W reads batches i, i + W, ... and Grain
    takes them in turn), so `set_state` rebuilds the pipeline from batch n instead.
    """

    def __init__(self, batches: grain.MapDataset, config):
        self._batches, self._config = batches, config
        self._next_index = 0
        self._it = iter(_to_iter(batches, config))

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self._next_index += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"next_index": self._next_index}

    def set_state(self, state: dict) -> None:
        n = state.get("next_index") if isinstance(state, dict) else None
        if not (isinstance(n, int) and n >= 0 and len(state) == 1):
            raise ValueError(f"data iterator state {state!r} is not {{'next_index': n >= 0}}")
        self.close()
        self._next_index = n
        self._it = iter(_to_iter(self._batches[n:], self._config))

    def close(self) -> None:
        """Stops the worker processes (if any); `set_state` starts new ones."""
        self._it.close()


def create_train_iterator(config, process_index: int = 0, process_count: int = 1) -> TrainIterator:
    """Infinite iterator of this process's share of each global batch, epoch after epoch.

    `next(it)` gives {'inputs', 'targets'} float32 (B_local, T, H, W, C); `it.get_state()` is
    {'next_index': n} and `it.set_state` restores it so the next batch is the one that would
    have come next, with any config.data.worker_count (the stream does not depend on it).
    """
    ds = get_dataset(config)
    b_local = _local_batch(int(config.data.batch_size), process_count, "batch_size")
    per_epoch = steps_per_epoch(config) * int(config.data.batch_size)
    m = config.model
    # Stream position g is (epoch g // per_epoch, index g % per_epoch); each epoch drops its own
    # remainder, so this is built from range+repeat rather than Grain's shuffle-then-repeat.
    stream = grain.MapDataset.range(per_epoch).repeat()
    stream = stream.map_with_index(_TrainSample(ds, per_epoch))
    batches = stream.batch(
        b_local,
        drop_remainder=True,
        batch_fn=functools.partial(_stack_train, frames_in=m.frames_in, frames_out=m.frames_out),
    )
    # Chunk k of B_local samples is global batch k // P, rows (k % P) * B_local...: process p
    # takes every P-th chunk, so the processes' shards of a step concatenate to the global batch.
    batches = batches[process_index::process_count]
    return TrainIterator(batches, config)


def create_eval_iterator(
    config, split: str = "val", process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """Finite iterable over a whole split, padded to full batches; 'mask' is 0 on padding."""
    if split not in ("val", "test"):
        raise ValueError(f"split={split!r}: expected 'val' or 'test'")
    ds = get_dataset(config)
    b = int(config.data.eval_batch_size)
    b_local = _local_batch(b, process_count, "eval_batch_size")
    n = ds.eval_size(split)
    n_padded = math.ceil(n / b) * b
    m = config.model
    samples = grain.MapDataset.range(n_padded).map(_EvalSample(ds, split, n))
    batches = samples.batch(
        b_local,
        batch_fn=functools.partial(_stack_eval, frames_in=m.frames_in, frames_out=m.frames_out),
    )
    return _to_iter(batches[process_index::process_count], config)


def describe_source(config, split: str) -> str:
    """One line saying where `split`'s data comes from."""
    if split not in common.SPLITS:
        raise ValueError(f"split={split!r}: expected one of {common.SPLITS}")
    return get_dataset(config).describe(split)
