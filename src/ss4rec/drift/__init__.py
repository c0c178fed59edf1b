"""Data drift and model drift between a past and a future ``.inter`` file, per time window.

    >>> from ss4rec.drift import drift_report
    >>> report = drift_report("splits/ml-1m-past/ml-1m-past.inter",
    ...                       "splits/ml-1m-future/ml-1m-future.inter", "drift-out",
    ...                       checkpoint="runs/past/checkpoints/SS4Rec-best.pth", window="quarter")  # doctest: +SKIP
    >>> report["data_drift"]["overall"]["verdict"], report["model_drift"]["overall"]["verdict"]  # doctest: +SKIP

writes ``drift-out/drift.json`` (the report), ``drift-out/drift.md`` (tables) and
``data_drift.png`` / ``model_drift.png``. The measures, thresholds and the treatment of
unknown users and items are documented in :mod:`ss4rec.drift.data_drift` and
:mod:`ss4rec.drift.model_drift`.

Layer rule: may import evaluation (none today), the pipeline (to restore a model), training
and data; never commands.
"""

from __future__ import annotations

from pathlib import Path

from ss4rec.drift.data_drift import DEFAULT_THRESHOLDS, compute_data_drift
from ss4rec.drift.model_drift import compute_model_drift
from ss4rec.drift.reader import InterColumns
from ss4rec.drift.report import write_markdown, write_plots
from ss4rec.drift.windows import WindowSpec
from ss4rec.training.runfolder import check_writable_folder, write_json_atomic

__all__ = ["drift_report", "compute_data_drift", "compute_model_drift", "DEFAULT_THRESHOLDS", "WindowSpec"]


def drift_report(past, future, output_dir, checkpoint=None, window: str = "month", topk=(10,),
                 thresholds: dict | None = None, device: str = "cpu", max_predictions: int | None = None,
                 config_dict: dict | None = None, plots: bool = True, min_window_rows: int | None = None,
                 min_window_users: int | None = None) -> dict:
    """Compute data drift (and model drift with ``checkpoint``); write drift.json, drift.md, PNGs.

    Returns the report written to ``drift.json``: ``{"window", "data_drift", "model_drift"
    (None without a checkpoint), "plots", "files"}``. ``min_window_rows`` / ``min_window_users``
    (None: the defaults, 500 and 100) mark smaller data windows as insufficient.
    """

    spec = WindowSpec.parse(window)
    if spec.kind == "days":  # one anchor for both parts: the future's first timestamp
        spec = spec.with_anchor(InterColumns(future).time_range()[0])
    out = check_writable_folder(Path(output_dir), "--output")  # created once there is a report to write
    minimums = {name: value for name, value in (("min_window_rows", min_window_rows),
                                                 ("min_window_users", min_window_users)) if value is not None}
    report = {"window": spec.name, "data_drift": compute_data_drift(past, future, spec, thresholds, **minimums),
              "model_drift": None}
    if checkpoint is not None:
        report["model_drift"] = compute_model_drift(checkpoint, past, future, spec, topk=topk, device=device,
                                                    max_predictions=max_predictions, config_dict=config_dict)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, out) if plots else []
    report["files"] = {"json": str(out / "drift.json"), "markdown": str(out / "drift.md")}
    write_json_atomic(out / "drift.json", report)
    write_markdown(report, out / "drift.md")
    return report
