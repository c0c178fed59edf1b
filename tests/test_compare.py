"""``ss4rec compare``: identical settings, one subprocess per model, failures reported, not fatal."""

import csv
import json
from pathlib import Path

import pytest

from ss4rec.cli import main as cli_main
from ss4rec.evaluation.compare import (ModelSpec, metric_columns, parse_models, run_model, settings_for,
                            shared_settings)
from ss4rec.errors import UserError

COLUMNS = ["model", "seed", "status", "train_mode", *metric_columns([1, 5, 10, 20]), "seconds_per_epoch", "epochs_run",
           "best_epoch", "train_seconds", "peak_memory_mb", "memory_kind", "parameters", "run_dir", "error"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """SASRec and GRU4Rec, one short epoch on the tiny data."""
    out = tmp_path_factory.mktemp("cmp")
    code = cli_main(["compare", "--models", "SASRec,GRU4Rec", "--config", "tiny",
                     "--epochs", "1", "--set", "MAX_ITEM_LIST_LENGTH=10", "--set", "hidden_size=16",
                     "--set", "train_batch_size=1024", "--device", "cpu", "--output", str(out)])
    with open(out / "comparison.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    return code, out, rows


def test_table_has_every_column_and_model(comparison):
    code, out, rows = comparison
    assert code == 0
    with open(out / "comparison.csv", newline="") as f:
        assert next(csv.reader(f)) == COLUMNS
    assert list(rows) == ["SASRec", "GRU4Rec"]  # in the order asked
    for name in ("SASRec", "GRU4Rec"):
        row = rows[name]
        assert row["status"] == "ok", row["error"]
        for metric in metric_columns([1, 5, 10, 20]):
            assert 0.0 <= float(row[metric]) <= 1.0
        assert float(row["hit@20"]) >= float(row["hit@10"]) >= float(row["hit@1"])
        assert float(row["ndcg@10"]) > 0  # one epoch at lr 0.005 beats nothing
        assert float(row["seconds_per_epoch"]) > 0 and row["epochs_run"] == "1"
        assert row["memory_kind"] == "rss" and 100 < float(row["peak_memory_mb"]) < 16_000
        assert int(row["parameters"]) > 1000
        results = json.loads((out / name / "results.json").read_text())
        assert results["model"] == name
        assert round(results["test"]["ndcg@10"], 6) == round(float(row["ndcg@10"]), 6)

    md = (out / "comparison.md").read_text()
    assert "| SASRec | 0." in md and "| GRU4Rec | 0." in md and "NDCG@10" in md


def test_failed_run_reported_with_cause(comparison, tmp_path):
    """A run that fails in its subprocess is a failed row with its cause; the others stand."""
    from ss4rec.evaluation.compare import write_tables

    _, out, rows = comparison
    shared = shared_settings(["tiny"])
    spec = ModelSpec("NoSuchModel", "NoSuchModel")  # run_model alone: compare() refuses it up front
    failed = run_model(spec, settings_for(spec, shared, [spec]), "ml-100k", tmp_path, "cpu")
    assert failed["status"] == "failed"
    assert "unknown model 'NoSuchModel'" in failed["error"]
    ok = {**rows["SASRec"], "status": "ok"}
    ok = {k: (float(v) if k in metric_columns([1, 5, 10, 20]) else v) for k, v in ok.items()}
    ok.update(seconds_per_epoch=float(ok["seconds_per_epoch"]), epochs_run=1, peak_memory_mb=1.0, parameters=1)
    write_tables([ok, failed], tmp_path, shared, "ml-100k", reference="SASRec")
    assert "- NoSuchModel: unknown model 'NoSuchModel'" in (tmp_path / "comparison.md").read_text()


@pytest.mark.parametrize("extra, cause", [
    (["--models", "SASRec,NoSuchModel"], "unknown model 'NoSuchModel'"),
    (["--models", "SASRec,GRU4Rec:learning_rate=0"], "--models GRU4Rec (learning_rate=0): preflight optimiser/learning rate"),
    (["--models", "SASRec,GRU4Rec:num_layer=2"], "unknown config key 'num_layer' (from --models GRU4Rec (num_layer=2))"),
    (["--models", "SASRec:n_heads=3,GRU4Rec"], "hidden_size=32 is not divisible by n_heads=3"),
    (["--models", "SASRec,GRU4Rec", "--reference", "SS4Rec"], "--reference 'SS4Rec' is not among --models"),
    (["--models", "SASRec,GRU4Rec", "--timeout-minutes=-1"], "--timeout-minutes -1: use a positive number"),
])
def test_bad_models_and_options_are_refused_before_anything_trains(extra, cause, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli_main(["compare", *extra, "--config", "tiny", "--epochs", "1", "--device", "cpu",
                     "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and cause in err.strip().splitlines()[-1], err[-1000:]
    assert not out.exists()  # nothing trained, no folder


def test_identical_settings_for_every_model(comparison):
    import yaml

    _, out, _ = comparison
    sas = yaml.safe_load((out / "SASRec" / "settings.yaml").read_text())
    gru = yaml.safe_load((out / "GRU4Rec" / "settings.yaml").read_text())
    assert sas == gru
    assert sas["epochs"] == 1 and sas["MAX_ITEM_LIST_LENGTH"] == 10 and sas["topk"] == [1, 5, 10, 20]
    assert sas["eval_args"] == {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}


def test_timeout_kills_and_reports(tmp_path):
    shared = shared_settings(["tiny"])
    spec = ModelSpec("GRU4Rec", "GRU4Rec")
    row = run_model(spec, settings_for(spec, shared, [spec]), "ml-100k", tmp_path, "cpu", timeout_s=1)
    assert row["status"] == "failed" and row["error"] == "timed out after 1 s"


def test_parse_models_maps_ablations_to_ss4rec():
    specs = parse_models("SS4Rec, SASRec,s6-only,S5-only,ignore-time")
    assert [(s.label, s.model, s.overrides) for s in specs] == [
        ("SS4Rec", "SS4Rec", {}), ("SASRec", "SASRec", {}),
        ("S6-only", "SS4Rec", {"model_type": "S6-only"}),
        ("S5-only", "SS4Rec", {"model_type": "S5-only"}),
        ("ignore-time", "SS4Rec", {"model_type": "ignore-time"}),
    ]
    with pytest.raises(UserError, match="more than once"):
        parse_models("SASRec,SASRec")
    with pytest.raises(UserError, match="empty"):
        parse_models(" , ")


def test_other_models_keys_are_dropped_shared_keys_kept():
    shared = shared_settings(["tiny"], {"n_layers": 3}, epochs=4)
    specs = parse_models("SASRec,NeuMF,S6-only")
    neumf = settings_for(specs[1], shared, specs)
    sasrec = settings_for(specs[0], shared, specs)
    ablation = settings_for(specs[2], shared, specs)
    assert "hidden_size" not in neumf and "n_layers" not in neumf  # SASRec's keys, not NeuMF's
    assert sasrec["hidden_size"] == 32 and sasrec["n_layers"] == 3
    assert "n_layers" not in ablation and ablation["model_type"] == "S6-only"
    for settings in (neumf, sasrec, ablation):  # the data and budget are shared
        assert settings["epochs"] == 4 and settings["user_inter_num_interval"] == "[0,40]"
        assert settings["MAX_ITEM_LIST_LENGTH"] == 20 and settings["topk"] == [1, 5, 10, 20]
    with pytest.raises(UserError, match="at least 1"):
        shared_settings(epochs=0)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """SS4Rec and SASRec, two seeds each, one short epoch on the tiny data."""
    out = tmp_path_factory.mktemp("seeds")
    code = cli_main(["compare", "--models", "SS4Rec,SASRec", "--seeds", "2", "--config", "tiny", "--epochs", "1",
                     "--set", "d_state=8", "--set", "d_P=8", "--set", "MAX_ITEM_LIST_LENGTH=10",
                     "--device", "cpu", "--output", str(out)])
    return code, out, json.loads((out / "summary.json").read_text())


def test_seeds_table_has_mean_std_and_paired_ci(seeded):
    import numpy as np
    import pandas as pd

    code, out, summary = seeded
    assert code == 0
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["seed"]) for r in rows] == [("SS4Rec", "2020"), ("SASRec", "2020"),
                                                       ("SS4Rec", "2021"), ("SASRec", "2021")]
    for model in ("SS4Rec", "SASRec"):
        for seed in (2020, 2021):
            settings = json.loads((out / model / f"seed-{seed}" / "results.json").read_text())["config"]
            assert settings["seed"] == seed
    entries = {e["model"]: e for e in summary["models"]}
    assert summary["reference"] == "SS4Rec"
    sas = entries["SASRec"]
    ndcg = [float(r["ndcg@10"]) for r in rows if r["model"] == "SASRec"]
    assert sas["ndcg@10"][0] == pytest.approx(np.mean(ndcg)) and sas["ndcg@10"][1] == pytest.approx(np.std(ndcg, ddof=1))
    assert sas["seeds_ok"] == 2 and len(sas["epochs_run"]) == 2 and all(e == 1 for e in sas["best_epoch"])

    # The paired difference, recomputed from the per-user ranks: seed-averaged, paired by user.
    def per_user(model):
        frames = [pd.read_csv(out / model / f"seed-{s}" / "evaluate" / "user_ranks.csv").set_index("user_id")["rank"]
                  for s in (2020, 2021)]
        return sum(np.where(f <= 10, 1 / np.log2(f + 1), 0.0) for f in frames) / 2

    # Every model was tested on the identical targets (one exact ordering of the data).
    targets = {(m, s): pd.read_csv(out / m / f"seed-{s}" / "evaluate" / "user_ranks.csv").set_index("user_id")["item_id"]
               for m in ("SS4Rec", "SASRec") for s in (2020, 2021)}
    first = targets[("SS4Rec", 2020)]
    assert all(t.sort_index().equals(first.sort_index()) for t in targets.values())

    diff = per_user("SASRec") - per_user("SS4Rec")
    assert sas["delta_ndcg@10"] == pytest.approx(diff.mean())
    low, high = sas["delta_ndcg@10_ci"]
    assert low < sas["delta_ndcg@10"] < high and high - low < 0.2
    assert sas["paired_users"] == len(diff) == entries["SS4Rec"]["users"]
    # RecBole's test NDCG@10 is the same per-user mean: the two routes agree.
    assert entries["SS4Rec"]["ndcg@10_user_mean"] == pytest.approx(entries["SS4Rec"]["ndcg@10"][0], abs=1e-4)

    md = (out / "comparison.md").read_text()
    assert "NDCG@10 95% CI (users)" in md and "Δ NDCG@10 vs SS4Rec [95% CI]" in md
    assert "| SASRec | sequence | 2/2 |" in md or "| SASRec | prefix | 2/2 |" in md
    for plot in ("ndcg10_ci", "ndcg_at_k", "gap_buckets", "time_shift"):
        png = (out / f"{plot}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert f"({plot}.png)" in md


def test_time_probe_one_for_time_blind_below_one_for_ss4rec(seeded):
    _, out, summary = seeded
    entries = {e["model"]: e for e in summary["models"]}
    assert set(entries["SASRec"]["time_shift"]) == {"+1 h", "+1 day", "+30 days"}
    assert all(v == 1.0 for v in entries["SASRec"]["time_shift"].values())  # exactly
    assert all(v < 1.0 for v in entries["SS4Rec"]["time_shift"].values())
    probe = json.loads((out / "SS4Rec" / "seed-2020" / "evaluate" / "time_probe.json").read_text())
    buckets = probe["gap_buckets"]
    assert [b["bucket"] for b in buckets] == ["< 1 min", "< 1 h", "< 1 day", "< 30 days", ">= 30 days"]
    assert sum(b["users"] for b in buckets) == entries["SS4Rec"]["users"] == 305
    assert buckets[0]["users"] > 100  # ML-100K: many ratings within a minute of the last


def test_finished_runs_are_reused_and_no_train_only_tabulates(seeded, capsys):
    _, out, summary = seeded
    mtime = (out / "SASRec" / "seed-2020" / "results.json").stat().st_mtime
    code = cli_main(["compare", "--models", "SS4Rec,SASRec,GRU4Rec", "--seeds", "2", "--config", "tiny",
                     "--epochs", "1", "--set", "d_state=8", "--set", "d_P=8", "--set", "MAX_ITEM_LIST_LENGTH=10",
                     "--device", "cpu", "--output", str(out), "--no-train"])
    assert code == 0
    assert (out / "SASRec" / "seed-2020" / "results.json").stat().st_mtime == mtime
    assert not (out / "GRU4Rec").exists()  # tabulating writes no run folder
    entries = {e["model"]: e for e in json.loads((out / "summary.json").read_text())["models"]}
    assert entries["SASRec"]["delta_ndcg@10"] == {e["model"]: e for e in summary["models"]}["SASRec"]["delta_ndcg@10"]
    assert "| GRU4Rec |  | 0/0 | not run yet |" in (out / "comparison.md").read_text()


def test_parse_seeds_and_model_settings():
    from ss4rec.evaluation.compare import parse_seeds

    assert parse_seeds(None) is None
    assert parse_seeds("3") == [2020, 2021, 2022] and parse_seeds(2) == [2020, 2021]
    assert parse_seeds("7, 9") == [7, 9]
    for bad in ("0", "x", "3,3", "1.5"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)
    (spec,) = parse_models("BERT4Rec:epochs=10:hidden_size=32")
    assert spec.label == "BERT4Rec (epochs=10, hidden_size=32)" and spec.model == "BERT4Rec"
    assert spec.overrides == {"epochs": 10, "hidden_size": 32}
    (ablation,) = parse_models("s6-only:epochs=3")
    assert ablation.model == "SS4Rec" and ablation.overrides == {"model_type": "S6-only", "epochs": 3}
    with pytest.raises(UserError, match="NAME:KEY=VALUE"):
        parse_models("BERT4Rec:epochs")


def test_models_without_windows_train_in_prefix_mode_when_sequence_is_shared():
    shared = shared_settings(["tiny"], {"train_mode": "sequence"})
    specs = parse_models("SASRec,BERT4Rec,NARM,NeuMF")
    modes = {s.label: settings_for(s, shared, specs)["train_mode"] for s in specs}
    assert modes == {"SASRec": "sequence", "BERT4Rec": "sequence", "NARM": "prefix", "NeuMF": "prefix"}


def test_a_bad_shared_setting_is_refused_before_any_model_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = cli_main(["compare", "--models", "SASRec,GRU4Rec", "--config", "tiny", "--set", "train_batch_size=0",
                     "--output", str(out)])
    assert code == 2 and not out.exists()
    assert "train_batch_size=0 (from the shared settings): use an integer >= 1" in capsys.readouterr().err


def test_a_finished_run_is_reused_only_while_its_data_is_the_same(tmp_path, capsys):
    """Same settings, other data bytes: the run is not reused (its metrics belong to the old data)."""
    import recbole

    source = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    lines = source.read_text(encoding="utf-8").splitlines()
    data = tmp_path / "data" / "mini"
    data.mkdir(parents=True)
    keep = [line for line in lines[1:] if int(line.split("\t")[0]) <= 150]
    (data / "mini.inter").write_text("\n".join([lines[0], *keep]) + "\n", encoding="utf-8")
    out = tmp_path / "cmp"
    args = ["compare", "--models", "GRU4Rec", "--dataset", "mini", "--data-path", str(tmp_path / "data"),
            "--config", "tiny", "--epochs", "1", "--set", "hidden_size=16", "--set", "MAX_ITEM_LIST_LENGTH=10",
            "--set", "load_col={inter: [user_id, item_id, timestamp]}", "--device", "cpu", "--output", str(out)]
    assert cli_main(args) == 0
    assert cli_main([*args, "--no-train"]) == 0
    with open(out / "comparison.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok"]  # same data: reused
    (data / "mini.inter").write_text("\n".join([lines[0], *keep[:-300]]) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert cli_main([*args, "--no-train"]) == 0
    with open(out / "comparison.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["status"] == "missing" and "other settings or data" in row["error"]
