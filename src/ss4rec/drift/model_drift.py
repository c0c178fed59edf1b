"""Model drift: how well a model trained on the past predicts each future window.

    >>> from ss4rec.drift.model_drift import compute_model_drift
    >>> report = compute_model_drift("runs/past/checkpoints/SS4Rec-best.pth",
    ...                              "splits/ml-1m-past/ml-1m-past.inter",
    ...                              "splits/ml-1m-future/ml-1m-future.inter", window="quarter")  # doctest: +SKIP
    >>> [(w["label"], w["metrics"]["ndcg@10"]) for w in report["windows"]]  # doctest: +SKIP

Every future interaction is one next-item prediction. Its context is everything the user
did before it, in time order: the user's interactions in the past file, then the user's
earlier future interactions; the model reads the last ``MAX_ITEM_LIST_LENGTH`` of them and
(SS4Rec) the time of the predicted interaction. Ranking is over all items, as in RecBole's
full-ranking evaluation: items earlier in the context are excluded (so a repeated item is
a miss), ties count in the target's favour. HR@K and NDCG@K are averaged per window.

Original ids are mapped to the model's ids through the restored RecBole dataset
(``field2token_id``, as ``dataset.token2id`` does); tokens it does not know are unknown:

* an **unknown item** as the target cannot be ranked: the prediction is *excluded* from
  HR/NDCG and counted in ``unknown_item_targets`` (``coverage`` = scored / (scored +
  unknown); HR with unknown targets counted as misses is ``hit@K * coverage``). Unknown
  items in a context are left out of it (they have no embedding);
* an **unknown user** (not in the trained dataset, e.g. new in the future or removed by
  the run's filters) has no past context: the user's first future interaction is skipped
  (counted in ``no_context``) and the later ones are predicted from the future prefix
  alone (counted in ``unknown_user_predictions``).

Reference: the model's own test score, read from the run's ``results.json`` (next to
``checkpoints/``) or, when that is missing or lacks a cut-off, by evaluating the restored
test split. A window drifts when HR@K or NDCG@K falls more than ``max_relative_drop``
(default 20%) below the reference (K: 10 if asked for, else the first cut-off). The
reference is a leave-one-out test of users with their full histories, so it is a yardstick,
not the same task: read the per-window trend along with the verdicts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender

from ss4rec.drift.reader import CHUNK_ROWS, InterColumns, TokenVocab
from ss4rec.drift.windows import WindowSpec
from ss4rec.errors import DataError, UserError
from ss4rec.pipeline.runner import restore
from ss4rec.training.trainer import SS4RecTrainer

MAX_RELATIVE_DROP = 0.2
MIN_PREDICTIONS = 100


class _WindowScores:
    def __init__(self, topk):
        self.topk = topk
        self.predictions = 0
        self.hits = {k: 0.0 for k in topk}
        self.ndcg = {k: 0.0 for k in topk}
        self.unknown_item_targets = 0
        self.no_context = 0
        self.unknown_user_predictions = 0

    def add_ranks(self, ranks: np.ndarray) -> None:
        self.predictions += len(ranks)
        for k in self.topk:
            inside = ranks <= k
            self.hits[k] += float(inside.sum())
            self.ndcg[k] += float((1.0 / np.log2(ranks[inside] + 1.0)).sum())

    def summary(self) -> dict:
        n = self.predictions
        metrics = {}
        for k in self.topk:
            metrics[f"hit@{k}"] = self.hits[k] / n if n else None
            metrics[f"ndcg@{k}"] = self.ndcg[k] / n if n else None
        attempted = n + self.unknown_item_targets
        return {"predictions": n, "metrics": metrics, "unknown_item_targets": self.unknown_item_targets,
                "no_context": self.no_context, "unknown_user_predictions": self.unknown_user_predictions,
                "coverage": n / attempted if attempted else None}


def _read_columns(path, vocab, keep_users: set | None = None):
    """(user tokens codes, item tokens, times) of a .inter file; optionally only some users."""
    users, items, times = [], [], []
    inter = InterColumns(path)
    item_vocab = TokenVocab()
    for chunk in inter.chunks({"user": vocab, "item": item_vocab}, with_ratings=False, chunk_rows=CHUNK_ROWS):
        keep = np.ones(len(chunk.users), dtype=bool) if keep_users is None else np.isin(chunk.users, keep_users)
        users.append(chunk.users[keep])
        items.append(chunk.items[keep])
        times.append(chunk.times[keep])
    item_tokens = np.array(item_vocab.tokens(), dtype=object)
    return np.concatenate(users), item_tokens[np.concatenate(items)], np.concatenate(times)


def _internal(mapping: dict, tokens: np.ndarray) -> np.ndarray:
    """Original tokens -> internal ids; 0 (RecBole's padding id) for unknown tokens."""
    codes, uniques = pd.factorize(tokens)
    mapped = np.array([mapping.get(str(t), 0) for t in uniques], dtype=np.int64)
    return mapped[codes] if len(codes) else np.zeros(0, dtype=np.int64)


def reference_scores(run, checkpoint: Path, topk: list[int]) -> dict:
    """The model's own test metrics: from results.json, else by evaluating its test split."""
    wanted = [f"{m}@{k}" for k in topk for m in ("hit", "ndcg")]
    results = checkpoint.resolve().parent.parent / "results.json"
    if results.is_file():
        test = json.loads(results.read_text(encoding="utf-8")).get("test", {})
        if all(key in test for key in wanted):
            return {"source": str(results), "metrics": {key: float(test[key]) for key in wanted}}


    run.config["topk"] = list(topk)
    run.config["metrics"] = ["Hit", "NDCG"]
    saved_cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # RecBole's trainer writes log_tensorboard/ into the current directory
        try:
            trainer = SS4RecTrainer(run.config, run.model)
            test = trainer.evaluate(run.test_data, load_best_model=False, show_progress=False)
        finally:
            os.chdir(saved_cwd)
    return {"source": "evaluated the restored test split", "metrics": {key: float(test[key]) for key in wanted}}


def compute_model_drift(checkpoint, past_path, future_path, window: str | WindowSpec = "month", topk=(10,),
                        device: str = "cpu", batch_size: int = 256, max_predictions: int | None = None,
                        max_relative_drop: float = MAX_RELATIVE_DROP, min_predictions: int = MIN_PREDICTIONS,
                        config_dict: dict | None = None, seed: int = 0) -> dict:
    """Next-item HR@K / NDCG@K of the checkpoint's model on every future interaction, per window.

    Args:
        checkpoint: a checkpoint written by :func:`ss4rec.run` on the past data.
        past_path, future_path: the ``.inter`` files (context and targets).
        window: ``month``, ``quarter``, ``N-days`` or a :class:`WindowSpec`.
        topk: cut-offs K.
        max_predictions: score a uniform random sample of at most this many predictions
            (``None``: all) — for very large futures.
        config_dict: settings passed to :func:`ss4rec.pipeline.runner.restore` (e.g. ``data_path``).

    Returns ``{"model", "checkpoint", "topk", "reference", "overall", "windows": [...], ...}``.
    """


    checkpoint = Path(checkpoint)
    topk = sorted({int(k) for k in topk})
    if not topk or topk[0] < 1:
        raise UserError(f"top-K cut-offs must be positive integers, got {topk}")
    run = restore(checkpoint, device=device, config_dict=config_dict)
    if not isinstance(run.model, SequentialRecommender):
        raise UserError(f"model drift needs a sequential model (SS4Rec, SASRec, GRU4Rec, ...); "
                        f"{checkpoint} holds {type(run.model).__name__}")
    training_data = check_trained_before(run, past_path, future_path)
    spec = window if isinstance(window, WindowSpec) else WindowSpec.parse(window)
    if spec.kind == "days" and spec.anchor is None:
        spec = spec.with_anchor(InterColumns(future_path).time_range()[0])
    dataset, config = run.dataset, run.config
    user_ids = dataset.field2token_id[dataset.uid_field]
    item_ids = dataset.field2token_id[dataset.iid_field]

    # Future rows (all) and the past rows of the users who appear in the future.
    user_vocab = TokenVocab()
    f_users, f_item_tokens, f_times = _read_columns(future_path, user_vocab)
    n_future_users = len(user_vocab)
    p_users, p_item_tokens, p_times = _read_columns(past_path, user_vocab, keep_users=np.arange(n_future_users))
    user_tokens = user_vocab.tokens()
    user_internal = np.array([user_ids.get(t, 0) for t in user_tokens[:n_future_users]], dtype=np.int64)
    f_items, p_items = _internal(item_ids, f_item_tokens), _internal(item_ids, p_item_tokens)
    del f_item_tokens, p_item_tokens
    # The past context of an unknown user is ignored: the model never saw this user.
    p_keep = (p_items != 0) & (user_internal[p_users] != 0)
    p_users, p_items, p_times = p_users[p_keep], p_items[p_keep], p_times[p_keep]

    f_order = np.lexsort((f_times, f_users))  # by user, then time (stable: file order for ties)
    p_order = np.lexsort((p_times, p_users))
    f_users, f_items, f_times = f_users[f_order], f_items[f_order], f_times[f_order]
    p_users, p_items, p_times = p_users[p_order], p_items[p_order], p_times[p_order]
    f_windows = spec.keys(f_times)
    selected = np.ones(len(f_users), dtype=bool)
    if max_predictions is not None and max_predictions < len(f_users):
        selected[:] = False
        selected[np.random.default_rng(seed).choice(len(f_users), max_predictions, replace=False)] = True

    scores = {}
    batcher = _Batcher(run, topk, batch_size, scores)
    f_starts = np.searchsorted(f_users, np.arange(n_future_users + 1))
    p_starts = np.searchsorted(p_users, np.arange(n_future_users + 1))
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    for user in range(n_future_users):
        fa, fb = f_starts[user], f_starts[user + 1]
        pa, pb = p_starts[user], p_starts[user + 1]
        if fa == fb:
            continue
        items = np.concatenate([p_items[pa:pb], f_items[fa:fb]])  # [S] internal ids, 0 = unknown
        times = np.concatenate([p_times[pa:pb], f_times[fa:fb]])  # [S]
        known = items != 0
        known_before = np.cumsum(known) - known  # [S] known items strictly before each position
        context_items, context_times = items[known], times[known]
        targets = np.arange(pb - pa, len(items))  # positions of the future interactions
        for position, row in zip(targets, range(fa, fb)):
            window_scores = scores.setdefault(int(f_windows[row]), _WindowScores(topk))
            if not selected[row]:
                continue
            if items[position] == 0:
                window_scores.unknown_item_targets += 1
                continue
            end = int(known_before[position])
            if end == 0:
                window_scores.no_context += 1
                continue
            if user_internal[user] == 0:
                window_scores.unknown_user_predictions += 1
            start = max(0, end - max_len)
            batcher.add(int(user_internal[user]), context_items[start:end], context_times[start:end],
                        context_items[:end], float(times[position]), int(items[position]), int(f_windows[row]))
    batcher.flush()

    primary = 10 if 10 in topk else topk[0]
    reference = reference_scores(run, checkpoint, topk)
    windows = []
    for key in sorted(scores):
        entry = {"key": key, "label": spec.label(key), **scores[key].summary()}
        entry.update(_verdict(entry, reference["metrics"], primary, max_relative_drop, min_predictions))
        windows.append(entry)
    overall = _WindowScores(topk)
    for part in scores.values():
        overall.predictions += part.predictions
        overall.unknown_item_targets += part.unknown_item_targets
        overall.no_context += part.no_context
        overall.unknown_user_predictions += part.unknown_user_predictions
        for k in topk:
            overall.hits[k] += part.hits[k]
            overall.ndcg[k] += part.ndcg[k]
    overall_entry = overall.summary()
    overall_entry.update(_verdict(overall_entry, reference["metrics"], primary, max_relative_drop, min_predictions))
    return {
        "model": config["model"], "checkpoint": str(checkpoint), "dataset": config["dataset"],
        "topk": topk, "verdict_k": primary, "max_relative_drop": max_relative_drop,
        "min_predictions": min_predictions, "max_item_list_length": max_len,
        "future_interactions": int(len(f_users)), "sampled": max_predictions is not None and max_predictions < len(f_users),
        "unknown_users": int((user_internal == 0).sum()), "future_users": int(n_future_users),
        "reference": reference, "overall": overall_entry, "windows": windows,
        "training_data": training_data,
    }


def check_trained_before(run, past_path, future_path) -> dict:
    """Did the model see only data up to ``--past``? Refused when it did not; said when unknown.

    The run's training file is the one :func:`~ss4rec.pipeline.runner.restore` found matching
    the checkpoint's data fingerprint. It is ``--past`` itself, or every timestamp in it comes
    before the future's first interaction; otherwise its scores on the future windows would
    include interactions it was trained on, and a UserError says so. Without a time column in
    either file nothing can be checked: ``checked`` is False and ``detail`` says why.
    """
    trained_on = Path(run.config["data_path"]) / f"{run.config['dataset']}.inter"
    past, future = Path(past_path), Path(future_path)
    if trained_on.is_file() and past.is_file() and os.path.samefile(trained_on, past):
        return {"checked": True, "file": str(trained_on), "detail": "the model was trained on --past itself"}
    try:
        trained_last = InterColumns(trained_on).time_range()[1]
        future_first = InterColumns(future).time_range()[0]
    except (DataError, AttributeError, TypeError) as exc:
        return {"checked": False, "file": str(trained_on),
                "detail": f"cannot check that the model saw only data up to --past: {exc}"}
    if trained_last >= future_first:
        raise UserError(
            f"the checkpoint's model was trained on {trained_on}, whose interactions run to {trained_last:.0f}, "
            f"at or after the first interaction of --future {future} ({future_first:.0f}): it would be scored "
            "on interactions it saw. Train on the past side of the split (ss4rec split, then ss4rec train "
            "--dataset NAME-past) and pass that run's checkpoint")
    return {"checked": True, "file": str(trained_on),
            "detail": f"every training interaction ({trained_on.name}, up to {trained_last:.0f}) comes before "
                      f"the future's first ({future_first:.0f})"}


def _verdict(entry: dict, reference: dict, k: int, max_drop: float, min_predictions: int) -> dict:
    drops = {}
    for metric in (f"hit@{k}", f"ndcg@{k}"):
        value, ref = entry["metrics"].get(metric), reference.get(metric)
        drops[metric] = None if value is None or not ref else float(1 - value / ref)
    short = entry["predictions"] < min_predictions
    if short:
        verdict = "insufficient data"
    elif any(d is not None and d > max_drop for d in drops.values()):
        verdict = "drift"
    else:
        verdict = "no drift"
    return {"relative_drop": drops, "verdict": verdict, "insufficient": short,
            "insufficient_reason": f"{entry['predictions']:,} predictions < {min_predictions:,}" if short else None}


class _Batcher:
    """Collects predictions into ``full_sort_predict`` batches and records their ranks."""

    def __init__(self, run, topk, batch_size: int, scores: dict):
        self.run, self.topk, self.batch_size, self.scores = run, topk, batch_size, scores
        self.rows = []

    def add(self, uid, items, times, seen, target_time, target, window) -> None:
        self.rows.append((uid, items, times, seen, target_time, target, window))
        if len(self.rows) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return

        run, rows = self.run, self.rows
        self.rows = []
        model, config, dataset = run.model, run.config, run.dataset
        max_len = config["MAX_ITEM_LIST_LENGTH"]
        time_field = dataset.time_field
        time_dtype = dataset.inter_feat[time_field].dtype if time_field else torch.float64
        batch = len(rows)
        item_seq = torch.zeros(batch, max_len, dtype=torch.long)  # [B L] right-padded with 0
        time_seq = torch.zeros(batch, max_len, dtype=time_dtype)  # [B L]
        lengths = torch.zeros(batch, dtype=torch.long)  # [B]
        for r, (_, items, times, _, _, _, _) in enumerate(rows):
            item_seq[r, : len(items)] = torch.from_numpy(items)
            time_seq[r, : len(times)] = torch.from_numpy(times.astype(np.float64)).to(time_dtype)
            lengths[r] = len(items)
        fields = {
            dataset.uid_field: torch.tensor([row[0] for row in rows], dtype=torch.long),  # [B]
            model.ITEM_SEQ: item_seq,
            model.ITEM_SEQ_LEN: lengths,
        }
        if time_field:
            fields[time_field + config["LIST_SUFFIX"]] = time_seq
            fields[time_field] = torch.tensor([row[4] for row in rows], dtype=time_dtype)  # [B]
        with torch.no_grad():
            scores = model.full_sort_predict(Interaction(fields).to(config["device"]))
        scores = scores.view(batch, -1).float().cpu()  # [B n_items]
        scores[:, 0] = -torch.inf  # padding is not an item
        targets = torch.tensor([row[5] for row in rows], dtype=torch.long)  # [B]
        target_scores = scores[torch.arange(batch), targets].clone()  # [B]
        seen_rows = torch.from_numpy(np.repeat(np.arange(batch), [len(row[3]) for row in rows]))
        seen_items = torch.from_numpy(np.concatenate([row[3] for row in rows]))
        scores[seen_rows, seen_items] = -torch.inf  # RecBole excludes the user's history
        target_scores = torch.where(torch.isin(torch.arange(batch), seen_rows[seen_items == targets[seen_rows]]),
                                    torch.tensor(-torch.inf), target_scores)
        ranks = 1 + (scores > target_scores.unsqueeze(1)).sum(dim=1)  # [B] ties count for the target
        ranks = ranks.numpy()
        windows = np.array([row[6] for row in rows])
        for key in np.unique(windows).tolist():
            self.scores[key].add_ranks(ranks[windows == key])
