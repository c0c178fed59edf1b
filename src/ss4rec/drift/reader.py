"""Chunked reading of RecBole ``.inter`` files with compact dtypes, for drift statistics.

    >>> vocab = {"user": TokenVocab(), "item": TokenVocab()}
    >>> inter = InterColumns("past/ml-100k-past.inter")  # doctest: +SKIP
    >>> for chunk in inter.chunks(vocab):  # doctest: +SKIP
    ...     chunk.users, chunk.items, chunk.times, chunk.ratings  # int32, int32, float64, float32

Ids are tokens (strings); each distinct token gets a dense int32 code from a
:class:`TokenVocab` shared by the past and the future file. The past is read first, so a
code ``>= n_past`` marks a user or item never seen in the past. Only the distinct tokens
are kept in memory, never the rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ss4rec.data.atomic import read_atomic_header
from ss4rec.errors import DataError

CHUNK_ROWS = 1_000_000


class TokenVocab:
    """Token -> dense int32 code, in order of first appearance.

        >>> vocab = TokenVocab()
        >>> vocab.encode(np.array(["b", "a", "b"], dtype=object))
        array([0, 1, 0], dtype=int32)
        >>> len(vocab)
        2
    """

    def __init__(self):
        self.index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.index)

    def encode(self, tokens) -> np.ndarray:
        # factorize first: the Python-level dict work is per distinct token, not per row
        local_codes, uniques = pd.factorize(np.asarray(tokens, dtype=object))
        index = self.index
        mapped = np.fromiter((index.setdefault(t, len(index)) for t in uniques),
                             dtype=np.int32, count=len(uniques))
        return mapped[local_codes]

    def tokens(self) -> list[str]:
        return list(self.index)


@dataclass
class Chunk:
    users: np.ndarray  # [N] int32 codes
    items: np.ndarray  # [N] int32 codes
    times: np.ndarray  # [N] float64 epoch seconds
    ratings: np.ndarray | None  # [N] float32, None if the file has no rating field


class InterColumns:
    """Positions of user, item, rating (optional) and timestamp in a ``.inter`` file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file; expected a RecBole .inter file "
                            "(e.g. SPLITS/NAME-past/NAME-past.inter from `ss4rec split`)")
        header = read_atomic_header(self.path)
        names = [field.split(":", 1)[0] for field in header]
        self.width = len(header)

        def position(name: str, required: bool = True) -> int | None:
            if name in names:
                return names.index(name)
            if required:
                raise DataError(f"{self.path}: line 1: no '{name}' field in the header "
                                f"{' '.join(header)}; expected user_id:token, item_id:token, "
                                "timestamp:float (rating:float optional)")
            return None

        self.user_col = position("user_id")
        self.item_col = position("item_id")
        self.time_col = position("timestamp")
        self.rating_col = position("rating", required=False)

    def chunks(self, vocab: dict, with_ratings: bool = True, chunk_rows: int = CHUNK_ROWS):
        """Yield :class:`Chunk` s; ``vocab`` is ``{"user": TokenVocab, "item": TokenVocab}``."""
        columns = {self.user_col: "user", self.item_col: "item", self.time_col: "time"}
        if with_ratings and self.rating_col is not None:
            columns[self.rating_col] = "rating"
        dtypes = {"user": str, "item": str, "time": np.float64, "rating": np.float32}
        first_line = 2
        try:
            reader = pd.read_csv(
                self.path, sep="\t", header=None, skiprows=1, quoting=3, engine="c",
                names=list(range(self.width)), usecols=list(columns),
                dtype={pos: dtypes[name] for pos, name in columns.items()},
                keep_default_na=False, na_values={self.time_col: [""]}, chunksize=chunk_rows,
            )
            for frame in reader:
                times = frame[self.time_col].to_numpy(np.float64)
                if not np.isfinite(times).all():
                    bad = first_line + int(np.flatnonzero(~np.isfinite(times))[0])
                    raise DataError(f"{self.path}: line {bad}: missing or non-finite timestamp")
                ratings = None
                if "rating" in columns.values():
                    ratings = frame[self.rating_col].to_numpy(np.float32)
                yield Chunk(users=vocab["user"].encode(frame[self.user_col].to_numpy()),
                            items=vocab["item"].encode(frame[self.item_col].to_numpy()),
                            times=times, ratings=ratings)
                first_line += len(frame)
        except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{self.path}: cannot be parsed near line {first_line} or after "
                            f"({exc}); expected tab-separated user_id, item_id, [rating,] "
                            "timestamp fields as in its header") from None
        except pd.errors.EmptyDataError:
            return

    def time_range(self, chunk_rows: int = CHUNK_ROWS) -> tuple[float, float]:
        """(min, max) timestamp, reading only the timestamp column."""
        lo, hi = np.inf, -np.inf
        try:
            for frame in pd.read_csv(self.path, sep="\t", header=None, skiprows=1, quoting=3,
                                     names=list(range(self.width)), usecols=[self.time_col],
                                     dtype={self.time_col: np.float64}, chunksize=chunk_rows):
                values = frame[self.time_col].to_numpy()
                lo, hi = min(lo, float(np.nanmin(values))), max(hi, float(np.nanmax(values)))
        except pd.errors.EmptyDataError:
            pass
        except (pd.errors.ParserError, ValueError) as exc:
            raise DataError(f"{self.path}: cannot read its timestamps ({exc})") from None
        if not np.isfinite(lo):
            raise DataError(f"{self.path}: no interactions after the header")
        return lo, hi
