"""What a new user sees: progress with an ETA, clean output, a plain log, a sane thread count.

Runs the real CLI (``python -m ss4rec train``) as a subprocess on the ``tiny`` ML-100K
config, with stdout and stderr not a terminal, as on a pod or in CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ss4rec.threads import choose_threads, usable_cpus
from ss4rec.errors import UserError

TINY = ["--config", "tiny", "--set", "d_state=8", "--set", "d_P=8", "--set", "expand=1", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("first-run")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    command = [sys.executable, "-m", "ss4rec", "train", *TINY, "--threads", "1",
               "--set", "progress_interval=0.001", "--output", str(out / "run")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr, out / "run"


def test_progress_lines_with_eta_when_output_is_not_a_terminal(tiny_cli_run):
    output, run = tiny_cli_run
    lines = [line for line in output.splitlines() if re.search(r"epoch 0: batch \d+/\d+ \(\d+%\)", line)]
    assert lines, output[-2000:]
    assert all("s/batch, ETA " in line and "(mean per target)" in line and ", lr " in line for line in lines)
    assert lines[0].split("batch ")[1].startswith("1/")  # the first batch already gives an ETA
    assert lines == [line for line in (run / "train.log").read_text().splitlines()
                     if re.search(r"epoch 0: batch \d+/\d+", line)]


def test_a_normal_run_prints_no_warnings_and_logs_plain_text(tiny_cli_run):
    output, run = tiny_cli_run
    assert "Warning" not in output and "warning" not in output.lower(), output[-3000:]
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "\x1b[" not in log and "\x1b[" not in output
    assert output.count("runs on the 'torch' backend") == 1
    assert "torch threads: 1 (from --threads" in output


def test_thread_count_comes_from_flag_env_or_usable_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(3) == (3, "--threads")
    threads, why = choose_threads()
    assert threads == usable_cpus() >= 1 and "affinity" in why
    assert usable_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads() == (2, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(UserError, match="OMP_NUM_THREADS='two'"):
        choose_threads()
    with pytest.raises(UserError, match="--threads 0"):
        choose_threads(0)
