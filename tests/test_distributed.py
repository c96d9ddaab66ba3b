"""Data parallelism: 1 vs 8 CPU devices, 8-device checkpoints on 1 device, and two processes.

Every multi-device run happens in a subprocess (XLA_FLAGS must be set before jax is
imported; jax.distributed needs its own processes), bounded by a timeout. The loss is
fetched after every step: in-process CPU collectives can deadlock when steps are dispatched
without ever syncing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from stlight_jax import data, sharding
from stlight_jax.steps import create_train_state, create_train_step
from stlight_jax.training import optimizer as optim
from stlight_jax.training import schedules
from tests import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, os, sys
mode, data_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "dp8":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from stlight_jax import data, sharding
from stlight_jax.checkpoints import manager as checkpoint
from stlight_jax.training import optimizer as optim
from stlight_jax.training import schedules
from stlight_jax.steps import create_train_state, create_train_step
from tests import tiny_config

if mode == "multihost":
    pid, port = int(sys.argv[4]), int(sys.argv[5])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
        initialization_timeout=60,
    )

config = tiny_config.get_config(data_path)
# Adam turns rounding noise in near-zero gradients into changes of about lr; 1e-3 (instead of
# the tiny config's 1e-2) keeps those below 1e-5 of the weights, as a data-parallel bug
# (per-device BatchNorm statistics, a wrong gradient mean) would not be.
config.optimizer.learning_rate = 1e-3
spe = data.steps_per_epoch(config)
scheds = schedules.create_schedules(config, spe)
tx = optim.create_optimizer(config, scheds)
NULL = json.loads(sys.argv[-1])


def run(mesh, steps, state=None, it=None, losses=None):
    graphdef, fresh = create_train_state(config, tx)
    if state is None:
        state = jax.device_put(perturbed(fresh), NamedSharding(mesh, P()))
    if it is None:
        it = data.create_train_iterator(config, jax.process_index(), jax.process_count())
    step = create_train_step(graphdef, tx, scheds.lr, mesh)
    for _ in range(steps):
        state, metrics = step(state, sharding.global_batch(next(it), mesh))
        assert np.isfinite(float(metrics["loss"]))  # fetch every step
        if losses is not None:
            losses.append(float(metrics["loss"]))
    return state, it


def perturbed(state):
    # Hybrid init zeroes the biases, and a bias moved only by a few Adam steps makes
    # "relative to the tensor's max abs" measure rounding noise against lr-sized values.
    leaves, tree = jax.tree.flatten(state["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return {**state, "params": jax.tree.unflatten(tree, leaves)}


def host(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(x.addressable_data(0))
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def max_rel(a, b):
    return max(
        float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-30))
        for k in b
        if not any(n in k for n in NULL)
    )


if mode == "dp8":
    assert jax.device_count() == 8
    losses1, losses8 = [], []
    one, _ = run(sharding.create_mesh(jax.devices()[:1]), 5, losses=losses1)
    mesh8 = sharding.create_mesh()
    eight, it = run(mesh8, 5, losses=losses8)
    assert all(x.sharding.num_devices == 8 for x in jax.tree.leaves(eight))
    result = {k: max_rel(host(eight[k]), host(one[k])) for k in ("params", "batch_stats")}
    result["losses1"], result["losses8"] = losses1, losses8
    result["worst"] = sorted(
        ((max_rel({p: a}, {p: b}), p) for (p, a), b in zip(host(eight).items(), host(one).values())
         if not any(n in p for n in NULL)), reverse=True)[:4]
    manager = checkpoint.create_manager(os.path.join(out, "ckpt"))
    checkpoint.save(manager, 5, eight, it.get_state())
    manager.close()
    cont, _ = run(mesh8, 2, state=eight, it=it)
    np.savez(os.path.join(out, "cont8.npz"), **host(cont["params"]))
elif mode == "restore1":
    assert jax.device_count() == 1
    mesh = sharding.create_mesh()
    _, fresh = create_train_state(config, tx)
    target = checkpoint.abstract_like(jax.device_put(fresh, NamedSharding(mesh, P())))
    manager = checkpoint.create_manager(os.path.join(out, "ckpt"))
    step, state, data_state = checkpoint.restore_latest_readable(manager, target)
    manager.close()
    it = data.create_train_iterator(config)
    it.set_state(data_state)
    cont, _ = run(mesh, 2, state=state, it=it)
    want = np.load(os.path.join(out, "cont8.npz"))
    got = host(cont["params"])
    result = {"step": step, "cont_rel": max_rel(got, dict(want))}
elif mode == "multihost":
    assert jax.process_count() == 2 and jax.device_count() == 2
    losses = []
    state, _ = run(sharding.create_mesh(), 3, losses=losses)
    result = {"pid": pid, "losses": losses}
    if pid == 0:
        np.savez(os.path.join(out, "multihost.npz"), **host(state["params"]))
    jax.distributed.shutdown()
with open(os.path.join(out, f"{mode}_{jax.process_index()}.json"), "w") as f:
    json.dump(result, f)
"""


# The patch encoder's conv bias feeds train-mode BatchNorm: its true gradient is zero, its
# computed one rounding noise that Adam scales up to lr-sized steps, differently for any change
# of summation order (see test_train_parity.py). It and the running mean it shifts are left out.
NULL = ["['patch_encoder']['bias']", "['patch_encoder']['norm']['mean']"]


def start(tmp_path, mode, *extra):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    log = open(tmp_path / f"{mode}{''.join(extra[:1])}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            mode,
            str(tmp_path / "data.npz"),
            str(tmp_path),
            *extra,
            json.dumps(NULL),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def finish(tmp_path, proc, name, timeout=180):
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, (tmp_path / f"{name}.log").read_text()[-3000:]


def result(tmp_path, name):
    with open(tmp_path / f"{name}.json") as f:
        return json.load(f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two subprocess runs on 1 and 8 devices: ~60 s on 2 cores
def test_one_vs_eight_devices_and_checkpoint_from_eight_on_one(tmp_path):
    tiny_config.write_data(str(tmp_path / "data.npz"))
    finish(tmp_path, start(tmp_path, "dp8"), "dp8")
    dp = result(tmp_path, "dp8_0")
    print(f"1 vs 8 devices, 5 steps: {dp}")
    assert dp["params"] <= 1e-5 and dp["batch_stats"] <= 1e-5
    # Step by step, the loss of the global batch: Adam is nearly blind to a gradient's scale
    # (a per-device sum instead of the global mean moves the parameters by ~eps), the loss not.
    assert len(dp["losses8"]) == 5 and len(set(dp["losses1"])) == 5
    np.testing.assert_allclose(dp["losses8"], dp["losses1"], rtol=1e-5)
    finish(tmp_path, start(tmp_path, "restore1"), "restore1")
    restored = result(tmp_path, "restore1_0")
    print(f"8-device checkpoint continued on 1 device: rel diff {restored['cont_rel']:.2e}")
    assert restored["step"] == 5 and restored["cont_rel"] <= 1e-5


@pytest.mark.slow  # two jax.distributed processes on 2 cores: about a minute
def test_two_processes_match_one(tmp_path):
    config = tiny_config.get_config(tiny_config.write_data(str(tmp_path / "data.npz")))
    config.optimizer.learning_rate = 1e-3  # as in the worker
    port = str(free_port())
    procs = [start(tmp_path, "multihost", str(pid), port) for pid in (0, 1)]
    for pid, proc in enumerate(procs):
        finish(tmp_path, proc, f"multihost{pid}")

    # The same 3 steps in this process on one device with the whole global batch.
    spe = data.steps_per_epoch(config)
    scheds = schedules.create_schedules(config, spe)
    tx = optim.create_optimizer(config, scheds)
    graphdef, state = create_train_state(config, tx)
    leaves, tree = jax.tree.flatten(state["params"])  # the worker's `perturbed`
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)
    ]
    state = {**state, "params": jax.tree.unflatten(tree, leaves)}
    mesh = sharding.create_mesh(jax.devices()[:1])
    step = create_train_step(graphdef, tx, scheds.lr, mesh)
    it = data.create_train_iterator(config)
    losses = []
    for _ in range(3):
        state, metrics = step(state, sharding.global_batch(next(it), mesh))
        losses.append(float(metrics["loss"]))
    for pid in (0, 1):  # every process reports the global batch's loss, step by step
        np.testing.assert_allclose(
            result(tmp_path, f"multihost_{pid}")["losses"], losses, rtol=1e-5
        )
    want = {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(state["params"])[0]
    }
    got = dict(np.load(tmp_path / "multihost.npz"))
    assert set(got) == set(want)
    rel = max(
        float(np.max(np.abs(got[k] - w)) / max(np.max(np.abs(w)), 1e-30))
        for k, w in want.items()
        if not any(n in k for n in NULL)
    )
    print(f"2 processes vs 1: max param rel diff {rel:.2e}")
    assert rel <= 1e-5
