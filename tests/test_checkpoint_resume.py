"""Checkpoints: plain dicts loaded with ``weights_only=True``; a killed run resumes exactly.

The resume test kills ``ss4rec train`` with SIGKILL right after its first epoch's
checkpoint appears, resumes it with ``--resume``, and compares the result with the same run
trained without interruption (same seed): RNG states, the dataloader's shuffling generator,
optimiser, early stopping and best score all come back, so the numbers match.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import ss4rec
from ss4rec.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ss4rec.errors import UserError

SMALL_YAML = 'user_inter_num_interval: "[0,25]"\ntrain_batch_size: 256\n'  # ~3 s epochs
EPOCHS = 3


class Opaque:
    """Any custom class: pickling it into a checkpoint makes the file unsafe to load."""


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(SMALL_YAML)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, small_config):
    """The reference: the same 3-epoch run, never stopped (one torch thread, as the CLI runs below)."""
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ss4rec.run(model="GRU4Rec", dataset="ml-100k", config_files=["tiny", small_config],
                          config_dict={"epochs": EPOCHS}, device="cpu",
                          output_dir=tmp_path_factory.mktemp("uninterrupted") / "run")
    finally:
        torch.set_num_threads(saved_threads)


def cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [sys.executable, "-m", "ss4rec", "train", *args], env


def test_sigkill_after_first_epoch_then_resume_matches_uninterrupted_run(tmp_path, small_config, uninterrupted):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "GRU4Rec-last.pth"
    common = ["--model", "GRU4Rec", "--config", "tiny", "--config", str(small_config),
              "--set", f"epochs={EPOCHS}", "--device", "cpu"]
    command, env = cli(*common, "--output", str(run_dir))
    with open(tmp_path / "first.out", "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not last.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # no chance to clean up: a real crash
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "first.out").read_text()[-2000:]
    assert load_checkpoint(last)["epoch"] == 0  # killed after epoch index 0 of 0..2
    assert not (run_dir / "results.json").exists()

    command, env = cli(*common, "--resume", str(last))  # --output defaults to the run's folder
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    resumed = ss4rec_results(run_dir)
    assert resumed["training"]["epochs_ran"] == [1, 2]  # 0-based: the 2nd and 3rd epochs
    assert resumed["training"]["resumed_from"]["epochs_done"] == 1
    log = (run_dir / "train.log").read_text()
    assert "training continues at epoch index 1 (epoch 2 of 3)" in log
    assert uninterrupted["training"]["epochs_ran"] == [0, 1, 2]
    assert resumed["best_valid"]["ndcg@10"] == pytest.approx(uninterrupted["best_valid"]["ndcg@10"], abs=0.002)
    assert resumed["best_valid_score"] == pytest.approx(uninterrupted["best_valid_score"], abs=0.002)
    assert resumed["test"]["ndcg@10"] == pytest.approx(uninterrupted["test"]["ndcg@10"], abs=0.002)
    final = load_checkpoint(last)
    assert final["epoch"] == EPOCHS - 1 and final["optim_step"] == 3 * 11  # 11 batches per epoch


def ss4rec_results(run_dir):
    import json

    return json.loads((run_dir / "results.json").read_text())


def test_checkpoints_are_plain_dicts_loadable_with_weights_only(uninterrupted):
    folder = os.path.dirname(uninterrupted["checkpoint"])
    for name in ("GRU4Rec-best.pth", "GRU4Rec-last.pth"):
        state = torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
        assert state["format"] == CHECKPOINT_FORMAT
        for key in ("state_dict", "optimizer", "epoch", "optim_step", "cur_step", "best_valid_score",
                    "best_valid_result", "rng", "dataloader_generator", "guards", "config"):
            assert key in state, (name, key)
        assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
        assert state["config"]["model"] == "GRU4Rec" and isinstance(state["config"]["epochs"], int)
    last = load_checkpoint(os.path.join(folder, "GRU4Rec-last.pth"))
    assert last["epoch"] == EPOCHS - 1
    assert last["best_valid_result"]["ndcg@10"] == pytest.approx(uninterrupted["best_valid"]["ndcg@10"])
    assert not os.path.exists(os.path.join(uninterrupted["run_dir"], "wandb"))  # W&B off by default


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path, small_config):
    path = tmp_path / "GRU4Rec-last.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "model": "GRU4Rec", "extra": Opaque()}, path)
    with pytest.raises(UserError, match="cannot be loaded safely .weights_only=True."):
        load_checkpoint(path)
    with pytest.raises(UserError, match="cannot be loaded safely"):  # resume uses the same safe loader
        ss4rec.run(model="GRU4Rec", dataset="ml-100k", config_files=["tiny", small_config],
                   config_dict={"epochs": 1}, device="cpu", output_dir=tmp_path / "run", resume=path)


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint({"rng": state}, tmp_path / "rng.pth")
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
