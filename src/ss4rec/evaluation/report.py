"""Results you can look at: a table and a plot across finished runs.

    >>> rows = load_runs(["runs/a", "runs/cmp"])  # doctest: +SKIP
    >>> print(markdown_table(rows))  # doctest: +SKIP

Every ``ss4rec train`` run writes ``curves.png`` (:mod:`ss4rec.training.curves`) beside
``results.json``. ``ss4rec report RUN [RUN ...]``
takes train run folders or ``ss4rec compare`` folders, prints one row per run and writes a
plot of their validation curves and test NDCG@10.
"""

from __future__ import annotations

import json
from pathlib import Path

# Bare Figures, not pyplot: files only, no backend switch, no global state.
from matplotlib.figure import Figure

from ss4rec.data.modes import train_mode
from ss4rec.errors import UserError
from ss4rec.training.runfolder import check_writable_file

TABLE_METRICS = ("hit@10", "ndcg@10", "mrr@10")


def run_folders(path) -> list[Path]:
    """A train run folder (``results.json``) or a compare folder (its models' run folders)."""
    path = Path(path)
    if (path / "results.json").is_file():
        return [path]
    runs = sorted(p.parent for p in [*path.glob("*/results.json"), *path.glob("*/seed-*/results.json")])
    if (path / "comparison.csv").is_file() or runs:
        return runs
    raise UserError(f"{path}: not a run folder (no results.json) nor a compare folder (no comparison.csv); "
                    "give the --output folder of `ss4rec train` or `ss4rec compare`")


def _read_results(path: Path) -> dict:
    """A run's results.json; a damaged or foreign one is a UserError naming it (no traceback)."""
    try:
        result = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise UserError(f"{path} is damaged{where}: not the JSON `ss4rec train` writes; re-run that "
                        "training or leave its folder out of the report") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    if not isinstance(result, dict) or not isinstance(result.get("model"), str) \
            or not isinstance(result.get("test", {}), dict) or not isinstance(result.get("history", []), list):
        raise UserError(f"{path} is not the results.json of an `ss4rec train` run (no model / test / history): "
                        "leave its folder out of the report")
    return result


def load_runs(paths) -> list[dict]:
    """One row per run: label, model, train_mode, epochs, test metrics, seconds per epoch, history."""

    rows = []
    for folder in (run for path in paths for run in run_folders(path)):
        result = _read_results(folder / "results.json")
        config = result.get("config") or {}
        rows.append({
            # A compare run with seeds lives in MODEL/seed-N: name it by both.
            "run": f"{folder.parent.name}/{folder.name}" if folder.name.startswith("seed-") else folder.name,
            "model": result["model"],
            "model_type": config.get("model_type") if result["model"] == "SS4Rec" else None,
            "train_mode": train_mode(config),
            "epochs_run": result.get("epochs_run"),
            **{k: result.get("test", {}).get(k) for k in TABLE_METRICS},
            "seconds_per_epoch": result.get("seconds_per_epoch"),
            "history": result.get("history") or [], "run_dir": str(folder),
        })
    if not rows:
        raise UserError(f"no finished runs (results.json) under {', '.join(map(str, paths))}")
    return rows


def markdown_table(rows) -> str:
    columns = ["run", "model", "train_mode", "epochs_run", *TABLE_METRICS, "seconds_per_epoch"]
    fmt = lambda v: "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        label = dict(row, model=row["model"] + (f" ({row['model_type']})" if row["model_type"] not in (None, "SS4Rec") else ""))
        lines.append("| " + " | ".join(fmt(label[c]) for c in columns) + " |")
    return "\n".join(lines)


def plot_comparison(rows, path) -> Path:
    """Validation NDCG@10 per epoch of every run, and their test NDCG@10 -> a PNG."""
    fig = Figure(figsize=(11, 3.8))
    curve_ax, bar_ax = fig.subplots(1, 2)
    for row in rows:
        valid = [h for h in row["history"] if h.get("valid", {}).get("ndcg@10") is not None]
        curve_ax.plot([h["epoch"] for h in valid], [h["valid"]["ndcg@10"] for h in valid], marker="o",
                      label=row["run"])
    curve_ax.set(xlabel="epoch", ylabel="valid NDCG@10", title="validation")
    curve_ax.grid(alpha=0.3)
    curve_ax.legend(fontsize=8)
    bar_ax.bar(range(len(rows)), [row["ndcg@10"] or 0.0 for row in rows])
    bar_ax.set_xticks(range(len(rows)), [row["run"] for row in rows], rotation=30, ha="right", fontsize=8)
    bar_ax.set(ylabel="test NDCG@10", title="test (best validation checkpoint)")
    bar_ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = check_writable_file(path, "--plot", suffix=".png")  # matplotlib adds .png to a bare name
    fig.savefig(path, dpi=110)
    return path
