"""Convert Amazon review data (McAuley lab releases 2014, 2018 and 2023) to a RecBole ``.inter`` file.

    >>> from ss4rec.data.amazon import convert_amazon
    >>> stats = convert_amazon("~/Downloads/ratings_Sports_and_Outdoors.csv", "data")  # doctest: +SKIP
    >>> stats["name"]  # doctest: +SKIP
    'amazon-sports'

The file's content says which kind it is (its name is only used for the default dataset
name), plain or gzip, alone or as the one file of a folder or zip:

============================ ============================================== ===============
kind                         content                                        time unit
============================ ============================================== ===============
2014 / 2018 reviews          JSON lines with ``reviewerID``, ``asin``,      seconds
(``reviews_X_5.json.gz``,    ``overall``, ``unixReviewTime`` (also the
``X_5.json.gz``, full files) 2014 "loose JSON" lines, Python-dict style)
2023 reviews (``X.jsonl``)   JSON lines with ``user_id``, ``parent_asin``,  milliseconds
                             ``rating``, ``timestamp``
ratings-only CSV, 2014       no header: ``user,item,rating,timestamp``      seconds
(``ratings_X.csv``)
ratings-only CSV, 2018       no header: ``item,user,rating,timestamp``      seconds
(``X.csv``)
2023 rating-only / 5-core    header ``user_id,parent_asin,rating,timestamp`` milliseconds
CSV (``X.csv``)              (a ``history`` column of the split files is
                             ignored)
============================ ============================================== ===============

The two headerless CSV releases differ only in their column order: the column whose
values look like ASINs (10 characters: ``B`` and 9 letters or digits, or an ISBN-10) is the
item column; reviewer ids (``A...``, 12-21 characters) are the users.

How rows become interactions: one review or rating is one interaction
``user -> user_id``, ``item -> item_id`` (``parent_asin`` for 2023, as that release's own
benchmark files do), ``rating`` kept as a float column, times in epoch seconds
(milliseconds divided by 1000, the fraction kept). Rows without a time are dropped, and
exact duplicates of ``(user, item, time)`` (:mod:`ss4rec.data.interactions`); a user who
reviews one item twice at different times keeps both. No k-core filtering here: the
``paper-amazon-*`` presets apply the paper's 5-core filter when the data are loaded.
"""

from __future__ import annotations

import ast
import json
import os
import re
from typing import Callable

import numpy as np
import pandas as pd

from ss4rec.data.delimited import DEFAULT_BLOCK_BYTES, Column, read_delimited
from ss4rec.data.interactions import categorical_ids, line_progress, write_interactions
from ss4rec.data.sources import Source, data_name
from ss4rec.errors import DataError

ASIN = re.compile(r"(?:B[0-9A-Z]{9}|\d{9}[\dX])")
# The paper's two categories get the official configs' dataset names.
CATEGORY_NAMES = {"sports_and_outdoors": "amazon-sports", "video_games": "amazon-video-games"}
JSON_FIELDS = {  # dialect: (user, item keys in order of preference, rating, time, seconds per unit)
    "2014/2018": ("reviewerID", ("asin",), "overall", "unixReviewTime", 1.0),
    "2023": ("user_id", ("parent_asin", "asin"), "rating", "timestamp", 1e-3),
}
SNIFF_LINES = 2000
EXPECTED = ("Amazon reviews (2014/2018 JSON lines with reviewerID, asin, overall, unixReviewTime; "
            "2023 JSONL with user_id, parent_asin, rating, timestamp) or a ratings-only CSV")


# --------------------------------------------------------------------------- detection
def json_dialect(record: dict) -> str | None:
    """``'2014/2018'`` or ``'2023'`` for a review record, None for anything else."""
    if "reviewerID" in record and "asin" in record:
        return "2014/2018"
    if "user_id" in record and ("parent_asin" in record or "asin" in record):
        return "2023"
    return None


def csv_kind(first_line: str, sample: list[str]) -> str | None:
    """``'csv-2023'``, ``'ratings-user-first'`` (2014), ``'ratings-item-first'`` (2018), or None.

    ``sample``: the first lines of the file (for the column order of headerless files).
    """
    fields = [f.strip().strip('"') for f in first_line.lstrip("\ufeff").rstrip("\r\n").split(",")]
    if {"user_id", "rating", "timestamp"} <= set(fields) and ({"parent_asin", "asin"} & set(fields)):
        return "csv-2023"
    rows = [line.rstrip("\r\n").split(",") for line in sample if line.strip()]
    rows = [r for r in rows if len(r) == 4]
    if not rows or len(fields) != 4:
        return None
    asin_share = [np.mean([bool(ASIN.fullmatch(r[i].strip())) for r in rows]) for i in (0, 1)]
    if asin_share[1] >= 0.9 and asin_share[0] <= 0.1:
        return "ratings-user-first"
    if asin_share[0] >= 0.9 and asin_share[1] <= 0.1:
        return "ratings-item-first"
    return None


def default_name(member: str) -> str:
    """``reviews_Sports_and_Outdoors_5.json.gz`` -> ``amazon-sports``;
    ``ratings_Toys_and_Games.csv`` -> ``amazon-toys-and-games``."""
    stem = data_name(member)
    stem = re.sub(r"^(reviews|ratings|meta)_", "", stem, flags=re.I)
    stem = re.sub(r"(_5|\.(train|valid|test))$", "", stem, flags=re.I)
    key = stem.lower()
    if key in CATEGORY_NAMES:
        return CATEGORY_NAMES[key]
    slug = re.sub(r"[^a-z0-9]+", "-", key).strip("-") or "reviews"
    return slug if slug.startswith("amazon") else f"amazon-{slug}"


# --------------------------------------------------------------------------- conversion
def convert_amazon(
    src: str | os.PathLike,
    outdir: str | os.PathLike,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    overwrite: bool = False,
) -> dict:
    """Convert the Amazon reviews or ratings file at ``src`` into ``outdir/NAME/``; return its stats.

    Raises :class:`DataError` on any bad input, before anything in ``outdir`` changes.
    """
    with Source(src, expected=EXPECTED) as source:
        member = _single_member(source)
        display = source.display(member)
        head = source.head(member, 1 << 18).decode("utf-8", errors="replace")
        lines = head.splitlines()[:SNIFF_LINES]
        first = next((line for line in lines if line.strip()), "")
        if not first:
            raise DataError(f"{display}: line 1: file is empty; expected {EXPECTED}")
        report = line_progress(progress, display)
        if first.lstrip("\ufeff").lstrip().startswith("{"):
            chunks, fmt = _read_json_lines(source, member, block_bytes, report)
        else:
            kind = csv_kind(first, lines)
            if kind is None:
                raise DataError(f"{display}: line 1: not a recognised Amazon file: expected {EXPECTED}, "
                                f"whose product column holds ASINs; got {first[:100]!r}")
            chunks, fmt = _read_csv(source, member, kind, block_bytes, report)
        if not chunks:
            raise DataError(f"{display}: no reviews or ratings in the file; expected {EXPECTED}")
        return write_interactions(chunks, outdir, name or default_name(member), source=display,
                                  source_format=fmt, progress=progress, overwrite=overwrite)


def _single_member(source: Source) -> str:
    if len(source.names) == 1:
        return source.names[0]
    shown = ", ".join(source.names[:8]) or "nothing"
    raise DataError(f"{source.path}: expected one Amazon reviews or ratings file, found {shown}; "
                    "pass the file itself")


def _read_csv(source: Source, member: str, kind: str, block_bytes: int, report) -> tuple[list, str]:
    if kind == "csv-2023":
        head = source.head(member, 4096).decode("utf-8", errors="replace").splitlines()[0]
        header = [f.strip().strip('"') for f in head.lstrip("\ufeff").split(",")]
        item_key = "parent_asin" if "parent_asin" in header else "asin"
        known = {"user_id": Column("user", "id", "user id"), item_key: Column("item", "id", item_key),
                 "rating": Column("rating", "number", "rating"),
                 "timestamp": Column("timestamp", "number", "timestamp", blank_ok=True)}
        columns = [known.get(f, Column(None, "text", f)) for f in header]
        unit, fmt, skip = 1e-3, "amazon 2023 CSV (timestamps in milliseconds)", True
    else:
        user, item = Column("user", "id", "user id"), Column("item", "id", "product id (ASIN)")
        ids = [user, item] if kind == "ratings-user-first" else [item, user]
        columns = ids + [Column("rating", "number", "rating"),
                         Column("timestamp", "number", "timestamp", blank_ok=True)]
        order = "user,item" if kind == "ratings-user-first" else "item,user"
        release = "2014" if kind == "ratings-user-first" else "2018"
        unit, fmt, skip = 1.0, f"amazon ratings-only CSV ({order},rating,timestamp: the {release} order)", False
    chunks = []
    for chunk in read_delimited(source, member, columns, ",", skip_header=skip, block_bytes=block_bytes,
                                progress=report):
        chunk = chunk[["user", "item", "rating", "timestamp"]]
        if unit != 1.0:
            chunk = chunk.assign(timestamp=chunk["timestamp"] * unit)
        chunks.append(chunk)
    return chunks, fmt


def _read_json_lines(source: Source, member: str, block_bytes: int, report) -> tuple[list, str]:
    display = source.display(member)
    dialect, chunks = None, []
    for first_line, lines in source.lines(member, block_bytes):
        users, items, ratings, times = [], [], [], []
        for offset, raw in enumerate(lines):
            if not raw.strip():
                continue
            line_no = first_line + offset
            record = _parse_record(raw, display, line_no)
            if dialect is None:
                dialect = json_dialect(record)
                if dialect is None:
                    raise DataError(f"{display}: line {line_no}: a JSON record without reviewer and product "
                                    f"ids (keys: {', '.join(list(record)[:8])}); expected {EXPECTED}")
                user_key, item_keys, rating_key, time_key, unit = JSON_FIELDS[dialect]
            users.append(_id(record, user_key, display, line_no))
            item_key = next((k for k in item_keys if k in record), item_keys[0])
            items.append(_id(record, item_key, display, line_no))
            ratings.append(_number(record.get(rating_key), rating_key, display, line_no))
            time = _number(record.get(time_key), time_key, display, line_no)
            times.append(time * unit)
        if users:
            chunks.append(categorical_ids(pd.DataFrame(
                {"user": users, "item": items, "rating": np.asarray(ratings, dtype=np.float64),
                 "timestamp": np.asarray(times, dtype=np.float64)})))
        if report:
            report(first_line + len(lines))
    if dialect == "2023":
        return chunks, "amazon 2023 reviews, JSON lines (timestamps in milliseconds)"
    return chunks, "amazon 2014/2018 reviews, JSON lines"


def _parse_record(raw: bytes, display: str, line_no: int) -> dict:
    try:
        record = json.loads(raw)
    except ValueError as exc:
        try:  # the 2014 release's "loose JSON": Python dict literals (never eval: literal_eval only)
            record = ast.literal_eval(raw.decode("utf-8"))
        except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
            shown = raw[:80].decode("utf-8", errors="replace").rstrip()
            raise DataError(f"{display}: line {line_no}: not a JSON record ({exc.__class__.__name__}: "
                            f"{exc}); the file may be truncated: {shown!r}") from None
    if not isinstance(record, dict):
        raise DataError(f"{display}: line {line_no}: expected one JSON object per line, got a "
                        f"{type(record).__name__}")
    return record


def _id(record: dict, key: str, display: str, line_no: int) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise DataError(f"{display}: line {line_no}: expected a {key!r} id, got {value!r}")
    return str(value)


def _number(value, key: str, display: str, line_no: int) -> float:
    """A finite non-negative number; None (missing) is NaN; anything else is a DataError."""
    if value is None or value == "":
        return float("nan")
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not np.isfinite(number) or number < 0:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise DataError(f"{display}: line {line_no}: expected a non-negative number for {key!r}, got {shown}")
    return float(number)


__all__ = ["convert_amazon", "csv_kind", "json_dialect", "default_name", "ASIN", "EXPECTED"]
