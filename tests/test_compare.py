"""``ss4rec compare``: identical settings, one subprocess per model, failures reported, not fatal."""

import csv
import json

import pytest

from ss4rec.cli import main as cli_main
from ss4rec.compare import (ModelSpec, metric_columns, parse_models, run_model, settings_for,
                            shared_settings)
from ss4rec.errors import UserError

COLUMNS = ["model", "seed", "status", "train_mode", *metric_columns([1, 5, 10, 20]), "seconds_per_epoch", "epochs_run",
           "best_epoch", "train_seconds", "peak_memory_mb", "memory_kind", "parameters", "run_dir", "error"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """SASRec, GRU4Rec and a model that does not exist, one short epoch on the tiny data."""
    out = tmp_path_factory.mktemp("cmp")
    code = cli_main(["compare", "--models", "SASRec,NoSuchModel,GRU4Rec", "--config", "tiny",
                     "--epochs", "1", "--set", "MAX_ITEM_LIST_LENGTH=10", "--set", "hidden_size=16",
                     "--set", "train_batch_size=1024", "--device", "cpu", "--output", str(out)])
    with open(out / "comparison.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    return code, out, rows


def test_table_has_every_column_and_model(comparison):
    code, out, rows = comparison
    assert code == 1  # one model failed
    with open(out / "comparison.csv", newline="") as f:
        assert next(csv.reader(f)) == COLUMNS
    assert list(rows) == ["SASRec", "NoSuchModel", "GRU4Rec"]  # in the order asked
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


def test_failed_model_reported_with_cause(comparison):
    _, out, rows = comparison
    failed = rows["NoSuchModel"]
    assert failed["status"] == "failed"
    assert "unknown model 'NoSuchModel'" in failed["error"]
    assert failed["ndcg@10"] == ""
    assert "- NoSuchModel: unknown model 'NoSuchModel'" in (out / "comparison.md").read_text()


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
