"""Download a dataset archive over http(s) into a cache, resumably and verifiably.

    >>> from ss4rec.data.download import fetch, is_url
    >>> is_url("https://files.grouplens.org/datasets/movielens/ml-1m.zip")
    True
    >>> path = fetch("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    ...              md5="c4d9eecfca2ab87c1945afe126590906")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'ml-1m.zip'
    >>> fetch("https://files.grouplens.org/datasets/movielens/ml-1m.zip")  # doctest: +SKIP
    ... # a second call returns the cached file without touching the network

Guarantees, in the order a user meets them:

* **Cache.** The file lands in ``CACHE/<url-hash>/<basename>``, where ``CACHE`` is the
  ``cache_dir`` argument, else ``$SS4REC_CACHE``, else ``~/.cache/ss4rec/downloads``, and
  ``<url-hash>`` is a short hash of the URL (so two URLs with the same basename never
  collide, and the basename itself -- which names the dataset -- is kept as is). A second
  ``fetch`` of the same URL returns the cached file; with a checksum, it is re-verified
  first and downloaded again if it no longer matches.
* **Atomic.** Bytes go to ``<basename>.part``; the final name appears only through an
  atomic rename once the transfer is complete and the checksum (if any) matches. The final
  name therefore never holds a half-written or unverified file.
* **Resume.** A transfer that breaks (connection reset, timeout, short body) raises
  :class:`~ss4rec.errors.DataError` and keeps the ``.part``; the next ``fetch`` asks for
  the rest with ``Range: bytes=N-``. A server that ignores ranges (answers 200) or whose
  file changed since (``If-Range`` with the saved ETag / Last-Modified fails) makes the
  download start over; a 416 for a ``.part`` that is already whole finishes it.
* **Errors.** HTTP statuses, unreachable hosts, checksum mismatches (expected and actual
  digests) and a full disk all raise :class:`~ss4rec.errors.DataError`. On a checksum
  mismatch or a full disk the ``.part`` is deleted too (it is wrong, or it is using the
  space that ran out), so nothing of the failed download stays in the cache.
* **Progress.** A throttled bar on stderr (percent, MB, MB/s): redrawn in place on a
  terminal, one line every few seconds in a log file. ``progress=False`` silences it.

Two processes fetching the same URL into the same cache at the same time are not
coordinated; give them different cache folders.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ss4rec.errors import DataError

__all__ = ["fetch", "is_url", "resolve", "default_cache_dir", "cache_path"]

_CHUNK_BYTES = 1 << 16
_USER_AGENT = "ss4rec-download/0.1 (+python urllib)"
_DIGEST_HEX_LENGTH = {"sha256": 64, "md5": 32}
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_url(source: object) -> bool:
    """True when ``source`` is an http(s) URL with a host (a local path is not).

    >>> is_url("https://files.grouplens.org/datasets/movielens/ml-100k.zip")
    True
    >>> is_url("data/ml-100k.zip"), is_url("ftp://example.org/x.zip")
    (False, False)
    """
    if not isinstance(source, str):
        return False
    parsed = urllib.parse.urlparse(source.strip())
    return parsed.scheme.lower() in ("http", "https") and bool(parsed.netloc)


def default_cache_dir() -> Path:
    """``$SS4REC_CACHE`` when set, else ``~/.cache/ss4rec/downloads``."""
    configured = os.environ.get("SS4REC_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "ss4rec" / "downloads"


def cache_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``fetch(url, cache_dir)`` keeps the finished file (it may not exist yet).

    >>> cache_path("https://example.org/a/ml-1m.zip", "/tmp/c").name
    'ml-1m.zip'
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    url_hash = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    basename = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
    # Keep the name readable but safe as a single path component on any filesystem.
    basename = re.sub(r"[^A-Za-z0-9._-]+", "_", basename).strip("._") or "download"
    return root / url_hash / basename


def resolve(source: str | os.PathLike, **fetch_kwargs) -> Path:
    """A URL is fetched (see :func:`fetch`); anything else is returned as a local path.

    >>> resolve("data/ml-100k.zip")
    PosixPath('data/ml-100k.zip')
    """
    if is_url(source):
        return fetch(str(source), **fetch_kwargs)
    return Path(source).expanduser()


def fetch(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` into the cache (or reuse it) and return the finished file's path.

    ``sha256`` / ``md5``: expected hex digests (either, both or neither); the file is
    refused (DataError naming both digests, nothing kept) when one does not match.
    ``timeout``: seconds a connect or a single read may stall before the attempt fails.

        >>> fetch("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        ...       cache_dir="/tmp/ss4rec-cache", progress=False)  # doctest: +SKIP
        PosixPath('/tmp/ss4rec-cache/3f1c.../ml-100k.zip')
    """
    if not is_url(url):
        raise DataError(f"not an http(s) URL: {url!r}; pass e.g. https://host/path/file.zip")
    expected = _expected_digests(sha256=sha256, md5=md5)
    final = cache_path(url, cache_dir)
    if final.exists():
        if not expected or not _mismatches(_hash_file(final, expected), expected):
            _say(progress, f"using cached {final}")
            return final
        # The cache was altered since it was verified (or verified against other digests):
        # throw it away and download again; a second mismatch is then reported.
        _say(progress, f"cached {final} does not match the given checksum; downloading again")
        final.unlink()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the download cache {final.parent}: {exc}; "
                        "set SS4REC_CACHE to a writable folder") from exc
    part = final.with_name(final.name + ".part")
    try:
        _download_to_part(url, part, progress=progress, timeout=timeout)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            _discard_partial(part)
            raise DataError(f"disk full while downloading {_display(url)} into "
                            f"{final.parent}: free some space or point SS4REC_CACHE "
                            "at a larger disk") from exc
        raise DataError(f"cannot write the download to {part}: {exc}; set SS4REC_CACHE "
                        "to a writable folder") from exc
    actual = _hash_file(part, expected or {"sha256": None})
    wrong = _mismatches(actual, expected)
    if wrong:
        _discard_partial(part)
        details = "; ".join(f"{name} expected {expected[name]}, got {actual[name]}"
                            for name in wrong)
        raise DataError(f"checksum mismatch for {_display(url)}: {details}. The download "
                        "was deleted; check the checksum (GroupLens lists them next to "
                        "each zip) or the URL")
    os.replace(part, final)
    _discard(_validator_path(part))
    if not expected:
        _say(progress, f"saved {final} (sha256 {actual['sha256']}; pass it as a "
                       "checksum to verify future downloads)")
    else:
        _say(progress, f"saved {final} (checksum verified)")
    return final


# --- transfer ---------------------------------------------------------------------------

def _download_to_part(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """Bring ``part`` to the full remote content, resuming what is already there."""
    have = part.stat().st_size if part.exists() else 0
    validator_file = _validator_path(part)
    validator = _read_text(validator_file) if have else None
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            # The server sends the whole (new) file instead of the range if it changed.
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and have:
                _finish_or_restart_after_416(url, part, have, exc, progress, timeout)
                return
            raise DataError(f"download failed: HTTP {exc.code} {exc.reason} for "
                            f"{_display(url)}; check the URL") from exc
    except OSError as exc:  # URLError (refused, DNS), timeouts
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot reach {_display(url)}: {reason}; check the address "
                        "and the network, then run again") from exc

    with response:
        status = response.status
        if status == 206 and have:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != have:
                raise DataError(f"server answered bytes {start}- to a request for bytes "
                                f"{have}- of {_display(url)}; delete {part} and retry")
            mode = "ab"
        elif status == 200:
            start, mode = 0, "wb"  # fresh download, or the server ignored the range
        else:
            raise DataError(f"download failed: unexpected HTTP {status} for {_display(url)}")
        remaining = _int_or_none(response.headers.get("Content-Length"))
        total = start + remaining if remaining is not None else None
        if remaining:
            _check_free_space(part, remaining, url)
        if start == 0:
            _save_validator(validator_file, response.headers)
        bar = _ProgressBar(part.name[: -len(".part")], total, start) if progress else None
        received = 0
        with open(part, mode) as out:
            while True:
                try:
                    chunk = response.read(_CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:  # reset, timeout
                    _raise_interrupted(url, part, start + received, total, exc)
                if not chunk:
                    break
                out.write(chunk)  # OSError here (disk full) is handled by fetch
                received += len(chunk)
                if bar:
                    bar.update(start + received)
        if bar:
            bar.close(start + received)
    # http.client returns a short body silently when the connection closes early.
    if remaining is not None and received < remaining:
        _raise_interrupted(url, part, start + received, total, None)


def _finish_or_restart_after_416(url, part, have, error, progress, timeout) -> None:
    """416: the range starts at or past the end. Whole already, or stale: start over."""
    total = _content_range_total(error.headers.get("Content-Range"))
    if total is not None and total == have:
        return
    _discard_partial(part)
    _download_to_part(url, part, progress=progress, timeout=timeout)


def _raise_interrupted(url, part, have, total, cause) -> None:
    of_total = f" of {total / 1e6:.1f} MB" if total else ""
    reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    raise DataError(f"download of {_display(url)} interrupted after {have / 1e6:.1f} MB"
                    f"{of_total}{reason}; run the same command again to resume "
                    f"(partial file kept at {part})") from cause


def _check_free_space(part: Path, needed: int, url: str) -> None:
    """Refuse early, rather than fill the disk, when the rest cannot fit."""
    folder = part.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        _discard_partial(part)
        raise DataError(f"disk full: {_display(url)} needs {needed / 1e6:.1f} MB but "
                        f"{folder} has {free / 1e6:.1f} MB free; free some space or "
                        "point SS4REC_CACHE at a larger disk")


# --- checksums --------------------------------------------------------------------------

def _expected_digests(**digests: str | None) -> dict[str, str]:
    expected = {}
    for name, value in digests.items():
        if value is None or value == "":
            continue
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]+", value) or len(value) != _DIGEST_HEX_LENGTH[name]:
            raise DataError(f"--{name} {value!r} is not a {name} digest: expected "
                            f"{_DIGEST_HEX_LENGTH[name]} hex characters")
        expected[name] = value
    return expected


def _hash_file(path: Path, names) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in names}
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            for hasher in hashers.values():
                hasher.update(block)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _mismatches(actual: dict[str, str], expected: dict[str, str]) -> list[str]:
    return [name for name, digest in expected.items() if actual[name] != digest]


# --- small helpers ----------------------------------------------------------------------

def _validator_path(part: Path) -> Path:
    """Sidecar holding the ETag / Last-Modified the ``.part`` was downloaded under."""
    return part.with_name(part.name + ".validator")


def _save_validator(path: Path, headers) -> None:
    etag = headers.get("ETag")
    validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
    if validator:
        path.write_text(validator)
    else:
        _discard(path)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _discard_partial(part: Path) -> None:
    _discard(part)
    _discard(_validator_path(part))


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


def _content_range_total(value: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _display(url: str) -> str:
    """The URL without credentials or query string (signed URLs carry secrets there)."""
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or ""
    if parsed.port:
        host = f"{host}:{parsed.port}"
    return urllib.parse.urlunparse((parsed.scheme, host, parsed.path, "", "", ""))


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


class _ProgressBar:
    """``ml-1m.zip  42.0%  2.5/5.9 MB  3.1 MB/s`` on stderr, redrawn at most every so often.

    On a terminal the line is redrawn in place (every 0.2 s); in a log file a new line is
    written every 5 s, so pod logs stay short.
    """

    def __init__(self, label: str, total: int | None, start: int) -> None:
        self.stream = sys.stderr
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval_s = 0.2 if self.interactive else 5.0
        self.label, self.total, self.start = label, total, start
        self.started_at = time.monotonic()
        self.last_drawn_at = float("-inf")
        self.drawn_width = 0

    def update(self, have: int) -> None:
        now = time.monotonic()
        if now - self.last_drawn_at >= self.interval_s:
            self.last_drawn_at = now
            self._draw(have, now, end="\r" if self.interactive else "\n")

    def close(self, have: int) -> None:
        self._draw(have, time.monotonic(), end="\n")

    def _draw(self, have: int, now: float, end: str) -> None:
        rate = (have - self.start) / max(now - self.started_at, 1e-6) / 1e6
        if self.total:
            amount = f"{100 * have / self.total:5.1f}%  {have / 1e6:.1f}/{self.total / 1e6:.1f} MB"
        else:
            amount = f"{have / 1e6:.1f} MB"
        line = f"{self.label}  {amount}  {rate:.1f} MB/s"
        if self.interactive:  # overwrite what is left of a longer previous line
            line, self.drawn_width = line.ljust(self.drawn_width), len(line)
        self.stream.write(line + end)
        self.stream.flush()
