"""Bad input to the commands that reuse a run folder: planted pickles, out-of-range values.

RecBole unpickles dataset and dataloader caches it finds in a run's checkpoint folder; a
file planted there would run its code. Our runs never load one: resume, evaluate and
recommend on a run folder holding such files leave the planted code unexecuted."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path


class _Planted:
    """Unpickling this creates the file at ``marker`` (what an attacker's payload would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


TINY = ["--config", "tiny", "--set", "d_state=8", "--set", "d_P=8", "--set", "expand=1", "--device", "cpu"]


def test_planted_pickles_in_a_run_folder_are_never_loaded(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, "-m", "ss4rec", "train", *TINY, "--output", str(run)],
                           capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = run / "checkpoints"
    marker = tmp_path / "pwned"
    for name in ("ml-100k-SS4RecDataset.pth", "ml-100k-for-SS4Rec-dataloader.pth"):
        (checkpoints / name).write_bytes(pickle.dumps(_Planted(str(marker))))
    best = checkpoints / "SS4Rec-best.pth"
    commands = [
        ["evaluate", "--checkpoint", str(best), "--output", str(tmp_path / "eval")],
        ["recommend", "--checkpoint", str(best), "--top-k", "3", "--user"],  # + users the run knows
        ["train", *TINY, "--set", "epochs=2", "--resume", str(checkpoints / "SS4Rec-last.pth")],
    ]
    for command in commands:
        if command[0] == "recommend":
            ranks = (tmp_path / "eval" / "user_ranks.csv").read_text().splitlines()
            command += [line.split(",")[0] for line in ranks[1:3]]
        proc = subprocess.run([sys.executable, "-m", "ss4rec", *command], capture_output=True, text=True,
                              env=env, timeout=600)
        assert proc.returncode == 0, (command[0], proc.stderr[-3000:])
        assert not marker.exists(), f"`ss4rec {command[0]}` unpickled a planted file"
        assert "ignored " in proc.stdout + proc.stderr and "never loads one" in proc.stdout + proc.stderr


def test_out_of_range_topk_and_request_time_are_clean_errors(ss4rec_ce_run, tmp_path):
    best = ss4rec_ce_run["checkpoint"]
    cases = [
        (["evaluate", "--checkpoint", best, "--topk", "10", "5000", "--output", str(tmp_path / "e")],
         "--topk 5000 is more than the"),
        (["recommend", "--checkpoint", best, "--user", "594", "--at", "1e300"], "far outside any real timeline"),
    ]
    for command, message in cases:
        proc = subprocess.run([sys.executable, "-m", "ss4rec", *command], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
    assert not (tmp_path / "e").exists()
