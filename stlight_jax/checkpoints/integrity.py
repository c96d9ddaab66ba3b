"""SHA-256 digests of a checkpoint's state, saved with each step and checked on restore,
because Orbax/TensorStore do not detect garbled array data.

Each step's digests live in `<step>/stlight_sha256.json` (written atomically after the save,
so damage to Orbax's metadata cannot take them away) and as a copy in Orbax's step metadata.
A step without readable digests is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

DIGEST_KEY = "sha256"  # {top-level state key: digest}, in DIGEST_FILE and custom metadata
DIGEST_FILE = "stlight_sha256.json"  # in each step's directory, written after the save


class CorruptCheckpointError(ValueError):
    """A checkpoint restored without error but its arrays differ from what was saved."""


def _host_copy(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        # Replicated over several processes: every process holds the whole value.
        if not x.sharding.is_fully_replicated:
            raise ValueError("checkpoint digests need replicated (or local) arrays")
        x = x.addressable_data(0)
    return np.asarray(x)


def digests(state: Any) -> dict[str, str]:
    """SHA-256 of each top-level entry of `state` (over paths, dtypes, shapes and bytes).

    Orbax/TensorStore do not checksum array data: a checkpoint with garbled bytes inside a
    compressed chunk can restore "successfully" with wrong values (seen here: weights off by
    1e32). These digests, saved with each step, let a restore detect that.
    """
    groups = state.items() if isinstance(state, dict) else [("", state)]
    out = {}
    for name, tree in groups:
        h = hashlib.sha256()
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            a = np.ascontiguousarray(_host_copy(leaf))
            h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        out[name] = h.hexdigest()
    return out


def digest_file(manager, step: int) -> str:
    directory = getattr(manager, "stlight_directory", None) or os.fspath(manager.directory)
    return os.path.join(directory, str(step), DIGEST_FILE)


def _valid_digests(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, str) and len(v) == 64 for v in value.values())
    )


def saved_digests(manager, step: int) -> dict[str, str]:
    """The SHA-256 digests saved with `step`: from its digest file, else from the copy in
    Orbax's step metadata. Raises CorruptCheckpointError when neither holds readable digests
    (a step whose data cannot be verified is never used) or when the digest file is damaged.
    """
    path = digest_file(manager, step)
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)[DIGEST_KEY]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(
                f"step {step}: its digest file {path} is unreadable ({type(e).__name__})"
            ) from e
        if not _valid_digests(saved):
            raise CorruptCheckpointError(f"step {step}: its digest file {path} is damaged")
        return saved
    try:
        saved = (manager.metadata(step).custom_metadata or {}).get(DIGEST_KEY)
    except Exception:  # a damaged metadata file: as good as none
        saved = None
    if not _valid_digests(saved):
        raise CorruptCheckpointError(
            f"step {step}: no readable SHA-256 digests (no {DIGEST_FILE}, none in Orbax's "
            "metadata); its data cannot be verified, so it is not used"
        )
    return saved


def verify(manager, step: int, state: Any) -> None:
    """Raises CorruptCheckpointError when `state` does not match the digests saved at `step`
    (or when there are none to check it against)."""
    saved = saved_digests(manager, step)
    got = digests(state)
    bad = sorted(k for k in got if saved.get(k) != got[k])
    if bad:
        raise CorruptCheckpointError(
            f"step {step}: restored {', '.join(bad)} do not match the saved SHA-256"
        )


def write_digest_file(manager, step: int, state_digests: dict[str, str]) -> None:
    """Writes the step's digests beside its data, atomically (temp file, fsync, rename), so a
    damaged or deleted Orbax metadata file cannot take them away."""
    if jax.process_index() != 0:
        return
    path = digest_file(manager, step)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"step": int(step), DIGEST_KEY: state_digests}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
