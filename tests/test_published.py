"""The paper's published numbers: one sourced data file, printed by ``ss4rec compare`` beside
its own results with the ratio."""

from __future__ import annotations

import json

import pytest

from ss4rec.config.files import resolve_config_file
from ss4rec.evaluation.compare import result_row, shared_settings, write_tables
from ss4rec.evaluation.published import METRICS, PUBLISHED_FILE, load_published, published_for


def test_every_published_number_has_its_source_and_a_preset():
    data = load_published()
    source = data["source"]
    assert "arXiv:2502.08132" in source["paper"] and source["url"].startswith("https://arxiv.org/abs/2502.08132")
    assert "table" in source["table"] and "full ranking" in source["protocol"]
    assert data["datasets"], "no published numbers"
    for dataset, entry in data["datasets"].items():
        assert resolve_config_file(entry["preset"]).name == f"paper-{dataset}.yaml"
        for model, values in entry["models"].items():
            assert set(values) <= set(METRICS), (dataset, model)
            assert all(0 < v < 1 for v in values.values())
            assert values["hit@10"] >= values["ndcg@10"] >= values["mrr@10"]  # always true of these metrics
    # what is missing is said in the file, not silently absent
    text = PUBLISHED_FILE.read_text()
    assert "Not here, for want of a checked source" in text and "KuaiRec" in text
    assert published_for("ml-1m")["SS4Rec"] == {"hit@10": 0.3561, "ndcg@10": 0.2127, "mrr@10": 0.1688}
    assert published_for("ml-100k") == {}


def test_compare_prints_the_published_numbers_beside_its_own_with_the_ratio(ss4rec_ce_run, tmp_path, capsys):
    """A real one-epoch SS4Rec run (tiny ML-100K) tabulated as ``ss4rec compare`` does, under a
    paper dataset's name: the section is about the printing and the ratio, not the data."""
    ours_row = {"model": "SS4Rec", "seed": 2020, "run_dir": str(tmp_path / "none"), "error": "",
                **result_row(ss4rec_ce_run, peak_rss_mb=1.0)}
    failed = {"model": "SASRec", "seed": 2020, "status": "failed", "run_dir": "", "error": "not run here"}
    write_tables([ours_row, failed], tmp_path, shared_settings(["tiny"]), "amazon-sports")
    printed = (tmp_path / "comparison.md").read_text()  # what `ss4rec compare` prints
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "## Published numbers (https://arxiv.org/abs/2502.08132)" in printed
    rows = {r["metric"]: r for r in summary["published"]}
    assert set(rows) == set(METRICS) and all(r["model"] == "SS4Rec" for r in rows.values())
    for metric, published in (("hit@10", 0.1042), ("ndcg@10", 0.0880), ("mrr@10", 0.0830)):
        ours = ss4rec_ce_run["test"][metric]
        row = rows[metric]
        assert row["published"] == published and row["ours"] == pytest.approx(ours)
        assert row["ratio"] == pytest.approx(ours / published)
        label = {"hit@10": "HR@10", "ndcg@10": "NDCG@10", "mrr@10": "MRR@10"}[metric]
        assert f"| SS4Rec | {label} | {ours:.4f} | {published:.4f} | {ours / published:.2f} |" in printed
    assert "--config paper-amazon-sports" in printed and "| SASRec | HR@10" not in printed
    assert printed.index("## Summary over seeds") < printed.index("## Published numbers") < printed.index("## Every run")

    write_tables([ours_row], tmp_path, shared_settings(["tiny"]), "ml-100k")  # the paper has no ML-100K
    assert "Published numbers" not in (tmp_path / "comparison.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["published"] == []
