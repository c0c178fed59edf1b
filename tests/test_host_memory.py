"""Freed host memory is kept for reuse on the CPU (ss4rec.training.host_memory): an SS4Rec
block's training steps stop faulting in fresh pages, and the user's own malloc settings win."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Forward and backward of one SS4Rec block (the shape of an ML-100K batch at length 50), 26
# times, after an optional keep_freed_memory(); prints the minor page faults of the last 16
# and the log line.
PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from ss4rec.models.ss4rec import SSBlock
    from ss4rec.training.host_memory import keep_freed_memory
    line = keep_freed_memory() if sys.argv[1] == "keep" else "-"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    block = SSBlock(64, 32, 32, 4, 2, 0.001, 0.1, 0.2, "SS4Rec", "torch")
    x, gaps = torch.randn(75, 50, 64, requires_grad=True), torch.rand(75, 50)
    def steps(n):
        for _ in range(n):
            block(x, gaps).sum().backward()
    steps(10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    steps(16)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(line)
    """
)


def _probe(mode: str, **env) -> tuple[int, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.pop("SS4REC_KEEP_FREED_MEMORY", None)
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          env={**environ, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    faults, line = proc.stdout.strip().splitlines()[-2:]
    return int(faults), line


def _is_glibc() -> bool:
    import platform

    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _is_glibc(), reason="the setting exists only with glibc (elsewhere it is a no-op)")
def test_kept_memory_stops_page_faults_from_repeated_allocations():
    default_faults, _ = _probe("default")
    kept_faults, line = _probe("keep")
    # glibc's defaults give back and take again MBs a step here: 2,300-24,000 faults in the 16
    # steps, varying run to run. Kept: at most a few hundred in all (one-off heap growth).
    assert kept_faults < 1_500, (kept_faults, default_faults, line)
    assert kept_faults < default_faults, (kept_faults, default_faults, line)
    assert line.startswith("host memory: freed blocks kept for reuse (glibc"), line


def test_the_users_choice_wins():
    faults, line = _probe("keep", SS4REC_KEEP_FREED_MEMORY="0")
    assert line == "host memory: glibc defaults (SS4REC_KEEP_FREED_MEMORY=0)"
    _, line = _probe("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert line == "host memory: the user's malloc settings (MALLOC_TRIM_THRESHOLD_)"


def test_calling_twice_is_harmless():
    from ss4rec.training.host_memory import keep_freed_memory

    assert keep_freed_memory() == keep_freed_memory()
