"""One run per run folder, and no folder left behind by a run refused for its settings."""

from __future__ import annotations

import subprocess
import sys
import time

TINY = ["--config", "tiny", "--set", "d_state=8", "--set", "d_P=8", "--set", "expand=1", "--device", "cpu",
        "--threads", "1"]


def _train(*args):
    return [sys.executable, "-m", "ss4rec", "train", *TINY, *args]


def test_a_second_run_into_a_busy_folder_is_refused_and_the_first_stays_intact(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(_train("--set", "epochs=2", "--output", str(run)), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lock = run / ".ss4rec.lock"
    deadline = time.time() + 300
    while not (lock.exists() and lock.read_text().startswith("pid ")) and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(_train("--output", str(run)), capture_output=True, text=True, timeout=300)
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    assert second.returncode == 2
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: run folder {run} is in use by pid {first.pid}") and "--output" in last
    assert "Traceback" not in second.stderr
    import json

    results = json.loads((run / "results.json").read_text())
    assert results["epochs_run"] == 2  # the first run's, whole
    assert lock.read_text() == ""  # released


def test_refused_settings_leave_no_run_folder(tmp_path):
    run = tmp_path / "never"
    proc = subprocess.run(_train("--set", "num_epochs=3", "--output", str(run)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "unknown config key 'num_epochs'" in proc.stderr
    assert not run.exists()


def test_output_that_is_a_file_is_a_clean_error(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    for output in (target, target / "below"):
        proc = subprocess.run(_train("--output", str(output)), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "cannot create the run folder" in proc.stderr and "Traceback" not in proc.stderr
