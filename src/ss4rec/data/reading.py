"""One reading of atomic files: the data checks and RecBole's loader read the same bytes the same way.

RecBole 1.2.1 reads ``NAME.inter`` / ``.item`` / ``.user`` with pandas' python parser, csv
quoting on and pandas' NA words: a MovieLens title that begins with ``"`` swallows the lines
after it, and a user id ``NA`` becomes a missing value. The fast checks
(:mod:`ss4rec.pipeline.preflight`) read tab-separated fields literally. Here both read
alike: :func:`recbole_reading` makes RecBole's loader read every field literally as well
(:data:`ATOMIC_READ`: no quoting, no NA words, UTF-8; an empty float is still missing), and
:func:`scan_atomic_file` refuses, before anything is loaded, what a literal reading cannot
take: a path that is no readable file, a 0-byte file, bytes that are not UTF-8, control
characters, duplicate header columns and lines with another number of fields than the
header, each with the file, line and column.

    >>> with recbole_reading():  # doctest: +SKIP
    ...     dataset = SequentialDataset(config)
"""

from __future__ import annotations

import contextlib
import csv
import errno
import importlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ss4rec.errors import DataError

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
ATOMIC_READ = {"quoting": csv.QUOTE_NONE, "keep_default_na": False}  # fields read literally
CHUNK_BYTES = 16 << 20
# Control characters other than tab, newline and carriage return (which ends a line).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def read_atomic_csv(path, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` of an atomic file with every field read literally
    (:data:`ATOMIC_READ`); an empty float field is still missing."""
    dtype = kwargs.get("dtype") or {}
    missing = {column: [""] for column, kind in dtype.items() if kind is np.float64}
    kwargs["encoding"] = kwargs.get("encoding") or "utf-8"
    return pd.read_csv(path, **kwargs, **ATOMIC_READ, na_values=missing)


class _PandasReadingAsChecked:
    """pandas, except that ``read_csv`` is :func:`read_atomic_csv`."""

    def __getattr__(self, name):
        return getattr(pd, name)

    read_csv = staticmethod(read_atomic_csv)


@contextlib.contextmanager
def recbole_reading():
    """RecBole's dataset loading, reading fields as the fast checks do (see the module docstring)."""
    module = importlib.import_module("recbole.data.dataset.dataset")
    saved = module.pd
    module.pd = _PandasReadingAsChecked()
    try:
        yield
    finally:
        module.pd = saved


def file_problem(path: Path) -> str | None:
    """Why ``path`` is no readable regular file (missing, a folder, a symlink loop ...), or None."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop: point it at the real file"
        if path.is_symlink():
            return f"{path} is a symbolic link to {os.readlink(path)!r}, which does not exist"
        if exc.errno == errno.EACCES:
            return f"{path} cannot be read (permission denied)"
        return f"{path} not found"
    if Path(path).is_dir():
        return f"{path} is a folder, not a file: the data goes in {path}/../{Path(path).name} as a tab-separated file"
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        return f"{path} is not a readable regular file"
    return None if info.st_size else f"{path} is empty (0 bytes): delete it or write its header and rows"


def check_header(path: Path, header: list[str]) -> None:
    """Every header field a ``name:type`` of RecBole's types, no name twice."""
    fix = f"expected tab-separated name:type columns ({', '.join(ATOMIC_TYPES)})"
    for n, field in enumerate(header, start=1):
        name, _, kind = field.partition(":")
        if not name or kind not in ATOMIC_TYPES:
            raise DataError(f"{path}: line 1, column {n}: header field {field!r}: {fix}")
    names = [h.partition(":")[0] for h in header]
    for n, name in enumerate(names, start=1):
        first = names.index(name) + 1
        if first != n:
            raise DataError(f"{path}: line 1, column {n}: header column {header[n - 1]!r} repeats column "
                            f"{first} ({header[first - 1]!r}): rename or drop one of them")


def scan_atomic_file(path) -> tuple[list[str], int]:
    """Check ``path`` in one streamed pass; return its header fields and its number of rows.

    Raises DataError naming the file, line and column of the first thing that RecBole's
    loader and the fast checks could read differently (see the module docstring).
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(problem)
    rows, line_no, header, tail = 0, 0, None, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK_BYTES)
            data = tail + chunk
            if not chunk:
                cut = len(data)  # the last line, with or without its newline
            else:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    tail = data
                    if len(tail) > 64 * CHUNK_BYTES:
                        raise DataError(f"{path}: line {line_no + 1}: over {len(tail) >> 20} MB without a "
                                        "line break: not a tab-separated atomic file")
                    continue
            piece, tail = data[:cut], data[cut:]
            if header is None and piece:
                first_end = piece.find(b"\n")
                first = piece[: first_end if first_end >= 0 else len(piece)]
                _check_bytes(path, first, 1)
                header = first.decode("utf-8").rstrip("\r").lstrip("\ufeff").split("\t")
                check_header(path, header)
                line_no = 1
                piece = piece[first_end + 1:] if first_end >= 0 else b""
            if piece:
                rows += _check_lines(path, piece, line_no + 1, len(header))
                line_no += piece.count(b"\n") + (0 if piece.endswith(b"\n") else 1)
            if not chunk:
                break
    return header, rows


def _position(path: Path, piece: bytes, offset: int, first_line: int) -> str:
    line = first_line + piece.count(b"\n", 0, offset)
    start = piece.rfind(b"\n", 0, offset) + 1
    column = piece.count(b"\t", start, offset) + 1
    return f"{path}: line {line}, column {column}"


def _check_bytes(path: Path, piece: bytes, first_line: int) -> None:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{_position(path, piece, exc.start, first_line)}: byte 0x{piece[exc.start]:02x} is not "
                        "UTF-8: convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    control = _CONTROL.search(piece)
    if control:
        raise DataError(f"{_position(path, piece, control.start(), first_line)}: control character "
                        f"0x{piece[control.start()]:02x} in a field: remove it (fields hold text, tabs "
                        "separate them, a newline ends a row)")


def _check_lines(path: Path, piece: bytes, first_line: int, n_fields: int) -> int:
    """Check whole lines ``piece`` (starting at line ``first_line``); return the non-blank rows."""
    _check_bytes(path, piece, first_line)
    arr = np.frombuffer(piece, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if len(piece) and piece[-1:] != b"\n":
        ends = np.append(ends, len(piece))
    starts = np.concatenate(([0], ends[:-1] + 1))
    tabs = np.flatnonzero(arr == 9)
    fields = np.searchsorted(tabs, ends) - np.searchsorted(tabs, starts) + 1
    lengths = ends - starts - (arr[np.maximum(ends - 1, 0)] == 13) * (ends > starts)
    blank = lengths <= 0
    wrong = np.flatnonzero(~blank & (fields != n_fields))
    if len(wrong):
        i = int(wrong[0])
        raise DataError(f"{path}: line {first_line + i}: {int(fields[i])} tab-separated fields, the header has "
                        f"{n_fields}: fix that line (a tab inside a value, or a missing value)")
    return int((~blank).sum())
