"""Issue 3: ss4rec.run, RecBole's run_recbole, config checks, dataset resolution, the train CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ss4rec
from ss4rec.config import CONFIGS_DIR, PROPERTIES_DIR
from ss4rec.errors import ConfigError, DataError

from conftest import TINY_SS4REC, assert_metrics_finite_above_random


def test_numpy2_aliases_that_recbole_and_ray_need_exist():
    # RecBole's Config runs `np.float = np.float_`; ray touches np.bool8.
    for name in ("float_", "complex_", "unicode_", "bool8"):
        assert hasattr(np, name), name


def test_run_trains_ss4rec_and_writes_everything_into_the_run_folder(ss4rec_ce_run):
    result = ss4rec_ce_run
    assert_metrics_finite_above_random(result)
    run_dir = Path(result["run_dir"])
    on_disk = json.loads((run_dir / "results.json").read_text())
    for key in ("model", "dataset", "best_valid", "test", "epochs_run", "train_seconds", "config", "versions"):
        assert key in on_disk, key
    assert on_disk["model"] == "SS4Rec" and on_disk["epochs_run"] == 1
    for key in ("hit@10", "ndcg@10", "mrr@10"):
        assert key in on_disk["test"]
    assert (run_dir / "train.log").stat().st_size > 0
    assert (run_dir / "log_tensorboard").is_dir()  # RecBole's, inside the run folder
    assert not Path("log_tensorboard").exists() and not Path("saved").exists()


def test_best_checkpoint_is_a_plain_dict_that_loads_with_weights_only(ss4rec_ce_run):
    state = torch.load(ss4rec_ce_run["checkpoint"], weights_only=True)
    assert set(state["state_dict"]) >= {"item_embedding.weight", "model.0.S5.seq.Lambda"}
    assert state["config"]["model"] == "SS4Rec"
    # The test metrics came from reloading that best checkpoint (RecBole's own reload
    # would fail on torch >= 2.6): the reloaded model scores the same on valid.
    run = ss4rec.pipeline.runner.restore(ss4rec_ce_run["checkpoint"])
    from ss4rec.training.trainer import SS4RecTrainer

    trainer = SS4RecTrainer(run.config, run.model)
    test = trainer.evaluate(run.test_data, load_best_model=False)
    assert {k: round(float(v), 4) for k, v in test.items()} == ss4rec_ce_run["test"]


def test_a_recbole_baseline_runs_through_the_same_api(tmp_path):
    result = ss4rec.run(model="SASRec", dataset="ml-100k", config_files=["tiny"],
                        output_dir=tmp_path, device="cpu")
    assert result["model"] == "SASRec"
    assert_metrics_finite_above_random(result)


def test_recbole_run_recbole_finds_ss4rec_after_import(tmp_path, monkeypatch):
    from recbole.quick_start import run_recbole

    monkeypatch.chdir(tmp_path)  # RecBole writes log/ and saved/ into the current directory
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # RecBole's Config parses --key=value from argv
    result = run_recbole(
        model="SS4Rec", dataset="ml-100k",
        config_file_list=[str(PROPERTIES_DIR / "SS4Rec.yaml"), str(CONFIGS_DIR / "tiny.yaml")],
        config_dict={**TINY_SS4REC, "use_gpu": False},
    )
    test = result["test_result"]
    assert all(np.isfinite(float(v)) for v in test.values())
    assert float(test["hit@10"]) > 10 / 868


def test_unknown_config_key_fails_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'num_epochs'.*did you mean 'epochs'"):
        ss4rec.run(model="SS4Rec", config_dict={"num_epochs": 1}, output_dir=tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nlearnign_rate: 0.01\n")
    with pytest.raises(ConfigError, match=r"learnign_rate.*bad\.yaml.*did you mean 'learning_rate'"):
        ss4rec.run(model="SASRec", config_files=[bad], output_dir=tmp_path)
    # Model-specific keys are checked against the chosen model.
    with pytest.raises(ConfigError, match="n_heads"):
        ss4rec.run(model="SS4Rec", config_dict={"n_heads": 2}, output_dir=tmp_path)


def test_missing_dataset_is_an_actionable_error_without_download(tmp_path):
    data_path = tmp_path / "data"
    data_path.mkdir()
    with pytest.raises(DataError) as err:
        ss4rec.run(model="SS4Rec", dataset="ml-1m", config_dict={"data_path": str(data_path)},
                   output_dir=tmp_path / "run")
    message = str(err.value)
    assert "ml-1m" in message and "ss4rec convert" in message and str(data_path) in message
    assert list(data_path.iterdir()) == []  # nothing downloaded or created


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'SASRecc'"):
        ss4rec.run(model="SASRecc", output_dir=tmp_path)


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "ss4rec", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_train_cli_writes_results_json_and_exits_zero(tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", "--model", "GRU4Rec", "--dataset", "ml-100k", "--config", "tiny",
                "--set", "hidden_size=32", "--output", str(out), "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["model"] == "GRU4Rec" and result["config"]["hidden_size"] == 32
    assert_metrics_finite_above_random(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing in the cwd


@pytest.mark.parametrize("args, message", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--set", "num_epochs=1"], "did you mean 'epochs'"),
    (["train", "--dataset", "ml-1m", "--data-path", "nowhere"], "ss4rec convert"),
])
def test_train_cli_exits_nonzero_with_the_cause_on_the_last_line(tmp_path, args, message):
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr.strip().splitlines()[-1]


def test_import_leaves_autograd_anomaly_detection_off():
    # RecBole's sine.py switches it on at import; it makes every backward ~1.7x slower.
    import recbole.model.sequential_recommender  # noqa: F401

    assert not torch.is_anomaly_enabled()


def test_results_record_the_mamba_backend_that_ran(ss4rec_ce_run):
    mamba = ss4rec_ce_run["mamba"]
    assert mamba["mamba_backend"] == "auto" and mamba["backend"] == "torch" and mamba["ran"] == ["torch"]
    assert mamba["torch"] and "reason" in mamba
