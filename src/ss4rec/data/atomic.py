"""All-or-nothing output folders and small helpers for RecBole atomic files.

Converters and splitters stream their output into a hidden staging folder inside the
destination's parent; only when every file of the dataset has been written and validated
are the files moved into place, one ``os.replace`` each. A failure (bad input, full disk,
Ctrl-C) removes the staging folder, so the destination keeps whatever good output it had.

    >>> from pathlib import Path
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with StagedOutput(root) as stage:
    ...     _ = (stage.path / "ratings.part").write_text("user_id:token\\n1\\n")
    ...     stage.commit(root / "demo", {"ratings.part": "demo.inter"})
    >>> sorted(p.name for p in (root / "demo").iterdir())
    ['demo.inter']
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ss4rec.errors import DataError

# The field types of RecBole's atomic files (``name:type`` headers).
ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
# Epoch seconds reach 1e11 in the year 5138; epoch milliseconds passed it in 1973.
MILLISECONDS_ABOVE = 1e11

# Characters that would break a tab-separated, one-record-per-line atomic file.
_FIELD_BREAKERS = str.maketrans({"\t": " ", "\n": " ", "\r": " ", "\x00": " "})


def clean_field(text: str) -> str:
    """A value made safe for one field of an atomic file: no tabs, newlines or NULs.

    >>> clean_field("Les Mis\\u00e9rables\\t(1995)\\n")
    'Les Misérables (1995)'
    """
    return " ".join(text.translate(_FIELD_BREAKERS).split())


def check_dataset_name(name: str) -> str:
    """``name`` if it is a plain dataset name (it becomes a folder and file names), else DataError.

    >>> check_dataset_name("ml-1m")
    'ml-1m'
    """
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.strip() != name:
        raise DataError(f"--name {name!r}: expected a plain dataset name such as 'ml-1m' (no slashes)")
    return name


class StagedOutput:
    """A hidden staging folder under ``parent``; :meth:`commit` moves its files into place.

    Leaving the ``with`` block without a commit (an exception, or simply no call) deletes
    the staging folder and any folders this object created, so nothing new is left behind
    and existing files are untouched.
    """

    def __init__(self, parent: str | os.PathLike, overwrite: bool = True):
        self.parent = Path(parent)
        self.overwrite = overwrite  # False: commit refuses to replace a file that exists
        self.path: Path | None = None
        self._created: list[Path] = []  # deepest first
        self._committed = False

    def __enter__(self) -> "StagedOutput":
        self._created = _missing_dirs(self.parent)
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{self.parent}: cannot create the output folder ({exc.strerror})") from exc
        self.path = Path(tempfile.mkdtemp(prefix=".ss4rec-partial-", dir=self.parent))
        return self

    def commit(self, final_dir: str | os.PathLike, renames: dict[str, str] | None = None) -> list[Path]:
        """Move every staged file into ``final_dir`` (renamed per ``renames``); return the paths."""
        final_dir = Path(final_dir)
        renames = renames or {}
        targets = [final_dir / renames.get(f.name, f.name) for f in sorted(self.path.iterdir())]
        existing = [t for t in targets if t.exists() or t.is_symlink()]
        if existing and not self.overwrite:
            raise DataError(refusal_to_replace(final_dir, [t.name for t in existing]))
        if not final_dir.exists():
            final_dir.mkdir(parents=True)
            self._created.insert(0, final_dir)
        written = []
        for staged_file in sorted(self.path.iterdir()):
            target = final_dir / renames.get(staged_file.name, staged_file.name)
            os.replace(staged_file, target)
            written.append(target)
        self._committed = True
        return written

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if exc_type is not None or not self._committed:
            for folder in self._created:  # only removed while still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()


def refusal_to_replace(folder: Path, names: list[str]) -> str:
    """The message for a dataset folder whose files a new conversion would replace."""
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (f"{folder} already holds {shown}; nothing was changed. Use another --name or output "
            "folder, or --overwrite to replace that dataset")


def existing_dataset_files(folder: str | os.PathLike, name: str) -> list[str]:
    """The atomic files of dataset ``name`` already in ``folder`` (NAME.inter, NAME.item, ...)."""
    folder = Path(folder)
    return sorted(p.name for p in folder.glob(f"{name}.*")) if folder.is_dir() else []


def _missing_dirs(path: Path) -> list[Path]:
    """Folders on ``path`` that do not exist yet, deepest first."""
    missing = []
    path = path.absolute()
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    return missing


def read_atomic_header(path: str | os.PathLike) -> list[str]:
    """The ``name:type`` fields of an atomic file's first line.

    Raises :class:`DataError` naming the file when it is empty, binary or has no typed header.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
    if not first.strip():
        raise DataError(f"{path}: line 1: file is empty; expected a header such as "
                        "'user_id:token<TAB>item_id:token<TAB>timestamp:float'")
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: line 1: not a text file (undecodable bytes); expected a "
                        "tab-separated RecBole atomic file") from None
    fields = text.rstrip("\r\n").split("\t")
    bad = [f for f in fields if ":" not in f or not f.split(":", 1)[0]]
    if bad or "\x00" in text:
        raise DataError(f"{path}: line 1: expected 'name:type' header fields separated by "
                        f"tabs, got {text.rstrip()[:120]!r}")
    return fields
