"""Data parallelism over a ('data',) mesh of every device of every process: the mesh, global
batches from per-process ones, replicated weights, and whole batches gathered back to hosts.

The state is replicated and the batch sharded along its first axis, so BatchNorm statistics
are those of the global batch (PyTorch DDP computes them per GPU unless SyncBatchNorm is used).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def create_mesh(devices: Iterable[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over all devices (of all processes) unless `devices` is given."""
    devices = np.asarray(list(devices) if devices is not None else jax.devices())
    return jax.sharding.Mesh(devices, ("data",))


def check_divisible_by_devices(value: int, name: str) -> None:
    """Raises ValueError naming the `name` field unless `value` splits evenly over all devices."""
    n_dev = jax.device_count()
    if value % n_dev:
        raise ValueError(f"{name}={value} is not divisible by the {n_dev} devices")


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Split along the first (batch) axis over 'data'."""
    return NamedSharding(mesh, P("data"))


def global_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """Per-process numpy batch -> global jax arrays sharded along the batch axis."""
    sharding = batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """`tree` on every device of `mesh`, e.g. restored weights or fresh accumulators.

    With several processes the arrays sit on each process's own device, and a device-to-device
    copy to other hosts is not supported (XLA:CPU, GPUs without DCN transfers): every process
    holds the same values, so each places its host copy on its own devices.
    """
    if jax.process_count() > 1:
        tree = jax.device_get(tree)
    return jax.device_put(tree, replicated(mesh))


def split_order(mesh: jax.sharding.Mesh, batch_size: int) -> np.ndarray:
    """Rows of a global eval batch (as `global_batch` lays it out on `mesh`) in split order.

    `data.create_eval_iterator` hands process p the p-th of every `process_count` consecutive
    local batches, so the split order is process 0's rows, then process 1's, and so on; the
    global array holds them in the mesh's device order. The identity unless the mesh
    interleaves the processes' devices.
    """
    owned: dict[int, list[int]] = {}
    for device, index in batch_sharded(mesh).devices_indices_map((batch_size,)).items():
        owned.setdefault(device.process_index, []).extend(range(batch_size)[index[0]])
    return np.asarray([r for p in sorted(owned) for r in sorted(set(owned[p]))], np.int64)


def host_batch(batch: dict, gbatch: dict, order: np.ndarray) -> dict[str, np.ndarray]:
    """The whole global batch as numpy in every process, rows in split order.

    One process has it already (`batch`); with several, `process_allgather` collects every
    process's rows (a collective: all processes must call it for the same batches).
    """
    if jax.process_count() == 1:
        return {k: np.asarray(v) for k, v in batch.items()}
    host = multihost_utils.process_allgather(gbatch, tiled=True)
    return {k: np.asarray(v)[order] for k, v in host.items()}
