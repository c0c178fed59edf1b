"""Convert KuaiRec 2.0 (``big_matrix.csv`` / ``small_matrix.csv``) to a RecBole ``.inter`` file.

    >>> from ss4rec.data.kuairec import convert_kuairec
    >>> stats = convert_kuairec("~/Downloads/KuaiRec.zip", "data", name="kuairec-big")  # doctest: +SKIP
    >>> stats["rows"]  # doctest: +SKIP
    12530806

KuaiRec (Gao et al., CIKM 2022, https://kuairec.com; the release zip:
https://zenodo.org/records/18164998/files/KuaiRec.zip) logs every video a Kuaishou user
watched: ``user_id, video_id, play_duration, video_duration, time, date, timestamp,
watch_ratio``, ``timestamp`` in float epoch seconds (milliseconds as the fraction). The
big matrix (7,176 users x 10,728 videos, 12.5M rows) and the small, almost fully observed
one (1,411 x 3,327, 4.7M rows) are separate datasets in the SS4Rec paper.

SRC is the release zip (``KuaiRec.zip``), its unpacked folder, or one of the two CSV files
(plain or gzip). A zip or folder holds both matrices: the dataset name picks one (a name
with ``small`` in it takes ``small_matrix.csv``, one with ``big`` ``big_matrix.csv``); the
default name follows the file (``kuairec-big`` / ``kuairec-small``).

How rows become interactions (the official SS4Rec code takes the rows as they are: its
``load_col`` reads ``user_id, item_id, timestamp`` and no config filters on watch ratio):

* every row is one interaction ``user_id -> user_id``, ``video_id -> item_id``,
  ``timestamp`` kept to the millisecond, ``watch_ratio`` kept as a float column (not
  loaded by the presets; there for filtering and analysis);
* no watch-ratio threshold by default; ``min_watch_ratio`` (``--min-watch-ratio``) keeps
  only rows at or above it (KuaiRec's README suggests ``like = watch_ratio > 2.0`` where a
  binary signal is wanted);
* rows without a timestamp are dropped, and exact duplicates of ``(user, video,
  timestamp)`` too (:mod:`ss4rec.data.interactions`); counts in ``NAME.stats.json``.
"""

from __future__ import annotations

import math
import os
from pathlib import PurePosixPath
from typing import Callable

from ss4rec.data.delimited import DEFAULT_BLOCK_BYTES, Column, read_delimited
from ss4rec.data.interactions import line_progress, write_interactions
from ss4rec.data.sources import Source
from ss4rec.errors import DataError

MATRICES = {"big_matrix.csv": "kuairec-big", "small_matrix.csv": "kuairec-small"}
HEADER = ["user_id", "video_id", "play_duration", "video_duration", "time", "date", "timestamp",
          "watch_ratio"]
# The columns converted; the others are read (so a short line is caught) and ignored.
_COLUMNS = {
    "user_id": Column("user", "int", "user id"),
    "video_id": Column("item", "int", "video id"),
    "timestamp": Column("timestamp", "number", "timestamp", blank_ok=True),
    "watch_ratio": Column("watch_ratio", "number", "watch ratio", blank_ok=True),
}


def is_kuairec_header(first_line: str) -> bool:
    """True for a KuaiRec interaction CSV header (needs user_id, video_id, timestamp, watch_ratio)."""
    fields = [f.strip().strip('"') for f in first_line.lstrip("\ufeff").rstrip("\r\n").split(",")]
    return {"user_id", "video_id", "timestamp", "watch_ratio"} <= set(fields)


def pick_matrix(source: Source, name: str | None) -> str:
    """The member holding the interactions: the one CSV, or the matrix the name asks for."""
    matrices = {PurePosixPath(n).name: n for n in source.names if PurePosixPath(n).name in MATRICES}
    if source.kind == "file" or not matrices:
        if len(source.names) == 1:
            return source.names[0]
        raise DataError(f"{source.path}: no big_matrix.csv or small_matrix.csv inside; expected the KuaiRec "
                        "2.0 release (KuaiRec.zip, its folder, or one of the two CSV files)")
    if len(matrices) == 1:
        return next(iter(matrices.values()))
    wanted = name.lower() if name else ""
    if "small" in wanted:
        return matrices["small_matrix.csv"]
    if "big" in wanted:
        return matrices["big_matrix.csv"]
    raise DataError(f"{source.path} holds both big_matrix.csv and small_matrix.csv: pick one with "
                    "--name kuairec-big or --name kuairec-small (or pass the CSV file itself)")


def convert_kuairec(
    src: str | os.PathLike,
    outdir: str | os.PathLike,
    name: str | None = None,
    min_watch_ratio: float | None = None,
    progress: Callable[[str], None] | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    overwrite: bool = False,
) -> dict:
    """Convert a KuaiRec 2.0 matrix at ``src`` into ``outdir/NAME/`` and return its stats.

    Raises :class:`DataError` on any bad input, before anything in ``outdir`` changes.
    """
    if min_watch_ratio is not None and (not math.isfinite(min_watch_ratio) or min_watch_ratio < 0):
        raise DataError(f"--min-watch-ratio {min_watch_ratio}: expected a non-negative number (e.g. 2.0)")
    with Source(src, expected="the KuaiRec 2.0 release (KuaiRec.zip, its folder, or big_matrix.csv / "
                              "small_matrix.csv)") as source:
        member = pick_matrix(source, name)
        display = source.display(member)
        first = source.head(member, 4096).decode("utf-8", errors="replace").splitlines()
        if not first or not first[0].strip():
            raise DataError(f"{display}: line 1: file is empty; expected the header '{','.join(HEADER)}'")
        header = [f.strip().strip('"') for f in first[0].lstrip("\ufeff").split(",")]
        if not is_kuairec_header(first[0]):
            raise DataError(f"{display}: line 1: expected a KuaiRec header with user_id, video_id, "
                            f"timestamp and watch_ratio ('{','.join(HEADER)}'), got {first[0][:100]!r}")
        columns = [_COLUMNS.get(field, Column(None, "text", field)) for field in header]
        chunks, below = [], 0
        report = line_progress(progress, display)
        for chunk in read_delimited(source, member, columns, ",", skip_header=True,
                                    block_bytes=block_bytes, progress=report):
            if min_watch_ratio is not None:
                keep = chunk["watch_ratio"].to_numpy() >= min_watch_ratio  # NaN fails: dropped
                below += int((~keep).sum())
                chunk = chunk[keep]
            chunks.append(chunk)
        if not chunks:
            raise DataError(f"{display}: no rows after the header; expected lines of "
                            f"'{','.join(HEADER)}'")
        matrix = PurePosixPath(member).name
        default = MATRICES.get(matrix, "kuairec")
        dropped = {"below_min_watch_ratio": below} if min_watch_ratio is not None else None
        notes = {"min_watch_ratio": min_watch_ratio} if min_watch_ratio is not None else None
        return write_interactions(chunks, outdir, name or default, source=display,
                                  source_format=f"kuairec ({matrix})", dropped=dropped, notes=notes,
                                  progress=progress, overwrite=overwrite)


__all__ = ["convert_kuairec", "is_kuairec_header", "pick_matrix", "MATRICES", "HEADER"]
