"""Split a RecBole ``.inter`` file into a past and a future part by time.

    >>> from ss4rec.data.split import split_by_time
    >>> report = split_by_time("data/ml-32m/ml-32m.inter", "splits",
    ...                        until_of="data/ml-20m/ml-20m.inter")  # doctest: +SKIP
    >>> report["past"]["rows"], report["future"]["rows"]  # doctest: +SKIP

writes ``splits/ml-32m-past/ml-32m-past.inter`` and ``splits/ml-32m-future/ml-32m-future.inter``
(each loadable by RecBole as a dataset named ``ml-32m-past`` / ``ml-32m-future`` with
``data_path="splits"``), copies of ``ml-32m.item`` / ``.user`` when they sit next to the
input, and ``splits/ml-32m-split.json`` with the report.

The cut is a timestamp ``c``: the past holds every interaction with ``t <= c``, the future
every one with ``t > c`` (ties at the cut go to the past). ``c`` is

* ``at``: a date (``2015-03-31``, midnight UTC; ``2015-03-31T12:00:00``, UTC unless it
  carries an offset) or epoch seconds;
* ``future_fraction=F``: the timestamp that leaves the latest ``round(F * n)`` interactions
  in the future — fewer if several share the cut's timestamp, since ties stay together;
* ``until_of=OTHER``: the last timestamp of another ``.inter`` file.

An empty past or future is an error (the cut is outside the data's time range).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ss4rec.data.atomic import StagedOutput, read_atomic_header
from ss4rec.errors import DataError

CHUNK_ROWS = 1_000_000


class _InterFile:
    """Column positions of a ``.inter`` file, checked from its header."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file; expected a RecBole .inter file")
        self.header = read_atomic_header(self.path)
        names = [field.split(":", 1)[0] for field in self.header]
        self.time_col = _find(names, ("timestamp",), self.path, "a 'timestamp:float' field")
        self.user_col = _find(names, ("user_id",), self.path, "a 'user_id:token' field")
        self.item_col = _find(names, ("item_id",), self.path, "an 'item_id:token' field")
        if not self.header[self.time_col].endswith(":float"):
            raise DataError(f"{self.path}: line 1: the timestamp field is "
                            f"{self.header[self.time_col]!r}; expected 'timestamp:float'")

    def chunks(self, columns: list[int] | None = None):
        """Yield ``(first_line_number, DataFrame of str)`` chunks of the data lines.

        A bad line anywhere makes the file be re-read line by line, so the error names
        the first bad line exactly (blank lines count, as editors count them).
        """
        line_no = 2
        try:
            reader = pd.read_csv(
                self.path, sep="\t", header=None, skiprows=1, dtype=str, keep_default_na=False,
                chunksize=CHUNK_ROWS, quoting=3, engine="c", encoding="utf-8",
                names=list(range(len(self.header))), usecols=columns, skip_blank_lines=False,
            )  # no index_col=False: it would silently drop extra fields
            for chunk in reader:
                if chunk.isna().to_numpy().any():  # a line with too few fields
                    self._raise_first_bad_line("a line with too few fields")
                yield line_no, chunk
                line_no += len(chunk)
        except pd.errors.EmptyDataError:
            return
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            self._raise_first_bad_line(exc)

    def timestamps(self, chunk: pd.DataFrame) -> np.ndarray:
        """The chunk's timestamps as float64 (exact for epoch seconds); DataError if bad."""
        column = chunk[self.time_col]
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        if not (np.isfinite(values) & (values >= 0)).all():
            self._raise_first_bad_line("a bad timestamp")
        return values

    def _raise_first_bad_line(self, cause: Exception):
        width = len(self.header)
        with open(self.path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if line_no == 1:
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{self.path}: line {line_no}: undecodable bytes; expected "
                                    "UTF-8 text") from None
                fields = line.rstrip("\r\n").split("\t")
                if len(fields) != width:
                    raise DataError(f"{self.path}: line {line_no}: expected {width} tab-separated "
                                    f"fields ({', '.join(self.header)}), found {len(fields)}")
                raw_time = fields[self.time_col].strip()
                try:
                    good_time = float(raw_time) >= 0 and np.isfinite(float(raw_time))
                except ValueError:
                    good_time = False
                if not good_time:
                    what = "is blank" if raw_time == "" else f"is {raw_time[:40]!r}"
                    raise DataError(f"{self.path}: line {line_no}: the timestamp {what}; "
                                    "expected non-negative epoch seconds")
        raise DataError(f"{self.path}: could not be parsed ({cause})")


def _find(names: list[str], wanted: tuple[str, ...], path: Path, what: str) -> int:
    for candidate in wanted:
        if candidate in names:
            return names.index(candidate)
    raise DataError(f"{path}: line 1: no {what.split(' ', 1)[1]} in the header "
                    f"{' '.join(names)}; expected {what}")


def parse_cut_time(text: str) -> float:
    """``'2015-03-31'`` / ``'2015-03-31T12:00:00+02:00'`` / ``'1427760000'`` -> epoch seconds.

    >>> parse_cut_time("1970-01-02")
    86400.0
    >>> parse_cut_time("86400")
    86400.0
    """
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        stamp = None
    if stamp is None or pd.isna(stamp):
        raise DataError(f"--at {text!r}: expected an ISO date such as 2015-03-31 or "
                        "2015-03-31T12:00:00, or epoch seconds such as 1427760000")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.timestamp()


def _all_timestamps(inter: _InterFile) -> np.ndarray:
    parts = [inter.timestamps(chunk) for first, chunk in inter.chunks([inter.time_col])]
    if not parts or sum(len(p) for p in parts) == 0:
        raise DataError(f"{inter.path}: no interactions after the header")
    return np.concatenate(parts)


def _utc(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return pd.Timestamp(seconds, unit="s", tz="UTC").isoformat()


def _side_stats(rows: int, t_min, t_max, users: set, items: set) -> dict:
    def plain(value):
        return None if value is None else (int(value) if float(value).is_integer() else float(value))

    return {"rows": rows, "users": len(users), "items": len(items),
            "time_range": {"min": plain(t_min), "max": plain(t_max),
                           "min_utc": _utc(t_min), "max_utc": _utc(t_max)}}


def split_by_time(
    inter_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    at: str | float | None = None,
    future_fraction: float | None = None,
    until_of: str | os.PathLike | None = None,
) -> dict:
    """Write the past and future parts of ``inter_path`` under ``output_dir``; return the report.

    Exactly one of ``at``, ``future_fraction`` and ``until_of`` must be given (see the module
    docstring). Nothing under ``output_dir`` changes unless the whole split succeeds.
    """
    if sum(x is not None for x in (at, future_fraction, until_of)) != 1:
        raise DataError("give exactly one of --at, --future-fraction, --until-of")
    inter = _InterFile(inter_path)
    name = inter.path.name[: -len(".inter")] if inter.path.name.endswith(".inter") else inter.path.stem
    times = _all_timestamps(inter)
    n = len(times)

    if at is not None:
        cut = float(at) if isinstance(at, (int, float)) else parse_cut_time(str(at))
        rule = {"at": str(at), "cut": cut}
    elif future_fraction is not None:
        if not 0 < future_fraction < 1:
            raise DataError(f"--future-fraction {future_fraction}: expected a number between 0 and 1, "
                            "e.g. 0.1 for the latest 10% of interactions")
        n_future = int(round(future_fraction * n))
        if n_future == 0 or n_future == n:
            raise DataError(f"--future-fraction {future_fraction} of {n} interactions leaves "
                            f"{'the future' if n_future == 0 else 'the past'} empty")
        cut = float(np.partition(times, n - n_future - 1)[n - n_future - 1])
        rule = {"future_fraction": future_fraction, "cut": cut}
    else:
        other = _InterFile(until_of)
        cut = float(_all_timestamps(other).max())
        rule = {"until_of": str(other.path), "cut": cut}
    del times

    with StagedOutput(output_dir) as stage:
        report = _write_sides(inter, name, cut, stage.path)
        report["rule"] = rule
        report["cut_utc"] = _utc(cut)
        past, future = report["past"], report["future"]
        where = (f"all {n} interactions are between {inter_time(past, future, 'min')} and "
                 f"{inter_time(past, future, 'max')}, cut at {_utc(cut)}")
        if past["rows"] == 0:
            raise DataError(f"{inter.path}: the cut leaves the past empty ({where}); choose a later cut")
        if future["rows"] == 0:
            raise DataError(f"{inter.path}: the cut leaves the future empty ({where}); choose an earlier cut")
        for ext in (".item", ".user"):
            sibling = inter.path.with_name(name + ext)
            if sibling.is_file():
                for side in ("past", "future"):
                    shutil.copyfile(sibling, stage.path / f"{name}-{side}{ext}")
        with open(stage.path / f"{name}-split.json", "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
            out.write("\n")
        _commit_sides(stage, Path(output_dir), name)
    return report


def inter_time(past: dict, future: dict, end: str) -> str | None:
    values = [s["time_range"][end] for s in (past, future) if s["time_range"][end] is not None]
    if not values:
        return None
    return _utc(min(values) if end == "min" else max(values))


def _write_sides(inter: _InterFile, name: str, cut: float, stage: Path) -> dict:
    """Stream the file once, appending each chunk's rows to the past or the future file."""
    sides = {}
    for side in ("past", "future"):
        handle = open(stage / f"{name}-{side}.inter", "w", encoding="utf-8", newline="\n")
        handle.write("\t".join(inter.header) + "\n")
        sides[side] = {"handle": handle, "rows": 0, "min": None, "max": None,
                       "users": set(), "items": set()}
    try:
        for first_line, chunk in inter.chunks():
            times = inter.timestamps(chunk)
            in_past = times <= cut
            for side, mask in (("past", in_past), ("future", ~in_past)):
                if not mask.any():
                    continue
                part = chunk[mask]
                state = sides[side]
                # rows are written back exactly as read (strings), so nothing is reformatted
                part.to_csv(state["handle"], sep="\t", header=False, index=False,
                            lineterminator="\n", quoting=3)
                state["rows"] += len(part)
                lo, hi = float(times[mask].min()), float(times[mask].max())
                state["min"] = lo if state["min"] is None else min(state["min"], lo)
                state["max"] = hi if state["max"] is None else max(state["max"], hi)
                state["users"].update(part[inter.user_col].unique())
                state["items"].update(part[inter.item_col].unique())
    finally:
        for state in sides.values():
            state["handle"].close()
    past, future = sides["past"], sides["future"]
    new_users = sorted(future["users"] - past["users"], key=_natural)
    new_items = sorted(future["items"] - past["items"], key=_natural)
    return {
        "input": str(inter.path),
        "past": _side_stats(past["rows"], past["min"], past["max"], past["users"], past["items"]),
        "future": _side_stats(future["rows"], future["min"], future["max"], future["users"], future["items"]),
        "future_only_users": len(new_users),
        "future_only_items": len(new_items),
        "future_only_user_examples": new_users[:20],
        "future_only_item_examples": new_items[:20],
        "future_rows_with_future_only_user": _count_rows(stage / f"{name}-future.inter", inter.user_col, set(new_users)),
    }


def _count_rows(path: Path, column: int, tokens: set) -> int:
    if not tokens:
        return 0
    total = 0
    for chunk in pd.read_csv(path, sep="\t", header=0, dtype=str, keep_default_na=False,
                             usecols=[column], chunksize=CHUNK_ROWS, quoting=3):
        total += int(chunk.iloc[:, 0].isin(tokens).sum())
    return total


def _natural(token: str):
    return (0, int(token), "") if token.isdigit() else (1, 0, token)


def _commit_sides(stage: StagedOutput, output_dir: Path, name: str) -> None:
    """Move the staged files to ``DIR/NAME-past/``, ``DIR/NAME-future/`` and ``DIR/``."""
    # Build the final layout inside the stage, then move folder contents one by one.
    for side in ("past", "future"):
        side_dir = stage.path / f"{name}-{side}"
        side_dir.mkdir()
        for staged in list(stage.path.glob(f"{name}-{side}.*")):
            os.replace(staged, side_dir / staged.name)
    for side in ("past", "future"):
        final = output_dir / f"{name}-{side}"
        final.mkdir(parents=True, exist_ok=True)
        for staged in sorted((stage.path / f"{name}-{side}").iterdir()):
            os.replace(staged, final / staged.name)
        (stage.path / f"{name}-{side}").rmdir()
    stage.commit(output_dir)


def format_report(report: dict) -> str:
    """The printed summary of :func:`split_by_time`'s report."""
    lines = [f"cut at {report['cut_utc']} ({report['rule']}); ties go to the past"]
    for side in ("past", "future"):
        stats = report[side]
        time_range = stats["time_range"]
        lines.append(f"{side:>6}: {stats['rows']:,} interactions, {stats['users']:,} users, "
                     f"{stats['items']:,} items, {time_range['min_utc']} .. {time_range['max_utc']}")
    lines.append(f"only in the future: {report['future_only_users']:,} users "
                 f"({report['future_rows_with_future_only_user']:,} of its interactions), "
                 f"{report['future_only_items']:,} items")
    return "\n".join(lines)
