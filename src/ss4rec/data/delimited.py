"""Fast, exact reading of delimited text (CSV, tab-separated): blocks of lines parsed by
pandas' C parser, every problem reported with its line number.

pandas fills a short row with NaN without a word, so a file cut in the middle of a line
would lose its last fields silently. Here every block is first checked by counting
separators (``block.count(b",") == fields - 1`` per line, in C), then parsed with the
columns' dtypes; when either check fails, the block is read again line by line to name
the first bad line:

    >>> import tempfile, pathlib
    >>> from ss4rec.data.sources import Source
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
    >>> _ = path.write_text("A1,B0001,5.0,100\\nA2,B0002,4.0\\n")
    >>> columns = [Column("user", "id", "user id"), Column("item", "id", "item id"),
    ...            Column("rating", "number", "rating"), Column("timestamp", "number", "timestamp")]
    >>> list(read_delimited(Source(path), "r.csv", columns, ","))
    Traceback (most recent call last):
    ...
    ss4rec.errors.DataError: .../r.csv: line 2: expected 4 fields (user id, item id, rating, timestamp) separated by commas, found 3 in 'A2,B0002,4.0'
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ss4rec.data.sources import Source
from ss4rec.errors import DataError

SEPARATOR_NAMES = {",": "commas", "\t": "tabs"}
DEFAULT_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Column:
    """One field of each line: its name in the frame (None: read and ignored), its kind, and
    how messages call it.

    kinds: ``id`` (a non-empty token, kept as a category), ``int`` (a non-negative integer),
    ``number`` (a finite non-negative number), ``float`` (any finite number or blank),
    ``text`` (anything).
    ``blank_ok``: an empty ``number`` is NaN instead of an error.
    """

    name: str | None
    kind: str
    what: str
    blank_ok: bool = False


_DTYPES = {"id": "category", "int": np.int64, "number": np.float64, "float": np.float64, "text": str}


def read_delimited(
    source: Source,
    member: str,
    columns: list[Column],
    sep: str,
    skip_header: bool = False,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress: Callable[[int], None] | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield one validated frame per block (the named columns only).

    ``progress`` is called with the number of lines read so far after each block.
    """
    display = source.display(member)
    names = [f"_c{i}" if c.name is None else c.name for i, c in enumerate(columns)]
    # Once every line has its separators, the unchecked text columns need no parsing.
    parsed = [i for i, c in enumerate(columns) if c.name is not None or c.kind != "text"]
    dtypes = {names[i]: _DTYPES[columns[i].kind] for i in parsed}
    na_values = {names[i]: [""] for i in parsed if columns[i].kind in ("number", "float")}
    wanted = [c.name for c in columns if c.name is not None]
    separators_per_line = len(columns) - 1
    sep_bytes = sep.encode()
    for first_line, block in source.blocks(member, block_bytes):
        if skip_header and first_line == 1:
            cut = block.find(b"\n") + 1 or len(block)
            block, first_line = block[cut:], 2
        if not block.strip():
            continue
        lines = block.count(b"\n") + (not block.endswith(b"\n"))
        if block.count(sep_bytes) != separators_per_line * lines:
            # a bad line, or only blank lines (pandas skips those): find out which
            _raise_first_bad_line(display, first_line, block, columns, sep, None)
        try:
            frame = pd.read_csv(io.BytesIO(block), sep=sep, header=None, names=names, usecols=[names[i] for i in parsed],
                                dtype=dtypes, keep_default_na=False, na_values=na_values, quoting=csv.QUOTE_NONE,
                                engine="c", index_col=False,
                                float_precision="round_trip")  # exact: "0.1" reads as float("0.1")
            _check_values(frame, [(names[i], columns[i]) for i in parsed])
        except (ValueError, OverflowError, pd.errors.ParserError) as exc:
            _raise_first_bad_line(display, first_line, block, columns, sep, exc)
        if progress:
            progress(first_line - 1 + lines)
        yield frame[wanted]


def _check_values(frame: pd.DataFrame, columns: list[tuple[str, Column]]) -> None:
    """ValueError for anything the C parser let through that a line check refuses."""
    for name, column in columns:
        values = frame[name]
        if column.kind == "id":
            if (values.cat.categories.astype(str).str.strip() == "").any():
                raise ValueError(f"blank {column.what}")
        elif column.kind == "int":
            if (values.to_numpy() < 0).any():
                raise ValueError(f"negative {column.what}")
        elif column.kind == "number":
            numbers = values.to_numpy(dtype=np.float64)
            finite = np.isfinite(numbers)
            if not column.blank_ok and not finite.all():
                raise ValueError(f"blank or non-finite {column.what}")
            if np.isinf(numbers).any() or (numbers[finite] < 0).any():
                raise ValueError(f"non-finite or negative {column.what}")
        elif column.kind == "float":
            if np.isinf(values.to_numpy(dtype=np.float64)).any():
                raise ValueError(f"infinite {column.what}")


def _raise_first_bad_line(display, first_line, block: bytes, columns, sep, cause) -> None:
    """Check the block line by line and raise a DataError for its first bad line.

    Returns when every line is fine and ``cause`` is None (the separator count was off only
    because of blank lines)."""
    line_no = first_line - 1
    for raw in block.split(b"\n"):
        line_no += 1
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        problem = line_problem(text, columns, sep)
        if problem:
            raise DataError(f"{display}: line {line_no}: {problem}")
    if cause is None:
        return
    raise DataError(f"{display}: lines {first_line}-{line_no - 1} could not be parsed ({cause}); expected "
                    f"{_field_list(columns)} separated by {SEPARATOR_NAMES.get(sep, repr(sep))}")


def _field_list(columns: list[Column]) -> str:
    return f"{len(columns)} fields ({', '.join(c.what for c in columns)})"


def line_problem(line: str, columns: list[Column], sep: str) -> str | None:
    """What is wrong with one line, or None (blank lines are fine: they are skipped)."""
    if not line.strip():
        return None
    shown = line if len(line) <= 80 else line[:77] + "..."
    fields = line.split(sep)
    if len(fields) != len(columns):
        return (f"expected {_field_list(columns)} separated by {SEPARATOR_NAMES.get(sep, repr(sep))}, "
                f"found {len(fields)} in {shown!r}")
    for value, column in zip(fields, columns):
        problem = value_problem(value, column)
        if problem:
            return problem
    return None


def value_problem(value: str, column: Column) -> str | None:
    """What is wrong with one field's text for its column, or None."""
    stripped = value.strip()
    if column.kind == "text":
        return None
    if stripped == "":
        if column.kind == "float" or (column.kind == "number" and column.blank_ok):
            return None
        return f"the {column.what} is blank"
    if column.kind == "int":
        if not re.fullmatch(r"\d+", stripped) or int(stripped) >= 2**63:
            return f"expected a non-negative integer {column.what}, got {stripped[:40]!r}"
    elif column.kind == "number":
        try:
            number = float(stripped)
        except ValueError:
            return f"expected a number for the {column.what}, got {stripped[:40]!r}"
        if not math.isfinite(number) or number < 0:
            return f"expected a finite, non-negative {column.what}, got {stripped[:40]!r}"
    elif column.kind == "float":
        try:
            number = float(stripped)
        except ValueError:
            return f"expected a number for the {column.what}, got {stripped[:40]!r}"
        if math.isinf(number):
            return f"expected a finite {column.what}, got {stripped[:40]!r}"
    return None


__all__ = ["Column", "read_delimited", "line_problem", "value_problem", "DEFAULT_BLOCK_BYTES"]
