"""Checkpoints are trustworthy: damaged files, swapped data and changed settings are caught on
resume (and evaluate), with one line saying what differs; allowed changes are applied and
recorded; a run resumes into a new folder."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from ss4rec.cli import main as cli_main

GRU = ["--model", "GRU4Rec", "--config", "tiny", "--set", "hidden_size=16", "--set", "MAX_ITEM_LIST_LENGTH=10",
       "--device", "cpu"]


def _ml100k_rows(max_user):
    import recbole

    path = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [(u, i, t) for u, i, _, t in rows if int(u) <= max_user]


def _write_dataset(root: Path, max_user: int) -> None:
    (root / "mini").mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float", *("\t".join(r) for r in _ml100k_rows(max_user))]
    (root / "mini" / "mini.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """GRU4Rec trained 1 of 2 planned epochs... then finished: a run folder to resume from."""
    root = tmp_path_factory.mktemp("trust")
    run = root / "run"
    assert cli_main(["train", *GRU, "--set", "epochs=1", "--output", str(run)]) == 0
    return run


def _resume(run: Path, *extra, output=None):
    args = ["train", *GRU, "--set", "epochs=2", *extra, "--resume", str(run / "checkpoints" / "GRU4Rec-last.pth")]
    if output is not None:
        args += ["--output", str(output)]
    return cli_main(args)


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    return err.strip().splitlines()[-1]


def test_flipped_bytes_in_a_checkpoint_are_refused(two_epoch_run, tmp_path, capsys):
    run = _copy_run(two_epoch_run, tmp_path / "run")
    last = run / "checkpoints" / "GRU4Rec-last.pth"
    with zipfile.ZipFile(last) as archive:  # torch's format: the largest record is a tensor's bytes
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(last.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = start + info.file_size // 2
    for k in range(64):
        data[middle + k] ^= 0xFF
    last.write_bytes(bytes(data))
    assert _resume(run) == 2
    line = _last_error(capsys)
    assert line.startswith(f"error: checkpoint {last} is damaged: its content no longer matches the checksum")


@pytest.mark.parametrize("damage, words", [
    (lambda b: b"", "is empty (0 bytes)"),
    (lambda b: b[: len(b) // 2], "is truncated or damaged and cannot be read"),
    (lambda b: b"garbage" * 100, "is truncated or damaged and cannot be read"),
])
def test_empty_truncated_and_garbage_checkpoints_say_so(two_epoch_run, tmp_path, capsys, damage, words):
    run = _copy_run(two_epoch_run, tmp_path / "run")
    last = run / "checkpoints" / "GRU4Rec-last.pth"
    last.write_bytes(damage(last.read_bytes()))
    assert _resume(run) == 2
    line = _last_error(capsys)
    assert words in line and "pickled" not in line
    # evaluate reads checkpoints through the same loader
    best = run / "checkpoints" / "GRU4Rec-best.pth"
    best.write_bytes(damage(best.read_bytes()))
    assert cli_main(["evaluate", "--checkpoint", str(best)]) == 2
    assert words in _last_error(capsys)


def test_a_dataset_swap_is_refused_on_resume_and_evaluate(tmp_path, capsys):
    data = tmp_path / "data"
    _write_dataset(data, max_user=150)
    run = tmp_path / "run"
    args = [*GRU, "--dataset", "mini", "--data-path", str(data)]
    assert cli_main(["train", *args, "--set", "epochs=1", "--output", str(run)]) == 0
    capsys.readouterr()
    _write_dataset(data, max_user=140)  # another file under the same name
    code = cli_main(["train", *args, "--set", "epochs=2", "--resume", str(run / "checkpoints" / "GRU4Rec-last.pth")])
    assert code == 2
    line = _last_error(capsys)
    assert "was trained on other data than this run loads" in line and "rows:" in line
    assert cli_main(["evaluate", "--checkpoint", str(run / "checkpoints" / "GRU4Rec-best.pth")]) == 2
    assert "was trained on other data" in _last_error(capsys)


def test_changed_settings_are_refused_or_applied_and_recorded(two_epoch_run, tmp_path, capsys):
    run = _copy_run(two_epoch_run, tmp_path / "run")
    assert _resume(run, "--set", "hidden_size=32") == 2
    line = _last_error(capsys)
    assert "settings differ from the run's (hidden_size: 16 in the checkpoint, 32 now)" in line

    assert _resume(run, "--set", "learning_rate=0.001") == 0
    results = json.loads((run / "results.json").read_text())
    resumed = results["training"]["resumed_from"]
    assert resumed["changed"] == {"learning_rate": [0.005, 0.001], "epochs": [1, 2]}
    assert set(results["training"]["lr_last_steps"]) == {0.001}  # trained at the new rate
    assert results["config"]["learning_rate"] == 0.001
    assert results["epochs_run"] == 2  # both legs
    assert "resume: learning_rate 0.005 -> 0.001 (applied)" in (run / "train.log").read_text()


def test_resume_into_a_new_folder(two_epoch_run, tmp_path, capsys):
    run = _copy_run(two_epoch_run, tmp_path / "run")
    new = tmp_path / "continued"
    assert _resume(run, output=new) == 0
    results = json.loads((new / "results.json").read_text())
    assert results["epochs_run"] == 2 and results["test"]["ndcg@10"] > 0
    assert (new / "checkpoints" / "GRU4Rec-best.pth").is_file()
    assert Path(results["checkpoint"]).parent == new / "checkpoints"
    # the original run is left as it was
    assert json.loads((run / "results.json").read_text())["epochs_run"] == 1


def test_evaluate_after_the_data_moved_takes_data_path(tmp_path, capsys):
    data = tmp_path / "data"
    _write_dataset(data, max_user=150)
    run = tmp_path / "run"
    assert cli_main(["train", *GRU, "--dataset", "mini", "--data-path", str(data), "--set", "epochs=1",
                     "--output", str(run)]) == 0
    capsys.readouterr()
    moved = tmp_path / "moved"
    data.rename(moved)
    best = str(run / "checkpoints" / "GRU4Rec-best.pth")
    assert cli_main(["evaluate", "--checkpoint", best]) == 2
    assert "--data-path" in _last_error(capsys)
    assert cli_main(["evaluate", "--checkpoint", best, "--data-path", str(moved), "--output", str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]
    results = json.loads((run / "results.json").read_text())
    assert round(metrics["ndcg@10"], 4) == round(results["test"]["ndcg@10"], 4)


def test_epochs_run_counts_every_epoch_after_a_kill_and_resume(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    args = [sys.executable, "-m", "ss4rec", "train", *GRU, "--set", "epochs=4", "--output", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = run / "checkpoints" / "GRU4Rec-last.pth"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid-run, as a pod that is taken away
    proc.wait()
    assert last.exists() and not (run / "results.json").exists()
    resumed = subprocess.run([*args, "--resume", str(last)], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_run"] == 4 and len(results["history"]) == 4
    assert results["training"]["resumed_from"]["epochs_done"] >= 1
