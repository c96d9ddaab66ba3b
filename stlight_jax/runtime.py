"""Process-wide settings for the entry points (train.py, evaluate.py, benchmarks): joining a
multi-process run, and glibc malloc settings for CPU runs.

XLA:CPU allocates one temp block per executable call on a worker thread (2.8 GB for the MMNIST-S
train step at batch 4), and glibc maps it fresh and unmaps it every call: with 4 KB pages each
step page-faults about 690k times and the kernel zero-fills every page. Two remedies, measured
in benchmarks/README.md:

- transparent huge pages for malloc (`reexec_with_malloc_hugepages`): 2 MB pages, about 2k
  faults per step, memory still returned after each step; the default of the entry points;
- keeping freed memory (`tune_cpu_malloc`): no faults at all, but the process keeps its peak
  heap; opt-in, for JAX-only benchmarks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys


def define_distributed_flags() -> None:
    """The absl flags with which train.py and evaluate.py join a multi-process run."""
    from absl import flags

    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detect).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


def initialize_distributed_from_flags() -> None:
    """Calls jax.distributed.initialize() when those flags ask for it, then logs the layout."""
    import jax
    from absl import flags, logging

    from stlight_jax import peers

    f = flags.FLAGS
    if f.coordinator_address and f.process_id is not None:
        # Process 0's coordination service in a helper, so that a dead process 0 is reported
        # too (peers.initialize).
        peers.initialize(f.coordinator_address, f.num_processes, f.process_id)
    elif f.coordinator_address or f.distributed:
        jax.distributed.initialize(
            coordinator_address=f.coordinator_address,
            num_processes=f.num_processes,
            process_id=f.process_id,
            # JAX ends a survivor with a C++ abort at this timeout; the peer watch, which
            # stops it cleanly after peers.LOST_AFTER_S, must come first.
            heartbeat_timeout_seconds=peers.HEARTBEAT_TIMEOUT_S,
        )
    if f.coordinator_address or f.distributed:
        peers.start(os.path.basename(sys.argv[0]))  # a dead peer: one line, not an abort
    logging.info(
        "process %d/%d, devices %s", jax.process_index(), jax.process_count(), jax.devices()
    )


HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_ENV = "STLIGHT_JAX_DEFAULT_MALLOC"  # =1: leave glibc's malloc as it is
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. 'glibc 2.36'
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):
        return None


def malloc_hugepages_possible() -> bool:
    """glibc >= 2.35 (the `glibc.malloc.hugetlb` tunable) and a kernel that grants THP."""
    if not sys.platform.startswith("linux"):
        return False
    version = _glibc_version()
    if version is None or version < (2, 35):
        return False
    try:
        with open(_THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def malloc_hugepages_active() -> bool:
    return "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", "")


def reexec_with_malloc_hugepages() -> None:
    """Restarts this process with glibc's malloc on transparent huge pages, where that applies.

    glibc reads GLIBC_TUNABLES only at start-up, so the setting needs a fresh exec of the same
    command line (same pid, same open files). Call it first thing in `if __name__ == "__main__"`,
    before anything else is done that the restart would repeat. It returns without restarting
    when hugepages are already set (so the restarted process goes on), when they cannot apply
    (not Linux, glibc < 2.35, THP 'never'), or when STLIGHT_JAX_DEFAULT_MALLOC=1.
    Why, and how it was measured (no result file was kept): benchmarks/README.md, item 7.
    """
    if os.environ.get(OPT_OUT_ENV) == "1" or malloc_hugepages_active():
        return
    if not malloc_hugepages_possible():
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, HUGETLB_TUNABLE) if t))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def tune_cpu_malloc() -> bool:
    """Keeps freed heap memory for reuse so XLA:CPU's per-call temp buffers stop page-faulting.

    The temp block is allocated on a worker thread, which would map it from its own arena; one
    arena, no mmap, and no trimming (-1: glibc's "never trim"; a finite threshold below the
    block size still returns it every step) let the block be reused. The process then keeps its
    peak heap: with PyTorch in the same process at batch 16 this overflowed 24 GiB.
    Process-wide and opt-in: call it first thing in a CPU benchmark process.
    Returns False where it does not apply (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    ok = mallopt(m_arena_max, 1) and mallopt(m_mmap_max, 0)
    return bool(ok and mallopt(m_trim_threshold, -1))
