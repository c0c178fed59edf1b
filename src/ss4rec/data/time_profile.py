"""A log's time axis in numbers: same-second shares, gaps, sessions, span and the ``auto`` unit.

    >>> log = TimeLog.from_arrays(users=[1, 1, 1, 1, 2, 2, 2], items=[1, 2, 3, 4, 1, 2, 3],
    ...                           times=[0, 0, 60, 7260, 10, 70, 70])
    >>> profile = time_profile(log)
    >>> profile["identical"]["consecutive_pairs"], profile["identical"]["last_two"]
    ({'zero': 2, 'of': 5, 'share': 0.4}, {'zero': 1, 'of': 2, 'share': 0.5})
    >>> profile["units"]["auto_seconds"]  # the median positive *training* gap (0, 60 and 60 s)
    60.0

The cheap part of ``ss4rec inspect`` (:mod:`ss4rec.evaluation.inspection`) and the one line
``ss4rec preflight`` prints (:func:`summary_line`). Everything is vectorised numpy over the
rows (one sort by user and time, then differences and bincounts: no Python loop over rows or
users), so ML-1M takes about a second and 32M rows well under a minute after reading.

The log is read the way every run orders it (:mod:`ss4rec.data.ordering`): each user's
interactions by exact time, ties in file order. Leave-one-out then holds out each user's
last interaction (the *test target*) and the one before it (the *valid target*), fewer for
users with fewer than four interactions, exactly as
:meth:`ss4rec.data.sequences.FlatSequentialDataset._leave_one_out`: a user with ``n``
interactions keeps ``min(2, n - 2)`` of them out (none below 3). The *training targets*
are the others, except each user's first; their gaps set ``time_unit: auto``
(:func:`ss4rec.data.time_scale.auto_unit`, the same function the model calls).

Gaps here are seconds between a user's consecutive interactions; a *zero gap* is two
interactions in the same second (an item at a zero gap does not enter SS4Rec's S5 state).
The file is read as is: a run's filters (``user_inter_num_interval``, ...) are not applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ss4rec.data.atomic import read_atomic_header
from ss4rec.data.interactions import utc
from ss4rec.data.reading import ATOMIC_READ, check_header, file_problem, scan_atomic_file
from ss4rec.data.time_scale import auto_unit
from ss4rec.errors import DataError

SESSION_GAP_S = 1800.0  # a new session after 30 minutes without an interaction
HELD_OUT = 2  # leave-one-out: valid and test (eval_args.split LS: valid_and_test)


@dataclass
class TimeLog:
    """One log sorted by (user, exact time), ties in file order: ``users``/``items`` are 0-based
    codes (``[N]`` int64), ``times`` float64 seconds; ``path`` is where it was read from."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    path: str = ""

    @classmethod
    def from_arrays(cls, users, items, times, path: str = "", coded: bool = False) -> "TimeLog":
        """Codes any ids (``[N]`` each, file order) and sorts the rows as a run orders them.

        ``coded``: the ids are already codes ``0 .. n-1`` (e.g. pandas category codes)."""
        code = (lambda ids: np.asarray(ids, dtype=np.int64)) if coded else (
            lambda ids: pd.factorize(np.asarray(ids))[0].astype(np.int64))
        user_codes, item_codes = code(users), code(items)
        times = np.asarray(times, dtype=np.float64)
        order = np.lexsort((times, user_codes))  # stable: same-second rows keep file order
        return cls(user_codes[order], item_codes[order], times[order], path)

    def __len__(self) -> int:
        return len(self.times)


def read_time_log(path, user_field: str = "user_id", item_field: str = "item_id",
                  time_field: str = "timestamp") -> TimeLog:
    """Read the user, item and time columns of an ``.inter`` file (one pass, pandas' C parser).

    Raises :class:`DataError` (one line: what, where, how to fix) for a missing or empty file,
    a malformed atomic file (:func:`ss4rec.data.reading.scan_atomic_file`), a header without
    these columns, no rows, or times that are not finite non-negative numbers.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(problem)
    header = read_atomic_header(path)
    check_header(path, header)
    wanted = {f"{user_field}:token": user_field, f"{item_field}:token": item_field,
              f"{time_field}:float": time_field}
    missing = [column for column in wanted if column not in header]
    if missing:
        raise DataError(f"{path}: the header has no {', '.join(missing)} column (header: {' '.join(header)}); "
                        f"inspecting the time axis needs user, item and {time_field} columns: re-create the file "
                        "with `ss4rec convert` from a source that has timestamps")
    scan_atomic_file(path)  # field counts, encoding, control characters: each with its line
    dtypes = {column: ("float64" if name == time_field else "category") for column, name in wanted.items()}
    try:
        frame = pd.read_csv(path, sep="\t", usecols=list(wanted), dtype=dtypes, engine="c", **ATOMIC_READ)
    except ValueError:
        raise DataError(f"{path}: a {time_field} value is not a number: epoch seconds expected "
                        f"(`ss4rec preflight` names the first bad line)") from None
    if frame.empty:
        raise DataError(f"{path} has a header but no rows: add interactions, one per line")
    times = frame[f"{time_field}:float"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(times) | (times < 0)
    if bad.any():
        first = int(bad.argmax())
        raise DataError(f"{path}: line {first + 2}: {time_field} {times[first]!r} is not a finite non-negative "
                        f"number ({int(bad.sum()):,} such rows): fix or drop them (epoch seconds expected)")
    return TimeLog.from_arrays(frame[f"{user_field}:token"].cat.codes.to_numpy(),
                               frame[f"{item_field}:token"].cat.codes.to_numpy(), times, str(path), coded=True)


@dataclass
class Positions:
    """Where each row stands in its user's sequence (all ``[N]``), under leave-one-out."""

    first: np.ndarray  # bool: a user's first interaction (no gap into it)
    gaps: np.ndarray  # float64: seconds since the user's previous interaction (NaN at a first)
    test: np.ndarray  # bool: the user's test target
    valid: np.ndarray  # bool: the user's valid target
    train_target: np.ndarray  # bool: a training target (not first, not valid / test)
    training: np.ndarray  # bool: in the training part (training targets and the first)
    starts: np.ndarray  # [U] first row of each user
    counts: np.ndarray  # [U] interactions per user


def positions(log: TimeLog) -> Positions:
    """Each row's role under leave-one-out, as the run's split gives it (see the module docstring)."""
    users, times = log.users, log.times
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(users)])
    n = np.repeat(counts, counts)  # [N] the user's interaction count
    index = np.arange(len(users)) - np.repeat(starts, counts)  # [N] 0-based position in the user
    from_end = n - index  # 1 at the user's last interaction
    held_out = np.repeat(np.clip(counts - 2, 0, HELD_OUT), counts)  # min(2, n - 2), none below 3
    first = index == 0
    gaps = np.full(len(users), np.nan)
    gaps[~first] = (times[1:] - times[:-1])[~first[1:]]
    test = (from_end == 1) & (held_out >= 1)
    valid = (from_end == 2) & (held_out >= 2)
    training = from_end > held_out
    return Positions(first, gaps, test, valid, training & ~first, training, starts, counts)


def share(mask: np.ndarray) -> dict:
    """``{"zero": k, "of": n, "share": k / n}`` of a boolean array (share None when empty)."""
    k, n = int(mask.sum()), int(mask.size)
    return {"zero": k, "of": n, "share": k / n if n else None}


def bucket_counts(gaps: np.ndarray, upper_edges) -> list[int]:
    """How many ``gaps`` fall below each of ``upper_edges`` and at or above the one before
    (the last edge may be ``inf``): the buckets of :data:`ss4rec.evaluation.probe.GAP_BUCKETS`."""
    index = np.searchsorted(np.asarray(upper_edges, dtype=np.float64), gaps, side="right")
    return np.bincount(index, minlength=len(upper_edges))[: len(upper_edges)].tolist()


def sessions(log: TimeLog, pos: Positions, session_gap: float = SESSION_GAP_S) -> dict:
    """Sessions: runs of a user's interactions with every gap under ``session_gap`` seconds."""
    starts = pos.first | (pos.gaps >= session_gap)
    lengths = np.bincount(np.cumsum(starts) - 1) if len(starts) else np.zeros(0, np.int64)
    return {"gap_seconds": float(session_gap), "count": int(len(lengths)),
            "mean_length": float(lengths.mean()) if len(lengths) else None,
            "median_length": float(np.median(lengths)) if len(lengths) else None,
            "single_interaction_share": float((lengths == 1).mean()) if len(lengths) else None}


def time_profile(log: TimeLog, session_gap: float = SESSION_GAP_S, bucket_edges=None) -> dict:
    """The facts of a log's time axis (JSON-able; see the module docstring for the definitions).

    ``bucket_edges``: upper edges in seconds of gap buckets to count (None: no bucket counts).
    """
    pos = positions(log)
    gaps = pos.gaps[~pos.first]  # every consecutive pair of a user
    test_gaps, valid_gaps = pos.gaps[pos.test], pos.gaps[pos.valid]
    has_two = pos.counts >= 2
    last = pos.starts + pos.counts - 1
    last_two = log.times[last[has_two]] - log.times[last[has_two] - 1]
    positive = gaps[gaps > 0]
    span = float(log.times.max() - log.times.min()) if len(log) else 0.0
    profile = {
        "source": log.path,
        "interactions": len(log), "users": int(len(pos.counts)),
        "items": int(log.items.max()) + 1 if len(log) else 0,
        "interactions_per_user": {"median": float(np.median(pos.counts)), "min": int(pos.counts.min()),
                                  "max": int(pos.counts.max())},
        "span": {"first": utc(float(log.times.min())), "last": utc(float(log.times.max())),
                 "seconds": span, "days": span / 86400.0},
        "identical": {
            "consecutive_pairs": share(gaps == 0),  # per interaction after a user's first
            "last_two": share(last_two == 0),  # per user with >= 2 interactions
            "test_target": share(test_gaps == 0),  # test target vs the interaction before it
            "valid_target": share(valid_gaps == 0),  # valid target vs the one before it
        },
        "gaps": {"median_seconds": float(np.median(gaps)) if len(gaps) else None,
                 "median_positive_seconds": float(np.median(positive)) if len(positive) else None,
                 "test_median_seconds": float(np.median(test_gaps)) if len(test_gaps) else None},
        "sessions": sessions(log, pos, session_gap),
        "units": {"auto_seconds": auto_unit(pos.gaps[pos.train_target]),
                  "training_targets": int(pos.train_target.sum()), "normalized_seconds": span},
    }
    if bucket_edges is not None:
        profile["buckets"] = {"all_gaps": bucket_counts(gaps, bucket_edges),
                              "test_targets": bucket_counts(test_gaps, bucket_edges)}
    return profile


def duration(seconds) -> str:
    """``90`` -> ``'1.5 min'``; ``0`` -> ``'0 s'``; None -> ``'n/a'``."""
    if seconds is None:
        return "n/a"
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.3g} {'day' if unit == 'days' and f'{value:.3g}' == '1' else unit}"
    return f"{seconds:.3g} s"


def summary_line(profile: dict) -> str:
    """The one line ``ss4rec preflight`` prints about the time axis."""
    same = profile["identical"]
    pct = lambda part: "n/a" if part["share"] is None else f"{100 * part['share']:.0f}%"  # noqa: E731
    return (f"same second: {pct(same['consecutive_pairs'])} of consecutive pairs, {same['last_two']['zero']:,} of "
            f"{same['last_two']['of']:,} users' last two; median gap {duration(profile['gaps']['median_seconds'])} "
            f"(positive: {duration(profile['gaps']['median_positive_seconds'])}); time_unit auto = "
            f"{profile['units']['auto_seconds']:.6g} s; details: ss4rec inspect")
