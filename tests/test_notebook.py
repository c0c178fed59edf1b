"""notebooks/evaluate.ipynb runs headless (nbclient, the venv's kernel) on a tiny run it makes itself."""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "evaluate.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells
    assert all(not c.outputs and c.execution_count is None for c in code_cells)


def test_notebook_executes_and_saves_figures(tmp_path, monkeypatch):
    small = tmp_path / "small.yaml"  # the tiny config, smaller still: seconds per model
    small.write_text("MAX_ITEM_LIST_LENGTH: 10\nhidden_size: 16\ntrain_batch_size: 1024\n")
    results = tmp_path / "results"
    # The kernel inherits this environment: the notebook makes its own run into `results`.
    monkeypatch.setenv("SS4REC_RESULTS", str(results))
    monkeypatch.setenv("SS4REC_MODELS", "SASRec,GRU4Rec")
    monkeypatch.setenv("SS4REC_CONFIG", f"tiny,{small}")
    monkeypatch.setenv("SS4REC_EPOCHS", "1")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any failing cell

    assert nb.cells[-1].outputs[0]["text"].strip() == sys.executable  # the venv's python
    assert (results / "comparison.csv").is_file()
    for figure in ("hr_ndcg_vs_k.png", "ndcg10_by_history.png", "valid_ndcg10_by_epoch.png",
                   # the comparison's plots (ss4rec.evaluation.compare_plots), drawn by the notebook too
                   "ndcg10_ci.png", "ndcg_at_k.png", "gap_buckets.png", "time_shift.png"):
        png = (results / figure).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for model in ("SASRec", "GRU4Rec"):
        assert (results / model / "evaluate" / "user_ranks.csv").is_file()
    # The table cell shows both models.
    outputs = "".join(str(o.get("data", {}).get("text/plain", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "SASRec" in outputs and "GRU4Rec" in outputs
    # The summary table (Markdown) and the four plots are displayed.
    shown = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "display_data"]
    assert any("Δ NDCG@10 vs SASRec" in o["data"].get("text/markdown", "") for o in shown)
    assert sum("image/png" in o["data"] for o in shown) >= 4 + 3  # 4 comparison plots, 3 drawn here


def test_notebook_runs_on_a_single_train_run(ss4rec_ce_run, monkeypatch, tmp_path):
    run_dir = Path(ss4rec_ce_run["run_dir"])
    monkeypatch.setenv("SS4REC_RESULTS", str(run_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    assert not (run_dir / "comparison.csv").exists()  # nothing was trained: the run was read
    for figure in ("hr_ndcg_vs_k.png", "valid_ndcg10_by_epoch.png", "ndcg10_by_history.png"):
        png = (run_dir / figure).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    outputs = "".join(str(o.get("data", {}).get("text/plain", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "SS4Rec" in outputs
