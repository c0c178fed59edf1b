"""How many CPU threads torch uses: the CPUs this process may use, not the machine's cores.

torch's default is one thread per core it sees. In a container with a CPU quota, or beside
other jobs, that oversubscribes: our S5 layer's forward+backward took 480 ms with torch's
default 2 threads next to another process, 18-60 ms with one. The CLI therefore sets the
count explicitly, from (in order): ``--threads``, ``OMP_NUM_THREADS``, or the CPUs this
process may run on (its affinity mask, capped by a cgroup CPU quota) less those other work
keeps busy (the load average), at least one; and logs the choice. Measured on this
project's 2-core machine at load 4-5.6: a sequence-mode ML-100K epoch took 28 s with one
thread and 48-67 s with two.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ss4rec.errors import UserError


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2/v1 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_quota() -> int | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else math.ceil(quota / period)
    except (OSError, ValueError):
        return None


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """(threads, why): ``requested`` (--threads), else OMP_NUM_THREADS, else :func:`usable_cpus`."""

    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads {requested}: use a whole number >= 1")
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        if env.isdigit() and int(env) >= 1:
            return int(env), "OMP_NUM_THREADS"
        raise UserError(f"OMP_NUM_THREADS={env!r} is not a whole number >= 1: fix or unset it")
    cpus = usable_cpus()
    busy = _busy_cpus()
    threads = max(1, min(cpus, round(cpus - busy)))
    if threads < cpus:
        return threads, (f"{cpus} CPUs this process may use, ~{busy:.1f} of them busy with other "
                         "work (load average)")
    return threads, "the CPUs this process may use (affinity and cgroup quota)"


def _busy_cpus() -> float:
    """CPUs other processes keep busy: the 1-minute load average (0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def apply_threads(requested: int | None = None) -> str:
    """Set torch's intra-op thread count (see :func:`choose_threads`); returns a log line."""

    threads, why = choose_threads(requested)
    torch.set_num_threads(threads)
    return f"torch threads: {threads} (from {why}; --threads N to change)"
