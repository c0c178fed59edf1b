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

from ss4rec.training.threads import choose_threads, usable_cpus
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
    threads, why = choose_threads()  # usable CPUs less the busy ones (load average), >= 1
    assert 1 <= threads <= usable_cpus() and "CPUs this process may use" in why
    assert usable_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads() == (2, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(UserError, match="OMP_NUM_THREADS='two'"):
        choose_threads()
    with pytest.raises(UserError, match="--threads 0"):
        choose_threads(0)


def test_resume_with_a_relative_path_from_another_directory_totals_every_leg(tiny_cli_run, tmp_path):
    import json
    import shutil

    _, finished = tiny_cli_run  # one epoch, done
    work = tmp_path / "elsewhere"
    shutil.copytree(finished, work / "run")
    (work / "cwd").mkdir()
    first = json.loads((work / "run" / "results.json").read_text())
    command = [sys.executable, "-m", "ss4rec", "train", *TINY, "--threads", "1", "--set", "epochs=2",
               "--resume", "../run/checkpoints/SS4Rec-last.pth"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=work / "cwd", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "run" / "results.json").read_text())  # --output: the run's folder
    assert results["epochs_run"] == 2 and results["training"]["epochs_ran"] == [1]
    assert results["train_seconds"] > first["train_seconds"]

    missing = subprocess.run([sys.executable, "-m", "ss4rec", "train", *TINY, "--resume", "no/such.pth"],
                             capture_output=True, text=True, cwd=work / "cwd", timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: --resume ")
    assert "no such checkpoint file" in missing.stderr and "Traceback" not in missing.stderr
    assert "The number of users" not in missing.stdout + missing.stderr  # failed before loading data


def test_every_run_writes_curves_png_and_report_compares_runs(tiny_cli_run, ss4rec_ce_run, tmp_path):
    import json

    import matplotlib.image

    _, run = tiny_cli_run
    image = matplotlib.image.imread(run / "curves.png")  # a valid PNG, decoded
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    history = json.loads((run / "results.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0] and history[0]["train_loss"] > 0 and history[0]["valid"]

    other = ss4rec_ce_run["run_dir"]
    plot = tmp_path / "report.png"
    proc = subprocess.run([sys.executable, "-m", "ss4rec", "report", str(run), other, "--plot", str(plot)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and "ndcg@10" in table[0]  # header and one row per run
    assert matplotlib.image.imread(plot).shape[0] > 100

    bad = subprocess.run([sys.executable, "-m", "ss4rec", "report", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr and "Traceback" not in bad.stderr


def test_help_imports_neither_torch_nor_recbole():
    code = ("import sys, ss4rec.cli\n"
            "try:\n    ss4rec.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('loaded:', 'torch' in sys.modules, 'recbole' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "report" in proc.stdout and "train" in proc.stdout  # the subcommands are listed
    assert proc.stdout.strip().splitlines()[-1] == "loaded: False False"


def test_recbole_finds_ss4rec_when_imported_after_ss4rec():
    code = ("import ss4rec\nfrom recbole.utils import get_model\nimport recbole.data.dataset as d\n"
            "print(get_model('SS4Rec').__module__, d.SS4RecDataset.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ss4rec.models.ss4rec", "SS4RecDataset"]


def test_resuming_a_finished_run_leaves_its_results_alone(tiny_cli_run, tmp_path):
    import shutil

    _, finished = tiny_cli_run  # epochs=1 (tiny), done
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = (run / "results.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "ss4rec", "train", *TINY, "--threads", "1",
                           "--resume", str(run / "checkpoints" / "SS4Rec-last.pth")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nothing to do: the run in" in proc.stderr and "--set epochs=N" in proc.stderr
    assert (run / "results.json").read_bytes() == before
