"""A downloaded dataset as found on disk: one file (plain or gzip), a folder, or a zip.

Every converter reads its input through :class:`Source`, so they all accept the same
wrappings and report damaged ones the same way:

    >>> import tempfile, gzip, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ratings.csv.gz"
    >>> with gzip.open(path, "wt") as out:
    ...     _ = out.write("A1,B000000001,5.0,1380000000\\n")
    >>> source = Source(path)
    >>> source.names, source.head(source.names[0])[:12]
    (['ratings.csv.gz'], b'A1,B00000000')

* a **file** is one member, named by its basename; a gzip file (by its magic bytes, not its
  name) is read decompressed;
* a **folder** lists every file below it (``sub/dir/name``), hidden files and macOS
  ``__MACOSX`` debris left out;
* a **zip** (by content, or a ``.zip`` name) lists its members the same way; a member
  that is itself gzipped is read decompressed too.

A truncated or corrupted gzip stream or zip member raises :class:`DataError` naming the
file, when the damage is met (``read_errors`` turns the library's many exception types
into that one message).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from ss4rec.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# What the standard library raises for a damaged archive or compressed stream.
DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, gzip.BadGzipFile)


class Source:
    """A file, folder or zip, listed by member name and read as (decompressed) bytes."""

    def __init__(self, path: str | os.PathLike, expected: str = "a dataset file, folder or .zip"):
        self.path = Path(path).expanduser()
        self._zip: zipfile.ZipFile | None = None
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file or folder; expected {expected}")
        if self.path.is_dir():
            self.kind = "folder"
            self.names = sorted(
                p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                if p.is_file() and not _is_debris(p.relative_to(self.path).as_posix())
            )
        elif self.path.suffix.lower() == ".zip" or zipfile.is_zipfile(self.path):
            self.kind = "zip"
            try:
                self._zip = zipfile.ZipFile(self.path)
                self.names = sorted(n for n in self._zip.namelist()
                                    if not n.endswith("/") and not _is_debris(n))
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise DataError(f"{self.path}: not a readable zip archive ({exc}); expected "
                                f"{expected} (an intact .zip: download it again)") from exc
        else:
            self.kind = "file"
            self.names = [self.path.name]

    # ---- reading ----
    def open_raw(self, name: str) -> IO[bytes]:
        """The member's bytes as stored (still gzipped if it is)."""
        if self._zip is not None:
            return self._zip.open(name)
        if self.kind == "file":
            return open(self.path, "rb")
        return open(self.path / name, "rb")

    def open(self, name: str) -> IO[bytes]:
        """The member's bytes, decompressed if they are gzip."""
        raw = self.open_raw(name)
        try:
            magic = raw.read(2)
            raw.seek(0)
        except DAMAGED as exc:
            raw.close()
            raise self.damaged(name, exc) from exc
        if magic == GZIP_MAGIC:
            return _GzipReader(raw)
        return raw

    def head(self, name: str, size: int = 1 << 16) -> bytes:
        """Up to ``size`` decompressed bytes from the start of a member (for sniffing)."""
        with self.read_errors(name), contextlib.closing(self.open(name)) as handle:
            return handle.read(size)

    def read_bytes(self, name: str) -> bytes:
        with self.read_errors(name), contextlib.closing(self.open(name)) as handle:
            return handle.read()

    def lines(self, name: str, block_bytes: int = 64 << 20) -> Iterator[tuple[int, list[bytes]]]:
        """``(first line number, [line, ...])`` blocks of about ``block_bytes``, each line
        with its ``\\n`` (except perhaps the very last one); damage is a DataError."""
        line_no = 1
        with self.read_errors(name), contextlib.closing(self.open(name)) as handle:
            while True:
                block = handle.readlines(block_bytes)
                if not block:
                    break
                yield line_no, block
                line_no += len(block)

    def blocks(self, name: str, block_bytes: int = 64 << 20) -> Iterator[tuple[int, bytes]]:
        """``(first line number, bytes)`` blocks of about ``block_bytes``, cut after a ``\\n``
        (the last one may lack it); damage is a DataError."""
        line_no, rest = 1, b""
        with self.read_errors(name), contextlib.closing(self.open(name)) as handle:
            while True:
                chunk = handle.read(block_bytes)
                if not chunk:
                    if rest:
                        yield line_no, rest
                    return
                data = rest + chunk if rest else chunk
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no line end yet: read on
                    rest = data
                    continue
                block, rest = data[:cut], data[cut:]
                yield line_no, block
                line_no += block.count(b"\n")

    @contextlib.contextmanager
    def read_errors(self, name: str):
        """Turn a damaged gzip stream or zip member into a DataError naming it."""
        try:
            yield
        except DAMAGED as exc:
            raise self.damaged(name, exc) from exc
        except OSError as exc:  # unreadable: permissions, a vanished file, an I/O error
            raise DataError(f"{self.display(name)}: cannot read ({exc.strerror or exc})") from exc

    def damaged(self, name: str, exc: BaseException) -> DataError:
        what = "zip archive" if self._zip is not None else "compressed file"
        return DataError(f"{self.display(name)}: the {what} is truncated or damaged ({exc}); download it "
                         "again (a checksum, --sha256 or --md5, catches this at download time)")

    def display(self, name: str) -> str:
        """How messages name a member: ``folder/a/b.csv``, ``x.zip:a/b.csv`` or the file itself."""
        if self._zip is not None:
            return f"{self.path}:{name}"
        if self.kind == "file":
            return str(self.path)
        return str(self.path / name)

    def basename(self, name: str) -> str:
        return PurePosixPath(name).name

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _GzipReader(gzip.GzipFile):
    """A gzip stream that also closes the file it reads from."""

    def __init__(self, raw: IO[bytes]):
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def _is_debris(name: str) -> bool:
    """Files no dataset consists of: macOS resource forks and Finder files, hidden files."""
    parts = PurePosixPath(name).parts
    return "__MACOSX" in parts or any(p.startswith(".") for p in parts)


def data_name(filename: str) -> str:
    """A file name without its compression and data extensions: ``a_5.json.gz`` -> ``a_5``."""
    stem = PurePosixPath(filename).name
    for ext in (".gz", ".zip", ".jsonl", ".json", ".csv", ".inter"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    return stem


__all__ = ["Source", "DAMAGED", "GZIP_MAGIC", "data_name"]
