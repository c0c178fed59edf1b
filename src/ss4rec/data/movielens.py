"""Convert any GroupLens MovieLens release (folder or ``.zip``) to RecBole atomic files.

    >>> from ss4rec.data.movielens import convert_movielens
    >>> summary = convert_movielens("~/Downloads/ml-1m.zip", "data")  # doctest: +SKIP
    >>> summary["name"], summary["rows"]  # doctest: +SKIP
    ('ml-1m', 1000209)

writes ``data/ml-1m/ml-1m.inter`` (``user_id:token item_id:token rating:float
timestamp:float``, timestamps as integer epoch seconds), ``ml-1m.item`` (title, year,
genres), ``ml-1m.user`` where the release has users, and ``ml-1m.stats.json``.

Layouts are recognised by their files (in the top folder or in the one folder a GroupLens
zip wraps them in):

=========== ============================================ =================================
layout      files                                        default name
=========== ============================================ =================================
100k        ``u.data`` (tab), ``u.item``/``u.user`` (|)   ``ml-100k``
dat         ``ratings.dat``, ``movies.dat``,              ``ml-1m`` if ``users.dat`` is
            ``users.dat`` (``::``, latin-1 or UTF-8)      there and ``tags.dat`` is not,
                                                          else ``ml-10m``
csv         ``ratings.csv``, ``movies.csv`` (header,      the ``(ml-…)`` name in
            quoted titles)                                ``README.txt``; else by the exact
                                                          rating count of ml-20m / ml-25m /
                                                          ml-32m / ml-latest-small; else
                                                          ``ml-csv``
=========== ============================================ =================================

Ratings are streamed in chunks (never one Python object per rating), so ML-32M converts
in well under 1 GB. Every problem in the input is reported as a :class:`DataError` naming
the file, the line and what was expected, and nothing is written (see
:class:`ss4rec.data.atomic.StagedOutput`).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ss4rec.data.atomic import StagedOutput, check_dataset_name, clean_field
from ss4rec.data.sources import DAMAGED, Source
from ss4rec.errors import DataError

INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEM_HEADER = ["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"]
USER_HEADER = ["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"]

# Rating counts of the official csv releases (their README files say the same).
CSV_RELEASE_BY_ROWS = {
    20_000_263: "ml-20m",
    25_000_095: "ml-25m",
    32_000_204: "ml-32m",
    100_836: "ml-latest-small",
}

# u.genre order of the 100K release, used when u.genre itself is absent.
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]

DEFAULT_CHUNK_ROWS = 1_000_000
DEFAULT_PROGRESS_EVERY = 4_000_000


# --------------------------------------------------------------------------- sources
def open_release(path: str | os.PathLike) -> Source:
    """A MovieLens release (folder, zip, or its ratings file alone) as a :class:`Source`."""
    return Source(path, expected="a MovieLens folder or .zip from https://grouplens.org/datasets/movielens/")


@dataclass
class Layout:
    """Which files of a :class:`Source` hold ratings, movies and users, and how to read them."""

    kind: str  # "100k" | "dat" | "csv"
    folder: str  # "" or the folder inside the source holding the files, e.g. "ml-1m"
    ratings: str
    items: str | None
    users: str | None
    genres: str | None = None  # u.genre (100k only)
    readme: str | None = None
    has_tags: bool = False


_RATINGS_FILES = {"u.data": "100k", "ratings.dat": "dat", "ratings.csv": "csv"}
_ITEM_FILES = {"100k": "u.item", "dat": "movies.dat", "csv": "movies.csv"}
_USER_FILES = {"100k": "u.user", "dat": "users.dat", "csv": None}


def detect_layout(source: Source) -> Layout:
    """Find the ratings file (top folder first) and the files next to it."""
    candidates = []
    for name in source.names:
        posix = PurePosixPath(name)
        if posix.name in _RATINGS_FILES and "__MACOSX" not in posix.parts:
            candidates.append((len(posix.parts), name))
    if not candidates:
        shown = ", ".join(source.names[:8]) or "nothing"
        raise DataError(
            f"{source.path}: no MovieLens ratings file found (looked for u.data, ratings.dat, "
            f"ratings.csv; found {shown}); expected a folder or zip from GroupLens"
        )
    ratings = min(candidates)[1]
    folder = str(PurePosixPath(ratings).parent)
    folder = "" if folder == "." else folder
    present = set(source.names)

    def sibling(filename: str | None) -> str | None:
        if filename is None:
            return None
        name = f"{folder}/{filename}" if folder else filename
        return name if name in present else None

    kind = _RATINGS_FILES[PurePosixPath(ratings).name]
    readme = sibling("README.txt") or sibling("README") or sibling("README.md")
    return Layout(
        kind=kind,
        folder=folder,
        ratings=ratings,
        items=sibling(_ITEM_FILES[kind]),
        users=sibling(_USER_FILES[kind]),
        genres=sibling("u.genre") if kind == "100k" else None,
        readme=readme,
        has_tags=sibling("tags.dat") is not None,
    )


def default_name(layout: Layout, source: Source, rows: int) -> str:
    """The dataset name of a release, by the rule in the module docstring."""
    if layout.kind == "100k":
        return "ml-100k"
    if layout.kind == "dat":
        return "ml-1m" if layout.users and not layout.has_tags else "ml-10m"
    if layout.readme:
        text = source.read_bytes(layout.readme)[:20_000].decode("latin-1")
        match = re.search(r"\((ml-[a-z0-9-]+)\)", text)
        if match:
            return match.group(1)
    return CSV_RELEASE_BY_ROWS.get(rows, "ml-csv")


# --------------------------------------------------------------------------- ratings
@dataclass(frozen=True)
class _RatingsFormat:
    """How pandas reads a ratings file fast, and how the exact line checker splits a line."""

    sep: str  # single-character separator given to pandas' C parser
    columns: tuple[int, ...]  # which pandas columns hold user, item, rating, timestamp
    n_columns: int
    line_sep: str  # the real separator, used to explain a bad line
    header: str | None  # expected first line, or None


_FORMATS = {
    "100k": _RatingsFormat("\t", (0, 1, 2, 3), 4, "\t", None),
    # '::' is two ':' with an empty field between; the C parser only takes 1-char separators.
    "dat": _RatingsFormat(":", (0, 2, 4, 6), 7, "::", None),
    "csv": _RatingsFormat(",", (0, 1, 2, 3), 4, ",", "userId,movieId,rating,timestamp"),
}
_SEP_NAMES = {"\t": "tabs", "::": "'::'", ",": "commas"}
_FIELD_NAMES = ("user id", "movie id", "rating", "timestamp")


def iter_ratings(
    source: Source,
    layout: Layout,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """Yield validated ``[user, item, rating, timestamp]`` chunks (int64, int64, float64, int64).

    The fast path is pandas' C parser; when it (or a value check) rejects a chunk, the file
    is re-read line by line to name the first bad line exactly.
    """
    fmt = _FORMATS[layout.kind]
    display = source.display(layout.ratings)
    if fmt.header is not None:
        with source.open(layout.ratings) as handle:
            first = handle.readline(4096).decode("latin-1").lstrip("\ufeff\xef\xbb\xbf").rstrip("\r\n")
        if not first.strip():
            raise DataError(f"{display}: line 1: file is empty; expected the header '{fmt.header}'")
        if first.replace('"', "") != fmt.header:
            raise DataError(f"{display}: line 1: expected the header '{fmt.header}', "
                            f"got {first[:80]!r}")
    names = [f"c{i}" for i in range(fmt.n_columns)]
    wanted = [names[i] for i in fmt.columns]
    spacers = [n for n in names if n not in wanted]  # the empty fields inside '::'
    dtypes = dict(zip(wanted, (np.int64, np.int64, np.float64, np.int64)))
    n_rows = 0
    with source.open(layout.ratings) as handle:
        try:
            reader = pd.read_csv(
                # no usecols: with it, the parser would silently drop extra fields
                handle, sep=fmt.sep, header=None, names=names, dtype=dtypes,
                skiprows=1 if fmt.header else 0, chunksize=chunk_rows, encoding="latin-1",
                engine="c", index_col=False, quoting=csv.QUOTE_NONE,
            )
            for chunk in reader:
                if len(chunk) == 0:
                    continue
                if spacers and not chunk[spacers].isna().all(axis=None):
                    raise ValueError("a single ':' where '::' was expected")
                chunk = chunk[wanted]
                chunk.columns = ["user", "item", "rating", "timestamp"]
                rating = chunk["rating"].to_numpy()
                if (not np.isfinite(rating).all()) or (chunk["timestamp"].to_numpy() < 0).any():
                    raise ValueError("blank or non-finite rating, or negative timestamp")
                n_rows += len(chunk)
                yield chunk
        except pd.errors.EmptyDataError:
            pass
        except (ValueError, pd.errors.ParserError, OverflowError) as exc:
            _raise_first_bad_line(source, layout, fmt, exc)
    if n_rows == 0:
        raise DataError(f"{display}: no ratings in the file; expected lines of user id, movie id, "
                        f"rating, timestamp separated by {_SEP_NAMES[fmt.line_sep]}")


def _raise_first_bad_line(source: Source, layout: Layout, fmt: _RatingsFormat, cause: Exception):
    """Scan the ratings file line by line and raise a DataError for its first bad line."""
    display = source.display(layout.ratings)
    with source.open(layout.ratings) as handle:
        for line_no, raw in enumerate(handle, start=1):
            if fmt.header is not None and line_no == 1:
                continue
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line.strip():
                continue
            problem = _ratings_line_problem(line, fmt.line_sep)
            if problem:
                raise DataError(f"{display}: line {line_no}: {problem}")
    raise DataError(f"{display}: could not be parsed ({cause}); expected lines of user id, "
                    f"movie id, rating, timestamp separated by {_SEP_NAMES[fmt.line_sep]}")


def _ratings_line_problem(line: str, sep: str) -> str | None:
    """What is wrong with one ratings line, or None."""
    shown = line if len(line) <= 80 else line[:77] + "..."
    fields = line.split(sep)
    if len(fields) != 4:
        return (f"expected 4 fields (user id, movie id, rating, timestamp) separated by "
                f"{_SEP_NAMES[sep]}, found {len(fields)} in {shown!r}")
    for field_name, value in zip(_FIELD_NAMES, fields):
        value = value.strip()
        if value == "":
            return f"the {field_name} is blank in {shown!r}"
        if field_name == "rating":
            try:
                number = float(value)
            except ValueError:
                return f"expected a numeric rating, got {value[:40]!r}"
            if not np.isfinite(number):
                return f"expected a finite rating, got {value[:40]!r}"
            continue
        if not re.fullmatch(r"[+-]?\d+", value):
            what = "integer epoch seconds" if field_name == "timestamp" else f"an integer {field_name}"
            return f"expected {what} for the {field_name}, got {value[:40]!r}"
        if field_name == "timestamp" and int(value) < 0:
            return f"expected a non-negative timestamp (epoch seconds), got {value}"
        if abs(int(value)) >= 2**63:
            return f"the {field_name} {value[:40]} is too large"
    return None


# --------------------------------------------------------------------------- movies / users
def _decode_text(source: Source, name: str) -> str:
    """UTF-8 if the bytes are valid UTF-8, else latin-1 (the 100K and 1M releases)."""
    data = source.read_bytes(name)
    if b"\x00" in data:
        raise DataError(f"{source.display(name)}: contains NUL bytes; expected a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_YEAR_IN_TITLE = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:[-–]\d{0,4})?\)\s*$")


def _title_and_year(raw_title: str) -> tuple[str, str]:
    """``'Toy Story (1995)'`` -> ``('Toy Story', '1995')``; no year -> ``(title, '')``."""
    title = clean_field(raw_title)
    match = _YEAR_IN_TITLE.match(title)
    if match and match.group("title"):
        return match.group("title"), match.group("year")
    return title, ""


def _check_id(value: str, display: str, line_no: int, what: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"\d+", value):
        raise DataError(f"{display}: line {line_no}: expected an integer {what}, got {value[:40]!r}")
    return str(int(value))


def read_items(source: Source, layout: Layout) -> list[list[str]]:
    """Rows of ``ITEM_HEADER`` from u.item / movies.dat / movies.csv."""
    name = layout.items
    display = source.display(name)
    text = _decode_text(source, name)
    rows = []
    if layout.kind == "csv":
        lines = text.splitlines(keepends=True)
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{display}: line 1: file is empty; expected the header 'movieId,title,genres'")
        if [h.strip() for h in header] != ["movieId", "title", "genres"]:
            raise DataError(f"{display}: line 1: expected the header 'movieId,title,genres', got {','.join(header)[:80]!r}")
        for record in reader:
            if not record:
                continue
            line_no = reader.line_num
            if len(record) != 3:
                raise DataError(f"{display}: line {line_no}: expected 3 fields (movieId,title,genres), found {len(record)}")
            title, year = _title_and_year(record[1])
            rows.append([_check_id(record[0], display, line_no, "movieId"), title, year, _genres(record[2])])
        return rows
    genre_names = _u_genre_names(source, layout) if layout.kind == "100k" else None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if layout.kind == "100k":
            fields = line.split("|")
            if len(fields) != 5 + len(genre_names):
                raise DataError(f"{display}: line {line_no}: expected {5 + len(genre_names)} fields separated by '|' "
                                f"(id, title, release date, video date, URL, {len(genre_names)} genre flags), found {len(fields)}")
            title, year = _title_and_year(fields[1])
            if not year:
                date_year = re.search(r"(\d{4})\s*$", fields[2])
                year = date_year.group(1) if date_year else ""
            genres = " ".join(g for g, flag in zip(genre_names, fields[5:]) if flag.strip() == "1")
            rows.append([_check_id(fields[0], display, line_no, "movie id"), title, year, genres])
        else:
            first, _, rest = line.partition("::")
            title_part, found_sep, genres = rest.rpartition("::")
            if not found_sep:
                raise DataError(f"{display}: line {line_no}: expected 'MovieID::Title::Genres', got {line[:80]!r}")
            title, year = _title_and_year(title_part)
            rows.append([_check_id(first, display, line_no, "movie id"), title, year, _genres(genres)])
    return rows


def _genres(pipe_separated: str) -> str:
    """``'Action|Sci-Fi'`` -> ``'Action Sci-Fi'`` (RecBole token_seq is space-separated)."""
    names = [clean_field(g).replace(" ", "_") for g in pipe_separated.split("|")]
    return " ".join(g for g in names if g and g != "(no_genres_listed)")


def _u_genre_names(source: Source, layout: Layout) -> list[str]:
    if not layout.genres:
        return ML100K_GENRES
    names = []
    for line in _decode_text(source, layout.genres).splitlines():
        if line.strip():
            names.append(clean_field(line.split("|")[0]).replace(" ", "_"))
    return names or ML100K_GENRES


def read_users(source: Source, layout: Layout) -> list[list[str]]:
    """Rows of ``USER_HEADER`` from u.user (``id|age|gender|occupation|zip``) or users.dat
    (``id::gender::age::occupation::zip``)."""
    display = source.display(layout.users)
    rows = []
    sep, expected = ("|", "id|age|gender|occupation|zip") if layout.kind == "100k" else (
        "::", "UserID::Gender::Age::Occupation::Zip-code")
    for line_no, line in enumerate(_decode_text(source, layout.users).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != 5:
            raise DataError(f"{display}: line {line_no}: expected 5 fields '{expected}', found {len(fields)} in {line[:80]!r}")
        if layout.kind == "100k":
            user, age, gender, occupation, zip_code = fields
        else:
            user, gender, age, occupation, zip_code = fields
        rows.append([_check_id(user, display, line_no, "user id")]
                    + [clean_field(v).replace(" ", "_") for v in (age, gender, occupation, zip_code)])
    return rows


# --------------------------------------------------------------------------- conversion
def _write_table(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write("\t".join(header) + "\n")
        for row in rows:
            out.write("\t".join(row) + "\n")


def _utc(seconds: int) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").isoformat()


def convert_movielens(
    src: str | os.PathLike,
    outdir: str | os.PathLike,
    name: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[str], None] | None = None,
    progress_every: int = DEFAULT_PROGRESS_EVERY,
    overwrite: bool = False,
) -> dict:
    """Convert the MovieLens release at ``src`` into ``outdir/NAME/`` and return its stats.

    An existing dataset of that name is refused unless ``overwrite`` (nothing is changed).

    ``progress`` (e.g. ``lambda m: print(m, file=sys.stderr)``) gets a line every
    ``progress_every`` ratings. Raises :class:`DataError` on any bad input, before anything
    in ``outdir`` changes.
    """
    if name is not None:
        check_dataset_name(name)
    source = open_release(src)
    try:
        with StagedOutput(outdir, overwrite=overwrite) as stage:
            stats = _convert_into(source, stage.path, name, chunk_rows, progress, progress_every)
            final_name = stats["name"]
            renames = {f"part{ext}": f"{final_name}{ext}" for ext in (".inter", ".item", ".user", ".stats.json")}
            written = stage.commit(Path(outdir) / final_name, renames)
        stats["files"] = [str(p) for p in written]
        return stats
    except DAMAGED as exc:
        what = "zip archive" if source.kind == "zip" else "compressed file"
        raise DataError(f"{source.path}: the {what} is damaged ({exc}); download it again") from exc
    finally:
        source.close()


def _convert_into(source, stage: Path, name, chunk_rows, progress, progress_every) -> dict:
    layout = detect_layout(source)
    rows = 0
    users = np.empty(0, dtype=np.int64)
    items = np.empty(0, dtype=np.int64)
    t_min, t_max = None, None
    next_report = progress_every
    with open(stage / "part.inter", "w", encoding="utf-8", newline="\n") as out:
        out.write("\t".join(INTER_HEADER) + "\n")
        for chunk in iter_ratings(source, layout, chunk_rows):
            # ints stay ints (never 1.6e9); ratings print as 4.0 / 3.5
            chunk.to_csv(out, sep="\t", header=False, index=False, lineterminator="\n")
            rows += len(chunk)
            users = np.union1d(users, chunk["user"].to_numpy())
            items = np.union1d(items, chunk["item"].to_numpy())
            lo, hi = int(chunk["timestamp"].min()), int(chunk["timestamp"].max())
            t_min = lo if t_min is None else min(t_min, lo)
            t_max = hi if t_max is None else max(t_max, hi)
            if progress and rows >= next_report:
                progress(f"convert: {rows:,} ratings read from {source.display(layout.ratings)}")
                next_report += progress_every
    if layout.items:
        _write_table(stage / "part.item", ITEM_HEADER, read_items(source, layout))
    if layout.users:
        _write_table(stage / "part.user", USER_HEADER, read_users(source, layout))
    stats = {
        "name": name or default_name(layout, source, rows),
        "source": str(source.path),
        "layout": layout.kind,
        "rows": rows,
        "users": int(len(users)),
        "items": int(len(items)),
        "time_range": {"min": t_min, "max": t_max, "min_utc": _utc(t_min), "max_utc": _utc(t_max)},
    }
    with open(stage / "part.stats.json", "w", encoding="utf-8") as out:
        json.dump(stats, out, indent=2)
        out.write("\n")
    return stats


__all__ = [
    "Source", "Layout", "detect_layout", "default_name", "iter_ratings", "read_items",
    "read_users", "convert_movielens", "INTER_HEADER", "ITEM_HEADER", "USER_HEADER",
]
