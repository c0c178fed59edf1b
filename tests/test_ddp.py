"""Distributed training (DDP) on CPU: ``--nproc 2 --device cpu`` and ``torchrun`` (gloo).

Every run is real: ``ss4rec train`` in subprocesses, two processes of real RecBole training
on the tiny ML-100K config, talking over gloo on 127.0.0.1. ``SS4REC_DDP_DUMP_DIR`` turns on
the test hook of :mod:`ss4rec.training.distributed`: each rank writes its pid as training starts and
its trained weights after fit, so a test can compare the ranks and kill one of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ss4rec
from ss4rec.training.checkpoint import load_checkpoint
from ss4rec.training.distributed import DUMP_ENV, check_world, free_port, rank_environment
from ss4rec.errors import UserError

from conftest import TINY_SS4REC

SETS = [f"--set={k}={v}" for k, v in TINY_SS4REC.items()]
COMMON = ["--config", "tiny", *SETS, "--device", "cpu"]


def env_for(dump: Path | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", DUMP_ENV):
        env.pop(key, None)
    if dump is not None:
        env[DUMP_ENV] = str(dump)
    return env


def train(*args, dump=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ss4rec", "train", *COMMON, *args], env=env_for(dump),
                          capture_output=True, text=True, timeout=timeout)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def assert_ranks_equal_checkpoint(dump: Path, checkpoint: Path) -> None:
    """Rank 1's weights after training (its own dump) equal rank 0's saved ones, bit for bit."""
    saved = load_checkpoint(checkpoint)["state_dict"]
    for rank in (0, 1):
        dumped = torch.load(dump / f"rank-{rank}.pth", weights_only=True)
        assert dumped.keys() == saved.keys()
        different = [k for k in saved if not torch.equal(dumped[k], saved[k])]
        assert not different, (rank, different)


def sharded_batches(settings: dict, world: int = 2) -> int:
    """Training batches per epoch of one rank when ``world`` ranks shard the rows of this run
    (RecBole: a DistributedSampler gives each rank ceil(rows / world) rows; each rank's batch
    is the single-process batch / world, rounded up); without sharding it would be about
    ``world`` times more."""
    from ss4rec.data.loaders import create_dataset, prepare_data
    from ss4rec.pipeline.settings import build_config

    config, _ = build_config("SS4Rec", "ml-100k", ["tiny"], {**TINY_SS4REC, **settings}, "cpu")
    train_data, _, _ = prepare_data(config, create_dataset(config))
    rows, step = len(train_data._dataset), -(-train_data.step // world)
    return -(-(-(-rows // world)) // step)


@pytest.fixture(scope="module")
def nproc_run(tmp_path_factory):
    """``ss4rec train --nproc 2 --device cpu``, 2 epochs, with the rank dump on."""
    root = tmp_path_factory.mktemp("nproc")
    started = time.time()
    proc = train("--set", "epochs=2", "--nproc", "2", "--output", str(root / "run"), dump=root / "dump")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc, time.time() - started


# ---- checks before anything runs: one-line errors ----

def test_layout_checks_name_the_mistake_and_the_fix(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert check_world(1) == "single process"
    assert check_world(2, "cpu") == "gloo on CPU, world size 2 (--nproc 2 on this machine)"
    with pytest.raises(UserError, match=r"--nproc 0: use a whole number >= 1"):
        check_world(0, "cpu")
    with pytest.raises(UserError, match=r"--nproc 2 needs 2 CUDA GPUs .* but torch sees 0: .*--device cpu"):
        check_world(2, "cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UserError, match=r"LOCAL_RANK, MASTER_ADDR, MASTER_PORT unset: start ss4rec with torchrun"):
        check_world(1, "cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert check_world(1, "cpu") == "gloo on CPU, world size 2 (torchrun)"
    with pytest.raises(UserError, match=r"--nproc 2 under torchrun .*use torchrun's --nproc-per-node"):
        check_world(2, "cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match=r"RANK=2 is not below WORLD_SIZE=2"):
        check_world(1, "cpu")
    assert rank_environment(2, 1, "127.0.0.1", 29500) == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_cli_nproc_on_missing_gpus_is_one_line(capsys):
    from ss4rec.cli import main

    assert main(["train", "--nproc", "2", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --nproc 2 needs 2 CUDA GPUs"), err


# ---- acceptance: --nproc 2 on CPU ----

def test_nproc2_on_cpu_writes_one_run_folder_and_ranks_end_identical(nproc_run):
    root, proc, _ = nproc_run
    run_dir = root / "run"
    result = results(run_dir)
    assert result["epochs_run"] == 2 and result["config"]["world_size"] == 2
    assert "distributed: gloo on CPU, world size 2" in proc.stderr
    # One writer: one results.json, one set of checkpoints, nothing from rank 1.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["SS4Rec-best.pth", "SS4Rec-last.pth"]
    assert not list(run_dir.glob("rank-*")) and len(list(root.rglob("results.json"))) == 1
    assert "rank 1" not in proc.stderr  # rank 1 logs warnings only, and had none
    assert_ranks_equal_checkpoint(root / "dump", run_dir / "checkpoints" / "SS4Rec-last.pth")
    # Sharded: each rank trains on half the rows in half batches, so an epoch has the
    # optimiser steps of one process (not twice as many).
    assert result["training"]["optimizer_steps"] == 2 * sharded_batches({})
    assert len(load_checkpoint(run_dir / "checkpoints" / "SS4Rec-last.pth")["rng_ranks"]) == 2


def test_single_process_evaluation_of_the_ddp_best_checkpoint_gives_results_json(nproc_run):
    from ss4rec.training.trainer import SS4RecTrainer

    run_dir = nproc_run[0] / "run"
    restored = ss4rec.pipeline.runner.restore(run_dir / "checkpoints" / "SS4Rec-best.pth")
    trainer = SS4RecTrainer(restored.config, restored.model)
    test = trainer.evaluate(restored.test_data, load_best_model=False)
    assert {k: float(v) for k, v in test.items()} == results(run_dir)["test"]


# ---- acceptance: torchrun, two "nodes" on one machine ----

def test_torchrun_two_nodes_trains_the_same(tmp_path, nproc_run):
    port = free_port()
    run_dir, dump = tmp_path / "run", tmp_path / "dump"
    nodes = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "ss4rec", "train", *COMMON, "--set", "epochs=2", "--output", str(run_dir)]
        out = open(tmp_path / f"node{node_rank}.out", "w+")
        nodes.append((subprocess.Popen(command, env=env_for(dump), stdout=out, stderr=subprocess.STDOUT), out))
    for process, out in nodes:
        assert process.wait(timeout=600) == 0, Path(out.name).read_text()[-3000:]
        out.close()
    assert "rank" not in (tmp_path / "node1.out").read_text()  # node 1 printed nothing of ours
    assert_ranks_equal_checkpoint(dump, run_dir / "checkpoints" / "SS4Rec-last.pth")
    # The same job as --nproc 2 (same seed, same sharding): the same weights and metrics.
    reference = nproc_run[0] / "run"
    assert results(run_dir)["test"] == results(reference)["test"]
    a = load_checkpoint(run_dir / "checkpoints" / "SS4Rec-last.pth")["state_dict"]
    b = load_checkpoint(reference / "checkpoints" / "SS4Rec-last.pth")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- acceptance: a rank killed mid-epoch; resume under --nproc 2 ----

@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A 2-epoch --nproc 2 run whose rank 1 is SIGKILLed in the middle of epoch index 1."""
    root = tmp_path_factory.mktemp("killed")
    run_dir, dump = root / "run", root / "dump"
    command = [sys.executable, "-m", "ss4rec", "train", *COMMON, "--set", "epochs=2", "--nproc", "2",
               "--output", str(run_dir)]
    with open(root / "first.out", "w+") as out:
        process = subprocess.Popen(command, env=env_for(dump), stdout=out, stderr=subprocess.STDOUT)
        log, deadline = run_dir / "train.log", time.time() + 300
        while time.time() < deadline and process.poll() is None and not (
                log.exists() and "epoch 1: batch 1/" in log.read_text()):
            time.sleep(0.02)
        pids = {r: int((dump / f"rank-{r}.pid").read_text()) for r in (0, 1)}
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.time()
        code = process.wait(timeout=300)
        waited = time.time() - killed_at
        out.seek(0)
        output = out.read()
    return root, code, waited, output, pids


def test_a_rank_killed_mid_epoch_stops_the_others_with_the_cause(killed_run):
    root, code, waited, output, pids = killed_run
    assert code != 0 and waited < 120, (code, waited, output[-3000:])
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 ") and "died (signal SIGKILL)" in last, output[-3000:]
    assert "--resume" in last and "SS4Rec-last.pth" in last
    with pytest.raises(ProcessLookupError):  # rank 0 is gone too
        os.kill(pids[0], 0)
    run_dir = root / "run"
    assert not (run_dir / "results.json").exists()
    assert load_checkpoint(run_dir / "checkpoints" / "SS4Rec-last.pth")["epoch"] == 0


def test_resume_under_nproc2_continues_from_the_last_epoch(killed_run):
    root = killed_run[0]
    run_dir, dump = root / "run", root / "dump-resumed"
    proc = train("--set", "epochs=2", "--nproc", "2",
                 "--resume", str(run_dir / "checkpoints" / "SS4Rec-last.pth"), dump=dump)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = results(run_dir)
    assert result["epochs_run"] == 2
    assert result["training"]["resumed_from"]["start_epoch"] == 1
    assert result["training"]["epochs_ran"] == [1]
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    assert_ranks_equal_checkpoint(dump, run_dir / "checkpoints" / "SS4Rec-last.pth")


# ---- beyond the acceptance list: guards and train_mode: sequence under DDP ----

def test_a_guard_stops_every_rank_at_the_same_step(tmp_path):
    run_dir = tmp_path / "run"
    started = time.time()
    proc = train("--set", "learning_rate=0.0", "--set", "guard_lr_zero=false",
                 "--set", "guard_baseline_warn_steps=4", "--set", "guard_baseline_fail_steps=10",
                 "--nproc", "2", "--output", str(run_dir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "stuck at the random baseline" in last and "after 10 steps, at epoch 0, batch 9" in last
    assert "Saved: last good weights" in last  # rank 0's own report, naming what it saved
    assert "Traceback" not in proc.stderr and time.time() - started < 120, proc.stderr[-3000:]
    assert (run_dir / "checkpoints" / "SS4Rec-guard-debug.json").is_file()  # rank 0 saved it
    assert not (run_dir / "results.json").exists()


def test_sequence_train_mode_is_sharded_across_ranks(tmp_path):
    run_dir = tmp_path / "run"
    proc = train("--set", "train_mode=sequence", "--nproc", "2", "--output", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = results(run_dir)
    assert result["training"]["optimizer_steps"] == sharded_batches({"train_mode": "sequence"})


def test_preflight_reports_backend_world_size_and_memory_for_all_processes(capsys):
    from ss4rec.cli import main

    assert main(["preflight", *COMMON, "--nproc", "2", "--no-env"]) == 0
    out = capsys.readouterr().out
    assert "processes (DDP)" in out and "gloo on CPU, world size 2 (--nproc 2 on this machine)" in out
    assert "for 2 processes on this machine" in out  # the host-memory estimate counts both copies
