"""Which converter a downloaded dataset needs, read from its files and their content.

    >>> from ss4rec.data.formats import CONVERTERS, detect_format
    >>> kind = detect_format("~/Downloads/KuaiRec.zip")  # doctest: +SKIP
    >>> kind, CONVERTERS[kind].__name__  # doctest: +SKIP
    ('kuairec', 'convert_kuairec')

The rules, first match wins:

1. a MovieLens ratings file (``u.data``, ``ratings.dat``, ``ratings.csv``) -> ``movielens``;
2. KuaiRec's ``big_matrix.csv`` / ``small_matrix.csv`` -> ``kuairec``;
3. a ``.inter`` file -> ``recbole`` (checked and passed through);
4. otherwise the one file of the source (a folder or zip must hold exactly one), by its
   first lines: a JSON object -> ``amazon``; ``name:type`` tab-separated header ->
   ``recbole``; a KuaiRec header -> ``kuairec``; an Amazon CSV (2023 header, or four
   headerless fields with ASINs in one id column) -> ``amazon``.

Anything else is a :class:`DataError` listing what was found and what is understood.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from ss4rec.data.amazon import convert_amazon, csv_kind
from ss4rec.data.kuairec import MATRICES, convert_kuairec, is_kuairec_header
from ss4rec.data.movielens import convert_movielens
from ss4rec.data.recbole_atomic import convert_atomic, inter_members, is_atomic_header
from ss4rec.data.sources import Source
from ss4rec.errors import DataError

CONVERTERS = {
    "movielens": convert_movielens,
    "kuairec": convert_kuairec,
    "amazon": convert_amazon,
    "recbole": convert_atomic,
}
MOVIELENS_RATINGS = ("u.data", "ratings.dat", "ratings.csv")
UNDERSTOOD = ("a MovieLens release (u.data, ratings.dat or ratings.csv), KuaiRec 2.0 (big_matrix.csv / "
              "small_matrix.csv), Amazon reviews (JSON lines, ratings-only or 2023 CSV) or RecBole atomic "
              "files (.inter)")


def detect_format(src: str | os.PathLike) -> str:
    """The key of :data:`CONVERTERS` for the dataset at ``src`` (file, folder or zip)."""
    with Source(src, expected=UNDERSTOOD) as source:
        basenames = {PurePosixPath(n).name for n in source.names}
        if basenames & set(MOVIELENS_RATINGS):
            return "movielens"
        if basenames & set(MATRICES):
            return "kuairec"
        if inter_members(source):
            return "recbole"
        if len(source.names) != 1:
            shown = ", ".join(source.names[:8]) or "nothing"
            raise DataError(f"{source.path}: found no MovieLens ratings file, KuaiRec matrix or .inter file, "
                            f"and not a single data file to read (found {shown}); expected {UNDERSTOOD}")
        member = source.names[0]
        lines = source.head(member, 1 << 18).decode("utf-8", errors="replace").splitlines()
        first = next((line for line in lines if line.strip()), "").lstrip("\ufeff")
        if not first:
            raise DataError(f"{source.display(member)}: line 1: file is empty; expected {UNDERSTOOD}")
        if first.lstrip().startswith("{"):
            return "amazon"
        if is_atomic_header(first):
            return "recbole"
        if is_kuairec_header(first):
            return "kuairec"
        if csv_kind(first, lines[:2000]):
            return "amazon"
        raise DataError(f"{source.display(member)}: line 1: not a format ss4rec converts ({first[:100]!r}); "
                        f"expected {UNDERSTOOD}")


__all__ = ["CONVERTERS", "detect_format", "UNDERSTOOD"]
