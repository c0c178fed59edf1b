"""A run folder written by ss4rec 0.1.0 before the package moved into layer packages
(``tests/data/run-0.1.0``: SS4Rec, ``tiny``, 2 epochs) still evaluates and resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

OLD_RUN = Path(__file__).resolve().parent / "data" / "run-0.1.0"


def ss4rec_cli(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "ss4rec", *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture()
def old_run(tmp_path):
    """A copy: evaluating or resuming must not write into the repository."""
    run = tmp_path / "old-run"
    shutil.copytree(OLD_RUN, run)
    return run


def test_old_run_evaluates_to_its_recorded_test_metrics(old_run, tmp_path):
    recorded = json.loads((old_run / "results.json").read_text())["test"]
    ss4rec_cli("evaluate", "--checkpoint", str(old_run / "checkpoints" / "SS4Rec-best.pth"),
               "--output", str(tmp_path / "eval"), cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics == recorded  # both rounded to 4 digits, as RecBole reports them


def test_old_run_resumes_for_one_more_epoch(old_run, tmp_path):
    # the run's own command, with one more epoch
    ss4rec_cli("train", "--model", "SS4Rec", "--dataset", "ml-100k", "--config", "tiny", "--set", "d_state=8",
               "--set", "d_P=8", "--set", "expand=1", "--set", "epochs=3",
               "--resume", str(old_run / "checkpoints" / "SS4Rec-last.pth"),
               "--output", str(tmp_path / "resumed"), "--device", "cpu", cwd=tmp_path)
    result = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert result["epochs_run"] == 3
    assert result["training"]["resumed_from"]["changed"] == {"epochs": [2, 3]}
    assert result["test"]["hit@10"] > 10 / (result["n_items"] - 1)
