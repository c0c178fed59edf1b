"""From parsed source rows to a RecBole ``.inter`` file: the rules every non-MovieLens
converter shares (KuaiRec, Amazon), so they are written and documented once.

A converter parses its source into chunks of ``user, item, timestamp`` (epoch seconds,
float64, NaN where the source has none) plus its own columns (``rating``, ``watch_ratio``),
then hands them to :func:`write_interactions`, which

* drops rows without a timestamp: a row that cannot be placed in time has no place in a
  time-ordered sequence (counted in ``stats.json`` as ``dropped.without_timestamp``);
* drops exact repeats of an earlier row's ``(user, item, timestamp)``, keeping the first
  (``dropped.duplicates``): a second copy of one event is an artefact of the export, and
  every copy would become one more training target. The same user and item at another time
  is a real repeat and stays;
* writes ``user_id:token item_id:token [rating:float] timestamp:float [extra:float ...]``,
  timestamps as integers when every one is whole, else with their fraction (float64 repr:
  ``1593878903.438``);
* commits ``NAME.inter`` and ``NAME.stats.json`` through
  :class:`ss4rec.data.atomic.StagedOutput`: all or nothing.

    >>> import pandas as pd, tempfile
    >>> chunk = pd.DataFrame({"user": ["u1", "u1", "u1", "u2"], "item": ["a", "a", "b", "a"],
    ...                       "timestamp": [10.0, 10.0, 12.5, float("nan")]})
    >>> stats = write_interactions([chunk], tempfile.mkdtemp(), "demo", source="x", source_format="demo")
    >>> stats["rows"], stats["dropped"]
    (2, {'without_timestamp': 1, 'duplicates': 1})
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from ss4rec.data.atomic import StagedOutput, check_dataset_name
from ss4rec.errors import DataError

KEY = ["user", "item", "timestamp"]
# Optional columns, in the order they are written, with their atomic-file types.
OPTIONAL = {"rating": "float", "watch_ratio": "float"}
HEADER_NAMES = {"user": "user_id:token", "item": "item_id:token", "timestamp": "timestamp:float"}
ID_BREAKERS = r"[\t\r\n]"


def utc(seconds: float | None) -> str | None:
    """``1593878903.438`` -> ``'2020-07-04T16:08:23.438000+00:00'``."""
    if seconds is None:
        return None
    return pd.Timestamp(round(float(seconds) * 1000), unit="ms", tz="UTC").isoformat()


def categorical_ids(chunk: pd.DataFrame) -> pd.DataFrame:
    """String id columns as categories: a few bytes a row instead of a Python string each."""
    for column in ("user", "item"):
        if chunk[column].dtype == object:
            chunk[column] = chunk[column].astype("category")
    return chunk


def concat_chunks(chunks: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """One frame from the chunks; categorical id columns stay categorical (their union)."""
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return pd.DataFrame(columns=KEY)
    if len(chunks) == 1:
        return chunks[0].reset_index(drop=True)
    columns = {}
    for column in chunks[0].columns:
        parts = [c[column] for c in chunks]
        if all(isinstance(p.dtype, pd.CategoricalDtype) for p in parts):
            columns[column] = pd.Series(union_categoricals(parts, ignore_order=True))
        else:
            columns[column] = pd.concat(parts, ignore_index=True)
    return pd.DataFrame(columns)


def write_interactions(
    chunks: Iterable[pd.DataFrame],
    outdir: str | Path,
    name: str,
    *,
    source: str,
    source_format: str,
    dropped: dict[str, int] | None = None,
    notes: dict | None = None,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Apply the shared rules to ``chunks`` and commit ``outdir/name/name.{inter,stats.json}``.

    ``dropped``: rows the converter itself left out (e.g. ``below_min_watch_ratio``), added
    to the counts. Raises :class:`DataError` when no interaction is left; nothing is
    written then.
    """
    check_dataset_name(name)
    frame = concat_chunks(chunks)
    chunks = None  # the frame holds the data now
    rows_read = len(frame) + sum((dropped or {}).values())
    without_time = frame["timestamp"].isna().to_numpy()
    repeats = frame.duplicated(KEY, keep="first").to_numpy() & ~without_time
    counts = {"without_timestamp": int(without_time.sum()), "duplicates": int(repeats.sum()),
              **(dropped or {})}
    if without_time.any() or repeats.any():
        frame = frame[~(without_time | repeats)]
    if frame.empty:
        raise DataError(f"{source}: no interactions left to write ({rows_read:,} rows read; "
                        f"dropped: {_describe(counts)}); expected rows with a user, an item and a time")
    bad_ids = [c for c in ("user", "item") if _has_breakers(frame[c])]
    if bad_ids:
        raise DataError(f"{source}: a {bad_ids[0]} id contains a tab or a line break; expected plain ids")

    times = frame["timestamp"].to_numpy(dtype=np.float64)
    columns = ["user", "item"] + [c for c in OPTIONAL if c == "rating" and c in frame]
    columns += ["timestamp"] + [c for c in OPTIONAL if c != "rating" and c in frame]
    out = frame[columns]
    del frame
    if np.all(times == np.floor(times)) and times.max() < 2**53:
        out = out.assign(timestamp=times.astype(np.int64))  # 978300760, never 978300760.0
    header = [HEADER_NAMES.get(c) or f"{c}:{OPTIONAL[c]}" for c in columns]
    stats = {
        "name": name,
        "source": source,
        "format": source_format,
        "rows": int(len(out)),
        "rows_read": int(rows_read),
        "dropped": counts,
        "users": int(out["user"].nunique()),
        "items": int(out["item"].nunique()),
        "time_range": {"min": _number(times.min()), "max": _number(times.max()),
                       "min_utc": utc(times.min()), "max_utc": utc(times.max())},
    }
    if notes:
        stats.update(notes)
    if progress:
        progress(f"convert: writing {len(out):,} interactions")
    with StagedOutput(outdir, overwrite=overwrite) as stage:
        with open(stage.path / "part.inter", "w", encoding="utf-8", newline="\n") as handle:
            handle.write("\t".join(header) + "\n")
            out.to_csv(handle, sep="\t", header=False, index=False, lineterminator="\n", na_rep="")
        with open(stage.path / "part.stats.json", "w", encoding="utf-8") as handle:
            json.dump(stats, handle, indent=2)
            handle.write("\n")
        written = stage.commit(Path(outdir) / name, {"part.inter": f"{name}.inter",
                                                     "part.stats.json": f"{name}.stats.json"})
    stats["files"] = [str(p) for p in written]
    return stats


def _has_breakers(ids: pd.Series) -> bool:
    """Whether any id holds a tab or line break (checked on the distinct values; integers cannot)."""
    if isinstance(ids.dtype, pd.CategoricalDtype):
        values = ids.cat.categories
    elif ids.dtype == object:
        values = pd.Index(ids.unique())
    else:
        return False
    return bool(values.astype(str).str.contains(ID_BREAKERS, regex=True).any())


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


DROPPED_LABELS = {"without_timestamp": "rows without a timestamp", "duplicates": "exact duplicate rows",
                  "below_min_watch_ratio": "rows below --min-watch-ratio"}


def _describe(counts: dict[str, int]) -> str:
    parts = [f"{n:,} {DROPPED_LABELS.get(what, what.replace('_', ' '))}" for what, n in counts.items() if n]
    return ", ".join(parts) or "none"


def describe_dropped(stats: dict) -> str | None:
    """``'12 rows without timestamp, 3 duplicates'``, or None when nothing was dropped."""
    counts = stats.get("dropped") or {}
    return _describe(counts) if any(counts.values()) else None


def line_progress(progress: Callable[[str], None] | None, display: str, every: int = 2_000_000):
    """A ``lines read so far`` callback printing one line per ``every`` lines (None: silent)."""
    if progress is None:
        return None
    state = {"next": every}

    def report(lines_read: int) -> None:
        if lines_read >= state["next"]:
            progress(f"convert: {lines_read:,} lines read from {display}")
            state["next"] = (lines_read // every + 1) * every

    return report


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["write_interactions", "concat_chunks", "categorical_ids", "utc", "describe_dropped",
           "is_finite_number", "line_progress", "stderr_progress"]
