"""``ss4rec tune``: a real Optuna search of real RecBole runs on the tiny ML-100K.

Every trial trains SASRec on the packaged ``tiny`` data in whole-sequence mode (about a
second an epoch), over a two-key space, so a 4-trial tune takes seconds of training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from ss4rec.cli import main as cli_main
from ss4rec.config.space import load_space, packaged_spaces
from ss4rec.errors import ConfigError, UserError
from ss4rec.evaluation.tune import prepare, suggest_params, tune
from ss4rec.evaluation.tune_study import Budget, open_study, sampler_for

SPACE = {"learning_rate": {"type": "float", "low": 1.0e-3, "high": 2.0e-2, "log": True},
         "hidden_dropout_prob": {"type": "float", "low": 0.0, "high": 0.5}}
SETTINGS = ["--config", "tiny", "--set", "train_mode=sequence", "--set", "epochs=2"]


def _space(tmp_path, space=None) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space or SPACE, sort_keys=False), encoding="utf-8")
    return path


def _tune_args(out: Path, space: Path, trials: int) -> list[str]:
    return ["tune", "--model", "SASRec", *SETTINGS, "--space", str(space), "--trials", str(trials),
            "--device", "cpu", "--output", str(out)]


def _study(out: Path):
    return optuna.load_study(study_name="SASRec-ml-100k", storage=f"sqlite:///{out / 'study.db'}")


def _counted(study) -> list:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "error" in t.user_attrs)]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 4-trial tune of SASRec on tiny, then the best settings retrained with one seed."""
    tmp = tmp_path_factory.mktemp("tune")
    out = tmp / "tune"
    code = cli_main([*_tune_args(out, _space(tmp), 4), "--retrain-seeds", "1"])
    return code, out


def test_tune_writes_study_trials_best_table_and_plots(tuned):
    code, out = tuned
    assert code == 0
    for name in ("study.db", "best.yaml", "trials.md", "trials.csv", "tune.json", "history.png",
                 "learning_curves.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "tune.json").read_text())
    assert sum(summary["counts"][s] for s in ("complete", "pruned", "failed")) == 4
    assert summary["budget"] == {"trials": 4, "seconds": None, "epochs_per_trial": 2}
    study = _study(out)
    assert len(_counted(study)) == 4
    for trial in study.get_trials():  # every trial an ordinary run folder with its results.json
        results = json.loads((out / f"trial-{trial.number:04d}" / "results.json").read_text())
        assert results["model"] == "SASRec"
        assert results["config"]["learning_rate"] == pytest.approx(trial.params["learning_rate"])
        assert results["best_valid_score"] == pytest.approx(trial.value)
    table = (out / "trials.md").read_text()
    assert "| trial | state | learning_rate | hidden_dropout_prob | NDCG@10 |" in table
    assert "4 trials, each at most 2 epochs" in table and "(best)" in table
    assert summary["best"]["number"] == study.best_trial.number


def test_the_sampler_is_seeded(tuned, tmp_path):
    """The same seed proposes the same first settings (a rerun of a one-worker tune repeats them)."""
    _, out = tuned
    spec = prepare("SASRec", "ml-100k", ["tiny"], {"train_mode": "sequence", "epochs": 2}, _space(tmp_path))
    fresh = optuna.create_study(direction="maximize", sampler=sampler_for(0, 0, Budget(4, None)))
    assert suggest_params(fresh.ask(), spec) == _study(out).trials[0].params


def test_best_yaml_reproduces_the_best_trial(tuned, tmp_path):
    _, out = tuned
    summary = json.loads((out / "tune.json").read_text())
    settings = yaml.safe_load((out / "best.yaml").read_text())
    assert settings["learning_rate"] == summary["best"]["params"]["learning_rate"]
    assert cli_main(["train", "--model", "SASRec", "--config", str(out / "best.yaml"), "--device", "cpu",
                     "--output", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["best_valid_score"] == summary["best"]["value"]


def test_retrain_and_compare_tuned_reuse_compare(tuned, tmp_path):
    _, out = tuned
    summary = json.loads((out / "tune.json").read_text())
    retrain = summary["retrain"]
    assert retrain["seeds"] == [2020] and retrain["runs_ok"] == 1
    assert (out / "retrain" / "SASRec" / "seed-2020" / "evaluate" / "user_ranks.csv").is_file()
    assert "NDCG@10 95% CI" in (out / "retrain" / "comparison.md").read_text()
    # The tuned model's runs are the retrain's: nothing trains again.
    before = (out / "retrain" / "SASRec" / "seed-2020" / "results.json").stat().st_mtime
    assert cli_main(["compare", "--tuned", str(out), "--output", str(tmp_path / "cmp")]) == 0
    assert (out / "retrain" / "SASRec" / "seed-2020" / "results.json").stat().st_mtime == before
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "## Tuning budget" in table and "| SASRec | 4 trials | 2 |" in table
    assert cli_main(["compare", "--tuned", str(out), "--set", "epochs=3", "--output", str(tmp_path / "x")]) == 2


def test_sigkill_mid_trial_then_rerun_keeps_finished_trials(tmp_path):
    out = tmp_path / "tune"
    args = _tune_args(out, _space(tmp_path), 2)
    proc = subprocess.Popen([sys.executable, "-m", "ss4rec", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (out / "trial-0001" / "train.log").exists():  # trial 0 done, trial 1 training
        assert proc.poll() is None and time.monotonic() < deadline, "the tune ended before trial 1"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = (out / "trial-0000" / "results.json").stat().st_mtime
    assert not (out / "trial-0001" / "results.json").exists()

    assert cli_main(args) == 0  # the same command again
    study = _study(out)
    trials = study.get_trials()
    assert len(_counted(study)) == 2
    assert (out / "trial-0000" / "results.json").stat().st_mtime == finished  # kept, not rerun
    interrupted = trials[1]
    assert interrupted.state == TrialState.FAIL and "error" not in interrupted.user_attrs
    retry = trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == interrupted.params
    assert "| 1 | interrupted |" in (out / "trials.md").read_text()


def test_two_workers_share_one_study_without_duplicates(tmp_path):
    out = tmp_path / "tune"
    assert cli_main([*_tune_args(out, _space(tmp_path), 4), "--workers", "2"]) == 0
    study = _study(out)
    counted = _counted(study)
    assert len(counted) == 4
    numbers = [t.number for t in counted]
    assert len(set(numbers)) == 4
    params = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(params)) == 4  # each worker samples its own points
    for number in numbers:
        results = json.loads((out / f"trial-{number:04d}" / "results.json").read_text())
        assert results["run_dir"] == str(out / f"trial-{number:04d}")
    workers = {(t.user_attrs["worker"]["pid"]) for t in counted}
    assert workers and os.getpid() not in workers  # trials ran in the worker processes
    assert json.loads((out / "tune.json").read_text())["workers_failed"] == 0


@pytest.mark.parametrize("space, message", [
    ({"learning_rat": {"type": "float", "low": 1e-4, "high": 1e-2}}, "unknown config key 'learning_rat'"),
    ({"learning_rate": {"type": "float", "low": 1e-2, "high": 1e-4}}, "must be below high"),
    ({"weight_decay": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "log range must lie above 0"),
    ({"hidden_dropout_prob": {"type": "float", "low": 0.1, "high": 1.0}}, "hidden_dropout_prob=1.0"),
    ({"hidden_size": {"type": "float", "low": 16, "high": 64}}, "use type: int"),
    ({"hidden_size": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"learning_rate": {"type": "uniform", "low": 1e-4, "high": 1e-2}}, "give a type"),
])
def test_bad_space_is_refused_before_any_trial(tmp_path, space, message):
    out = tmp_path / "tune"
    with pytest.raises(ConfigError, match=message):
        tune("SASRec", config_files=["tiny"], space=_space(tmp_path, space), trials=2, output_dir=out, log=None)
    assert not out.exists()  # nothing written, nothing trained


def test_bad_space_on_the_command_line_is_one_line(tmp_path, capsys):
    bad = _space(tmp_path, {"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}})
    assert cli_main(_tune_args(tmp_path / "tune", bad, 2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "learning_rate" in err[-1] and "Traceback" not in "".join(err)


def test_a_storage_that_is_no_url_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "tune"
    with pytest.raises(UserError, match="give an RDB URL"):
        tune("SASRec", config_files=["tiny"], space=_space(tmp_path), storage="tune.db", output_dir=out, log=None)
    assert not out.exists()


def test_a_study_refuses_other_settings_or_space(tmp_path):
    """Continuing a study is for the same search: other settings are another study."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = _space(tmp_path)
    open_study(url, "s", prepare("SASRec", "ml-100k", ["tiny"], {"epochs": 2}, space), "median")
    open_study(url, "s", prepare("SASRec", "ml-100k", ["tiny"], {"epochs": 2}, space), "hyperband")  # same
    with pytest.raises(UserError, match=r"other settings \(epochs\)"):
        open_study(url, "s", prepare("SASRec", "ml-100k", ["tiny"], {"epochs": 3}, space), "median")


def test_packaged_spaces_cover_the_models_and_pass_their_checks():
    assert {"SS4Rec", "TiSASRec", "SASRec", "GRU4Rec"} <= set(packaged_spaces())
    for model in packaged_spaces():
        space = load_space(model)
        assert "learning_rate" in space and "MAX_ITEM_LIST_LENGTH" in space
    assert {"time_unit", "dt_min", "dt_max"} <= set(load_space("SS4Rec"))


def test_a_bad_learning_rate_is_pruned_early(tmp_path):
    """Two sound trials, then one at a learning rate that cannot learn: the median pruner stops
    it after its second epoch (the first never prunes) of three."""
    out = tmp_path / "tune"
    out.mkdir()
    study = optuna.create_study(study_name="SASRec-ml-100k", storage=f"sqlite:///{out / 'study.db'}",
                                direction="maximize")
    space = _space(tmp_path, {"learning_rate": {"type": "float", "low": 1e-7, "high": 2e-2, "log": True}})
    for lr in (0.01, 0.005, 1e-7):  # an ordinary Optuna study: its queue is honoured
        study.enqueue_trial({"learning_rate": lr})
    lines = []
    tune("SASRec", config_files=["tiny"], config_dict={"train_mode": "sequence", "epochs": 3}, space=space,
         trials=3, output_dir=out, device="cpu", log=lambda line, **_: lines.append(line))
    trials = _study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    pruned = json.loads((out / "trial-0002" / "results.json").read_text())
    assert pruned["epochs_run"] == 2 and pruned["training"]["stopped_by"]["epoch"] == 1
    assert trials[2].user_attrs["pruned_at_epoch"] == 2
    assert any(line.startswith("[tune] trial 2 (3/3): learning_rate=1e-07 -> pruned at epoch 2/3") for line in lines)
