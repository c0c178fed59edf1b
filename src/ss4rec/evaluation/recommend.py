"""Top-K recommendations for users of a trained run, with original ids, titles and genres.

    >>> from ss4rec.pipeline.runner import restore
    >>> from ss4rec.evaluation.recommend import recommend
    >>> run = restore("runs/demo/checkpoints/SS4Rec-best.pth")  # doctest: +SKIP
    >>> recommend(run, ["4", "33"], k=2, exclude_seen=True)  # doctest: +SKIP
      user_id  rank item_id     score                  title                          genres
    0       4     1     307  1.686063  Devil's Advocate, The   Crime|Horror|Mystery|Thriller
    1       4     2     286  1.675440   English Patient, The               Drama|Romance|War
    2      33     1     286  1.704410   English Patient, The               Drama|Romance|War
    3      33     2     301  1.643363               In & Out                          Comedy

``recommend`` also takes the checkpoint path itself (it then calls
:func:`ss4rec.pipeline.runner.restore`); pass a :class:`~ss4rec.pipeline.runner.RestoredRun` when asking
many times, so the dataset is loaded once.

What the model sees, per user:

* the user's *full* history: every interaction of the user in the run's dataset (train,
  valid and test alike), time-ordered as RecBole orders it, of which the model reads the
  last ``MAX_ITEM_LIST_LENGTH`` items (RecBole's sequential dataset stores histories only
  as per-target prefixes, so the full sequence is rebuilt from them);
* the time of the request ``at`` (SS4Rec discretises its last step with the gap from the
  last interaction to it). Default: the user's last interaction time plus the median gap
  between the user's consecutive interactions. Time-blind RecBole models (SASRec,
  GRU4Rec, ...) get the same fields and ignore them.

The padding item (internal id 0) is never recommended; ``exclude_seen`` also drops every
item in the user's full history. Ids are RecBole's original tokens (strings, as in the
atomic files); titles and genres come from the dataset's ``.item`` file, read as text.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender

from ss4rec.data.dataset import SS4RecDataset
from ss4rec.data.sequences import user_runs
from ss4rec.errors import UserError
from ss4rec.pipeline.runner import RestoredRun, restore

# Column names (before ':type') that hold a title / genres in an atomic `.item` file:
# RecBole's bundled ML-100K says `movie_title` and `class`; `ss4rec convert` writes `genre`.
_GENRE_FIELDS = ("genre", "genres", "class", "category", "categories")
ON_UNKNOWN = ("warn", "raise", "ignore")


# Larger request times make the time gap overflow the model's float32 (1e13 s is ~300,000
# years, room even for millisecond timestamps).
MAX_TIME_SECONDS = 1e13


def parse_time(value) -> float:
    """A request time as epoch seconds (UTC).

    Accepts epoch seconds (int, float or a numeric string), an ISO 8601 date or date/time
    string (UTC unless it carries an offset) or a ``datetime`` (naive = UTC).

        >>> parse_time("1998-04-01")
        891388800.0
        >>> parse_time("1998-04-01T10:00:00+02:00")
        891417600.0
        >>> parse_time(891388800)
        891388800.0
    """
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                return parse_time(datetime.fromisoformat(text))
            except ValueError:
                raise UserError(
                    f"request time {value!r} is neither epoch seconds (e.g. 891388800) nor an "
                    "ISO date/time (e.g. 1998-04-01 or 1998-04-01T10:00:00Z, UTC unless an "
                    "offset is given)"
                ) from None
    else:
        raise UserError(f"request time must be epoch seconds, an ISO string or a datetime, not {type(value).__name__}")
    if not math.isfinite(seconds):
        raise UserError(f"request time {value!r} is not a finite number of seconds")
    if abs(seconds) >= MAX_TIME_SECONDS:
        raise UserError(f"request time {value!r} is {seconds:.3g} s, far outside any real timeline "
                        f"(|time| < {MAX_TIME_SECONDS:.0e} s): give epoch seconds or an ISO date")
    return seconds


@dataclass
class _History:
    """One user's full interaction history (internal ids), oldest first."""

    items: np.ndarray  # [N] internal item ids
    times: np.ndarray  # [N] timestamps in the dataset's units and dtype


def _histories(dataset, internal_uids: np.ndarray) -> dict[int, _History]:
    """Full histories of the given users, from the dataset's interactions in (user, time) order.

    Sequential datasets of our runs keep every interaction once, sorted stably by (user,
    time) as RecBole sorts them (``flat_feat``, :mod:`ss4rec.data.sequences`), ties included.
    """

    feat = dataset.flat_feat
    uid_field, item_field, time_field = dataset.uid_field, dataset.iid_field, dataset.time_field
    all_uids = feat[uid_field].numpy()
    rows = np.flatnonzero(np.isin(all_uids, internal_uids))  # [R] already in (user, time) order
    uids = all_uids[rows]
    items = feat[item_field][rows].numpy()
    times = feat[time_field][rows].numpy()
    starts, counts = user_runs(uids)
    return {int(uids[start]): _History(items=items[start:start + n], times=times[start:start + n])
            for start, n in zip(starts, counts)}


def _time_is_scaled(run) -> bool:
    """True if RecBole min-max scaled the time field (``normalize_all``/``normalize_field``).

    :class:`ss4rec.data.dataset.SS4RecDataset` never scales it; RecBole's own dataset does
    under the bundled ``ml-100k.yaml`` (``normalize_all: True``).
    """

    if isinstance(run.dataset, SS4RecDataset):
        return False
    time_field = run.dataset.time_field
    listed = run.config["normalize_field"] or ()
    return bool(run.config["normalize_all"]) or time_field in listed


def item_details(config) -> pd.DataFrame | None:
    """Title and genres per original item id from the dataset's ``.item`` file, or None.

    Read directly as text (not through RecBole, which loads only ``load_col`` columns and
    splits titles into tokens). Genres are joined with ``|``. Returns a frame indexed by
    the item token with the columns ``title`` and/or ``genres`` it found.

        >>> item_details(run.config).loc["1"]  # doctest: +SKIP
        title                       Toy Story
        genres    Animation|Children's|Comedy
    """
    path = Path(config["data_path"]) / f"{config['dataset']}.item"
    if not path.is_file():
        return None
    raw = pd.read_csv(path, sep=config["field_separator"] or "\t", dtype=str, keep_default_na=False,
                      quoting=csv.QUOTE_NONE, encoding=config["encoding"] or "utf-8", engine="python")
    names = {column.split(":")[0]: column for column in raw.columns}
    id_column = names.get(config["ITEM_ID_FIELD"])
    if id_column is None:
        return None
    details = pd.DataFrame(index=raw[id_column].str.strip())
    title = next((names[n] for n in names if "title" in n.lower()), None)
    genres = next((names[n] for n in names if n.lower() in _GENRE_FIELDS), None)
    if title is not None:
        details["title"] = raw[title].to_numpy()
    if genres is not None:
        separator = config["seq_separator"] or " "
        details["genres"] = ["|".join(g for g in value.split(separator) if g) for value in raw[genres]]
    if details.columns.empty:
        return None
    return details[~details.index.duplicated()]


def _as_user_list(users) -> list[str]:
    if isinstance(users, (str, int, np.integer)):
        users = [users]
    tokens = [str(u).strip() for u in users]
    if not tokens:
        raise UserError("no user ids given: pass at least one original user id (e.g. '1')")
    return list(dict.fromkeys(tokens))  # drop repeats, keep the order


def _report_skipped(skipped: dict[str, str], on_unknown: str) -> None:
    if not skipped or on_unknown == "ignore":
        return
    message = "; ".join(f"user {u!r}: {why}" for u, why in skipped.items())
    if on_unknown == "raise":
        raise UserError(message)
    warnings.warn(message, UserWarning, stacklevel=3)


def _check_sequential(run) -> None:
    if not isinstance(run.model, SequentialRecommender):
        raise UserError(
            f"recommend answers from interaction histories, so it needs a sequential model "
            f"(SS4Rec, SASRec, GRU4Rec, ...); this checkpoint holds {type(run.model).__name__}"
        )


def _model_input(run, internal_uids: list[int], histories: list[_History], request_times: list[float]):
    """A RecBole ``Interaction`` for ``full_sort_predict``: last MAX_ITEM_LIST_LENGTH items."""

    dataset, model = run.dataset, run.model
    max_len = run.config["MAX_ITEM_LIST_LENGTH"]
    time_field = dataset.time_field
    time_dtype = dataset.inter_feat[time_field].dtype
    batch = len(histories)
    item_seq = torch.zeros(batch, max_len, dtype=torch.long)  # [B L], right-padded with 0
    time_seq = torch.zeros(batch, max_len, dtype=time_dtype)  # [B L]
    lengths = torch.zeros(batch, dtype=torch.long)  # [B]
    for row, history in enumerate(histories):
        items, times = history.items[-max_len:], history.times[-max_len:]
        item_seq[row, : len(items)] = torch.from_numpy(items)
        time_seq[row, : len(times)] = torch.from_numpy(times)
        lengths[row] = len(items)
    return Interaction({
        dataset.uid_field: torch.tensor(internal_uids, dtype=torch.long),  # [B] (Caser, FPMC, HRM... read it)
        model.ITEM_SEQ: item_seq,
        model.ITEM_SEQ_LEN: lengths,
        time_field + run.config["LIST_SUFFIX"]: time_seq,
        time_field: torch.tensor(request_times, dtype=time_dtype),  # [B] time of the request
    })


def recommend(run, users, k: int = 10, exclude_seen: bool = False, at=None, *,
              device: str | None = "cpu", batch_size: int = 256, on_unknown: str = "warn") -> pd.DataFrame:
    """Top-``k`` items for each user, best first.

    Args:
        run: a :class:`~ss4rec.pipeline.runner.RestoredRun` or a checkpoint path written by
            :func:`ss4rec.run` (restored on ``device``).
        users: one original user id or a list of them (``"1"`` or ``1``; ids are matched as text).
        k: items per user (fewer if fewer items are left to recommend).
        exclude_seen: drop the items already in the user's history.
        at: the time of the request for every user: epoch seconds, an ISO date/time
            (UTC unless it has an offset) or a ``datetime``. Default: per user, the last
            interaction time plus the user's median gap between interactions. It must not
            be earlier than a user's last interaction.
        device: where to restore the model when ``run`` is a path.
        batch_size: users scored per forward pass.
        on_unknown: what to do about user ids that cannot be answered (not in the run's
            dataset, or without a history): ``"warn"`` (default), ``"raise"`` or
            ``"ignore"``. The others are answered in every case except ``"raise"``.

    Returns:
        A DataFrame with the columns ``user_id, rank, item_id, score`` and ``title``,
        ``genres`` when the dataset has a ``.item`` file with them. Ids are the original
        tokens (strings). ``df.attrs["skipped_users"]`` maps each unanswered user id to the
        reason; ``df.attrs["request_time"]`` maps each answered user to the request time
        given to the model (in the dataset's time units).

    Raises:
        UserError: bad arguments, ``at`` before a user's last interaction, or no user answerable.
    """

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive whole number of items, not {k!r}")
    if batch_size < 1:
        raise UserError(f"batch_size must be positive, not {batch_size!r}")
    if on_unknown not in ON_UNKNOWN:
        raise UserError(f"on_unknown must be one of {ON_UNKNOWN}, not {on_unknown!r}")
    if not isinstance(run, RestoredRun):
        run = restore(run, device=device)
    _check_sequential(run)
    tokens = _as_user_list(users)

    known, histories, skipped = _resolve_users(run, tokens)
    if not known:
        raise UserError("no user could be answered: " + "; ".join(f"user {u!r}: {why}" for u, why in skipped.items()))
    _report_skipped(skipped, on_unknown)
    request_times = _request_times(run, {t: histories[i] for t, i in known.items()}, at)

    answered = list(known)
    frames = []
    for start in range(0, len(answered), batch_size):
        chunk = answered[start:start + batch_size]
        frames.append(_top_k(run, chunk, [known[t] for t in chunk], [histories[known[t]] for t in chunk],
                             [request_times[t] for t in chunk], k, exclude_seen))
    result = pd.concat(frames, ignore_index=True)
    details = item_details(run.config)
    if details is not None:
        result = result.join(details, on="item_id")
        for column in details.columns:
            result[column] = result[column].fillna("")
    result.attrs["skipped_users"] = skipped
    result.attrs["request_time"] = request_times
    return result


def _resolve_users(run, tokens: list[str]):
    """Original ids -> ({token: internal id}, {internal id: history}, {token: why skipped})."""
    dataset = run.dataset
    token_to_id = dataset.field2token_id[dataset.uid_field]
    known, skipped = {}, {}
    for token in tokens:
        internal = token_to_id.get(token)
        if internal is None or internal == 0:  # 0 is RecBole's [PAD] user
            skipped[token] = (f"not a user of this run's dataset ({run.config['dataset']} after its filters, "
                              f"{dataset.user_num - 1} users); check the id")
        else:
            known[token] = internal
    histories = _histories(dataset, np.array(list(known.values()), dtype=np.int64))
    for token, internal in list(known.items()):
        if internal not in histories:
            skipped[token] = "has a single interaction, so RecBole's sequential dataset holds no history for it"
            del known[token]
    return known, histories, skipped


def _top_k(run, tokens, internal_uids, histories, request_times, k, exclude_seen) -> pd.DataFrame:
    """One batch of users: scores from ``full_sort_predict``, masked, top-k, original ids."""
    dataset = run.dataset
    interaction = _model_input(run, internal_uids, histories, request_times)
    with torch.no_grad():
        scores = run.model.full_sort_predict(interaction.to(run.config["device"]))
    scores = scores.view(len(tokens), -1).float().cpu()  # [B n_items]
    scores[:, 0] = -torch.inf  # the padding item is not an item
    if exclude_seen:
        for row, history in enumerate(histories):
            scores[row, torch.from_numpy(history.items)] = -torch.inf
    top_scores, top_items = scores.topk(min(k, scores.shape[1]), dim=1)  # [B k]
    frames = []
    for row, token in enumerate(tokens):
        keep = torch.isfinite(top_scores[row])  # fewer than k items left to recommend
        items = top_items[row][keep].numpy()
        frames.append(pd.DataFrame({
            "user_id": token,
            "rank": np.arange(1, len(items) + 1),
            "item_id": [str(i) for i in dataset.id2token(dataset.iid_field, items)],
            "score": top_scores[row][keep].numpy().astype(float),
        }))
    return pd.concat(frames, ignore_index=True)


def _request_times(run, histories: dict[str, _History], at) -> dict[str, float]:
    """The request time per user, in the dataset's time units (see :func:`recommend`)."""
    default = {}
    for token, history in histories.items():
        gaps = np.diff(history.times.astype(np.float64))  # [N-1], N >= 2
        default[token] = float(history.times[-1]) + float(np.median(gaps))
    if at is None:
        return default
    seconds = parse_time(at)
    if _time_is_scaled(run):
        # RecBole min-max scaled the time field: epoch seconds cannot be expressed in it.
        warnings.warn(
            f"this run's dataset min-max scaled its time field {run.dataset.time_field!r} "
            "(normalize_all / normalize_field), so the request time cannot be given in its units; "
            "using the default request time. RecBole's sequential baselines do not read it anyway.",
            UserWarning, stacklevel=3,
        )
        return default
    # Compared in the dataset's precision: a float32 time field rounds epoch seconds to ~64 s.
    as_stored = float(torch.tensor(seconds, dtype=run.dataset.inter_feat[run.dataset.time_field].dtype))
    early = {t: float(h.times[-1]) for t, h in histories.items() if float(h.times[-1]) > as_stored}
    if early:
        shown = ", ".join(f"{t!r} ({_iso(last)})" for t, last in list(early.items())[:5])
        raise UserError(
            f"request time {_iso(seconds)} is before the last interaction of user(s) {shown}"
            f"{' and others' if len(early) > 5 else ''}; give a later time or leave it out "
            "(default: last interaction plus the user's median gap)"
        )
    return {token: seconds for token in histories}


def _iso(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:g}"
