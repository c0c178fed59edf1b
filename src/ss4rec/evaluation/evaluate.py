"""Re-evaluate a saved model on its test split: metrics and the rank of every user's target.

    >>> from ss4rec.evaluation.evaluate import evaluate_checkpoint
    >>> report = evaluate_checkpoint("runs/demo/checkpoints/SS4Rec-best.pth",
    ...                              topk=[1, 5, 10, 20, 50], output_dir="runs/demo/evaluate")  # doctest: +SKIP
    >>> report["metrics"]["ndcg@10"]  # doctest: +SKIP

The run is rebuilt by :func:`ss4rec.pipeline.runner.restore` (same settings, seed and split), and
scored by RecBole's own full-ranking evaluation, so with the run's ``topk`` the metrics
equal the ``test`` block of its ``results.json``. While scoring, the rank of each user's
test item among all items is recorded (ties count in the target's favour). As RecBole 1.2.1
does for sequential models, only the padding item 0 is left out of the ranking: items the
user already interacted with stay in it and can outrank the target (ranks re-derived by hand
agree for every user). RecBole's general models (NeuMF, ...) leave out the user's training
items instead.

Written to ``output_dir``: ``metrics.json`` and ``user_ranks.csv`` with columns
``user_id, item_id`` (original ids), ``rank`` (1 = top), ``history_length`` (the user's
interactions before the test item). With ``time_probe=True`` also ``time_probe.json`` and a
``target_gap_seconds`` column (:mod:`ss4rec.evaluation.probe`: NDCG@10 by gap, time-shift sensitivity).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from recbole.data.interaction import Interaction

from ss4rec.data.dataset import SS4RecDataset
from ss4rec.data.loaders import exact_time_dataset
from ss4rec.errors import UserError
from ss4rec.evaluation.probe import (
    PROBE_USERS,
    TIME_SHIFTS,
    gap_bucket_table,
    ndcg_at,
    rank_correlations,
    shift_summary,
    test_gaps,
)
from ss4rec.pipeline.runner import restore
from ss4rec.training.runfolder import check_writable_folder, write_json_atomic
from ss4rec.training.trainer import SS4RecTrainer


class RankRecordingTrainer(SS4RecTrainer):
    """RecBole's evaluation, also keeping (user index, item index, rank) of every positive.

    With ``time_shifts`` (name -> seconds), each batch is scored again with the request time
    moved, and the per-user rank correlations are kept (for the first PROBE_USERS users).
    """

    def __init__(self, config, model, time_shifts=None, time_scale=1.0):
        super().__init__(config, model)
        self.recorded_ranks: list[torch.Tensor] = []  # each [n_pos, 3]: user, item, rank
        self.time_shifts = time_shifts or {}
        self.time_scale = time_scale  # stored time units per second (RecBole may normalise)
        self.shift_correlations = {name: [] for name in self.time_shifts}

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        # scores [B n_items], history items already -inf; positive_u indexes rows of the batch.
        target_scores = scores[positive_u, positive_i]  # [n_pos]
        ranks = 1 + (scores[positive_u] > target_scores.unsqueeze(1)).sum(dim=1)  # [n_pos]
        users = interaction[self.config["USER_ID_FIELD"]].cpu()[positive_u.cpu()]  # [n_pos]
        self.recorded_ranks.append(torch.stack([users, positive_i.cpu(), ranks.cpu()], dim=1))
        if self.time_shifts:
            self._probe_time_shifts(batched_data, scores[positive_u])
        return interaction, scores, positive_u, positive_i

    def _probe_time_shifts(self, batched_data, scores):
        done = len(next(iter(self.shift_correlations.values())))
        if done >= PROBE_USERS:
            return
        interaction, history_index, positive_u, positive_i = batched_data
        time_field = self.config["TIME_FIELD"]
        before = scores[: PROBE_USERS - done].cpu().numpy()  # [U n_items]
        for name, seconds in self.time_shifts.items():
            fields = dict(interaction.interaction)
            if time_field in fields:
                fields[time_field] = fields[time_field] + seconds * self.time_scale
            shifted = super()._full_sort_batch_eval((Interaction(fields), history_index, positive_u, positive_i))[1]
            after = shifted[positive_u][: len(before)].cpu().numpy()
            self.shift_correlations[name].extend(rank_correlations(before, after).tolist())


def evaluate_checkpoint(checkpoint, topk=None, output_dir=None, device: str = "cpu", data_path=None,
                        time_probe: bool = False) -> dict:
    """Rebuild the run of ``checkpoint``, score its test split, write metrics and per-user ranks.

    Args:
        checkpoint: a checkpoint written by :func:`ss4rec.run` (``checkpoints/MODEL-best.pth``).
        topk: cut-offs (default: the run's own ``topk``).
        output_dir: where to write (default: ``evaluate/`` in the run folder).
        device: ``cpu`` or ``cuda``.
        data_path: the folder holding ``NAME/NAME.inter`` if the data moved since training.
        time_probe: also NDCG@10 by gap bucket and the time-shift rank correlations
            (:mod:`ss4rec.evaluation.probe`), in ``time_probe.json`` and the report's ``time_probe``.

    Returns:
        ``{"metrics": {...}, "topk": [...], "n_users": int, "metrics_file", "ranks_file", ...}``.
    """

    checkpoint = Path(checkpoint).resolve()
    config_dict = {}
    if topk is not None:
        topk = sorted({int(k) for k in topk})
        if not topk or topk[0] < 1:
            raise UserError(f"--topk values must be positive integers, got {topk}")
        config_dict["topk"] = topk
    if data_path is not None:
        config_dict["data_path"] = str(data_path)
    out = Path(output_dir) if output_dir is not None else checkpoint.parent.parent / "evaluate"
    out = check_writable_folder(out.resolve(), "--output")  # before the model and data load

    restored = restore(checkpoint, device=device, config_dict=config_dict)
    config = restored.config
    n_items = restored.dataset.item_num - 1  # item 0 is padding
    if max(config["topk"]) > n_items:
        raise UserError(f"--topk {max(config['topk'])} is more than the {n_items:,} items this run ranks: "
                        f"use cut-offs up to {n_items}")
    out.mkdir(parents=True, exist_ok=True)
    shifts, time_scale, gaps = {}, 1.0, None
    if time_probe:
        if config["TIME_FIELD"] not in restored.dataset.field2type:
            raise UserError(f"--time-probe needs the time field {config['TIME_FIELD']!r}, which this run "
                            "did not load (load_col.inter)")
        exact = restored.dataset
        if not isinstance(exact, SS4RecDataset):
            exact = exact_time_dataset(config)
        gaps = test_gaps(config, exact)
        shifts, time_scale = TIME_SHIFTS, _stored_time_units_per_second(restored.dataset, exact, config)
    trainer = RankRecordingTrainer(config, restored.model, shifts, time_scale)
    metrics = trainer.evaluate(restored.test_data, load_best_model=False, show_progress=False)
    metrics = {k: float(v) for k, v in metrics.items()}

    ranks = torch.cat(trainer.recorded_ranks).numpy()  # [n_users_tested 3]
    rows = _rank_rows(restored.dataset, config, ranks)
    columns = ["user_id", "item_id", "rank", "history_length"]
    if gaps is not None:
        columns.append("target_gap_seconds")
        for row in rows:
            row["target_gap_seconds"] = gaps[row["user_id"]]
    ranks_file = out / "user_ranks.csv"
    with open(ranks_file, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    report = {
        "checkpoint": str(checkpoint),
        "model": config["model"],
        "dataset": config["dataset"],
        "split": "test",
        "topk": list(config["topk"]),
        "n_users": len(rows),
        "metrics": metrics,
        "metrics_file": str(out / "metrics.json"),
        "ranks_file": str(ranks_file),
    }
    if time_probe:
        report["time_probe"] = {
            "model": config["model"],
            "gap_buckets": gap_bucket_table(ndcg_at([r["rank"] for r in rows], 10),
                                            [r["target_gap_seconds"] for r in rows]),
            "time_shift": shift_summary(trainer.shift_correlations),
        }
        report["time_probe_file"] = str(out / "time_probe.json")
        write_json_atomic(out / "time_probe.json", report["time_probe"])
    write_json_atomic(out / "metrics.json", report)
    return report


def _stored_time_units_per_second(dataset, exact, config) -> float:
    """1.0 for exact times; for RecBole's min-max normalised times, 1 / (time range in s)."""
    normalised = config["normalize_all"] or config["TIME_FIELD"] in (config["normalize_field"] or [])
    if dataset is exact or not normalised:
        return 1.0
    times = exact.inter_feat[config["TIME_FIELD"]]
    span = float(times.max() - times.min())
    return 1.0 / span if span > 0 else 1.0


def _rank_rows(dataset, config, ranks) -> list[dict]:
    """Recorded (user index, item index, rank) -> rows with original ids and history length."""

    uid_field, iid_field = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    user_idx, item_idx, rank = ranks[:, 0], ranks[:, 1], ranks[:, 2]
    # Leave-one-out: everything of the user except the test item came before it. A sequential
    # dataset's inter_feat holds its examples (every interaction but each user's first), so
    # count the interactions themselves (flat_feat) where it has them.
    interactions = getattr(dataset, "flat_feat", None)
    interactions = dataset.inter_feat if interactions is None else interactions
    per_user = np.bincount(interactions[uid_field].numpy(), minlength=dataset.user_num)
    user_ids = dataset.id2token(uid_field, user_idx)
    item_ids = dataset.id2token(iid_field, item_idx)
    return [
        {"user_id": u, "item_id": i, "rank": int(r), "history_length": int(per_user[ui] - 1)}
        for u, i, r, ui in zip(user_ids, item_ids, rank, user_idx)
    ]
