"""RecBole atomic files as RecBole distributes them: checked, then passed through unchanged.

    >>> from ss4rec.data.recbole_atomic import convert_atomic
    >>> stats = convert_atomic("~/Downloads/Amazon_Sports_and_Outdoors.zip", "data",
    ...                        name="amazon-sports")  # doctest: +SKIP

SRC is a ``.inter`` file (plain or gzip), a folder, or a zip such as RecBole's dataset zips
(https://github.com/RUCAIBox/RecSysDatasets: ``Amazon_Sports_and_Outdoors.zip`` holds
``Amazon_Sports_and_Outdoors.inter``). The ``.item`` and ``.user`` files next to the
``.inter`` file (same name) come along. Every file is copied byte for byte to
``OUTDIR/NAME/NAME.{inter,item,user}`` (RecBole's own download renames them the same way),
after these checks, any of which fails with the line and the fix:

* a ``name:type`` header (types ``token``, ``token_seq``, ``float``, ``float_seq``), with
  ``user_id:token``, ``item_id:token`` and ``timestamp:float`` in the ``.inter`` file (the
  names this package's configs read; SS4Rec needs the time);
* every line with as many tab-separated fields as the header;
* ids not blank, timestamps finite, non-negative and present, other float fields numbers.

Nothing is changed: duplicates are counted (``exact_duplicates_kept`` in
``NAME.stats.json``), not dropped, and timestamps that look like milliseconds are reported
(train with ``--set time_unit=1000``), not divided.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from ss4rec.data.atomic import ATOMIC_TYPES, MILLISECONDS_ABOVE, StagedOutput, check_dataset_name
from ss4rec.data.delimited import DEFAULT_BLOCK_BYTES, Column, read_delimited
from ss4rec.data.interactions import concat_chunks, line_progress, utc
from ss4rec.data.sources import Source, data_name
from ss4rec.errors import DataError

REQUIRED_INTER = {"user_id": "token", "item_id": "token", "timestamp": "float"}
SIDE_FILES = (".item", ".user")
EXPECTED = "RecBole atomic files (a .inter file, or a folder or zip holding NAME.inter)"


def inter_members(source: Source) -> list[str]:
    """The ``.inter`` files of a source (``x.inter`` or ``x.inter.gz``)."""
    return [n for n in source.names if _suffix(n) == ".inter"]


def _suffix(member: str) -> str:
    name = PurePosixPath(member).name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return PurePosixPath(name).suffix


def is_atomic_header(first_line: str) -> bool:
    """True when every tab-separated field is ``name:type`` with a RecBole type."""
    fields = first_line.rstrip("\r\n").split("\t")
    return all(":" in f and f.split(":", 1)[0] and f.split(":", 1)[1] in ATOMIC_TYPES for f in fields)


def convert_atomic(
    src: str | os.PathLike,
    outdir: str | os.PathLike,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    overwrite: bool = False,
) -> dict:
    """Check the atomic files at ``src`` and copy them to ``outdir/NAME/``; return the stats."""
    with Source(src, expected=EXPECTED) as source:
        members = inter_members(source)
        if not members:
            if source.kind == "file" and is_atomic_header(_first_line(source, source.names[0])):
                members = source.names  # an .inter file under another name
            else:
                shown = ", ".join(source.names[:8]) or "nothing"
                raise DataError(f"{source.path}: no .inter file found (found {shown}); expected {EXPECTED}")
        if len(members) > 1:
            raise DataError(f"{source.path}: holds several .inter files ({', '.join(members[:6])}); "
                            "pass the one dataset's file or folder")
        inter = members[0]
        stem = data_name(inter)
        name = check_dataset_name(name or stem)
        folder = str(PurePosixPath(inter).parent)
        siblings = {}
        for ext in SIDE_FILES:
            for candidate in (f"{stem}{ext}", f"{stem}{ext}.gz"):
                path = candidate if folder == "." else f"{folder}/{candidate}"
                if path in source.names:
                    siblings[ext] = path
        stats = _check_inter(source, inter, block_bytes, progress)
        for member in siblings.values():
            _check_side_file(source, member, block_bytes)
        stats = {"name": name, "source": source.display(inter), "format": "recbole atomic files (passed through)",
                 **stats}
        with StagedOutput(outdir, overwrite=overwrite) as stage:
            for ext, member in [(".inter", inter), *siblings.items()]:
                with source.read_errors(member), contextlib.closing(source.open(member)) as handle, \
                        open(stage.path / f"part{ext}", "wb") as out:
                    shutil.copyfileobj(handle, out, 1 << 20)
            with open(stage.path / "part.stats.json", "w", encoding="utf-8") as out:
                json.dump(stats, out, indent=2)
                out.write("\n")
            renames = {f"part{ext}": f"{name}{ext}" for ext in (".inter", *SIDE_FILES, ".stats.json")}
            written = stage.commit(Path(outdir) / name, renames)
        stats["files"] = [str(p) for p in written]
        return stats


def _first_line(source: Source, member: str) -> str:
    lines = source.head(member, 1 << 16).decode("utf-8", errors="replace").splitlines()
    return lines[0].lstrip("\ufeff") if lines else ""


def _header(source: Source, member: str) -> list[tuple[str, str]]:
    display = source.display(member)
    first = _first_line(source, member)
    if not first.strip():
        raise DataError(f"{display}: line 1: file is empty; expected a header such as "
                        "'user_id:token<TAB>item_id:token<TAB>timestamp:float'")
    if not is_atomic_header(first):
        raise DataError(f"{display}: line 1: expected tab-separated 'name:type' fields with types "
                        f"{', '.join(ATOMIC_TYPES)}, got {first[:120]!r}")
    return [tuple(f.split(":", 1)) for f in first.rstrip("\r\n").split("\t")]


def _check_inter(source: Source, member: str, block_bytes: int, progress) -> dict:
    display = source.display(member)
    header = _header(source, member)
    types = dict(header)
    missing = [f"{field}:{kind}" for field, kind in REQUIRED_INTER.items() if types.get(field) != kind]
    if missing:
        raise DataError(f"{display}: line 1: the header lacks {', '.join(missing)} (it has "
                        f"{', '.join(f'{f}:{t}' for f, t in header)}); rename the columns to these "
                        "(SS4Rec needs user, item and time)")
    columns = []
    for field, kind in header:
        if field == "user_id":
            columns.append(Column("user", "id", "user id"))
        elif field == "item_id":
            columns.append(Column("item", "id", "item id"))
        elif field == "timestamp":
            columns.append(Column("timestamp", "number", "timestamp"))
        elif kind == "float":
            columns.append(Column(None, "float", field))
        else:
            columns.append(Column(None, "text", field))
    chunks = list(read_delimited(source, member, columns, "\t", skip_header=True, block_bytes=block_bytes,
                                 progress=line_progress(progress, display)))
    frame = concat_chunks(chunks)
    if frame.empty:
        raise DataError(f"{display}: a header but no rows; expected one interaction per line")
    times = frame["timestamp"].to_numpy(dtype=np.float64)
    stats = {
        "rows": int(len(frame)),
        "users": int(frame["user"].nunique()),
        "items": int(frame["item"].nunique()),
        "exact_duplicates_kept": int(frame.duplicated(["user", "item", "timestamp"]).sum()),
        "time_range": {"min": float(times.min()), "max": float(times.max()),
                       "min_utc": None, "max_utc": None},
    }
    if float(np.median(times)) > MILLISECONDS_ABOVE:
        stats["timestamps_look_like"] = "milliseconds (train with --set time_unit=1000)"
    else:
        stats["time_range"].update(min_utc=utc(times.min()), max_utc=utc(times.max()))
    return stats


def _check_side_file(source: Source, member: str, block_bytes: int) -> None:
    header = _header(source, member)
    columns = [Column("id", "id", field) if i == 0 else
               Column(None, "float" if kind == "float" else "text", field)
               for i, (field, kind) in enumerate(header)]
    for _ in read_delimited(source, member, columns, "\t", skip_header=True, block_bytes=block_bytes):
        pass


__all__ = ["convert_atomic", "inter_members", "is_atomic_header", "EXPECTED"]
