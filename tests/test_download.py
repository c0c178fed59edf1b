"""ss4rec.data.download against a real HTTP server on 127.0.0.1 run by the test.

The server serves one deterministic payload, honours ``Range`` / ``If-Range`` like a
static file server, and can be told to cut a response short, ignore ranges or fail
with a status. It handles a bounded number of requests and stops by itself.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import random
import re
import shutil
import socket
from pathlib import Path

import pytest
from localserver import local_http_server

from ss4rec.data.download import cache_path, fetch, is_url, resolve
from ss4rec.errors import DataError

PAYLOAD = random.Random(0).randbytes(300_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _FileHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.seen.append({"path": self.path, "range": self.headers.get("Range"),
                            "if_range": self.headers.get("If-Range")})
        if server.fail_status:
            self.send_error(server.fail_status)
            return
        start, status = 0, 200
        requested = self.headers.get("Range")
        if requested and not server.ignore_range:
            wanted = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if_range = self.headers.get("If-Range")
            if if_range is None or if_range == server.etag:  # else: changed, send it all
                if wanted >= len(server.payload):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(server.payload)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, status = wanted, 206
        body = server.payload[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", server.etag)
        if status == 206:
            self.send_header("Content-Range",
                             f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
        self.end_headers()
        if server.cut_after is not None:  # promise the whole body, send part, hang up
            body, server.cut_after = body[: server.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server():
    """A file server on 127.0.0.1; ``server.url(name)`` addresses its one payload."""
    with local_http_server(_FileHandler, payload=PAYLOAD, etag='"v1"', seen=[], fail_status=None,
                           ignore_range=False, cut_after=None) as httpd:
        httpd.url = lambda name="ml-test.zip": f"http://127.0.0.1:{httpd.server_port}/{name}"
        yield httpd


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


def test_is_url_and_resolve(tmp_path):
    assert is_url("https://files.grouplens.org/datasets/movielens/ml-1m.zip")
    assert is_url("http://127.0.0.1:8000/x.zip")
    assert not is_url("data/ml-1m.zip")
    assert not is_url("/abs/ml-1m.zip")
    assert not is_url("ftp://host/x.zip")
    assert not is_url("https://")
    assert not is_url(tmp_path)
    assert resolve(str(tmp_path / "x.zip")) == tmp_path / "x.zip"


def test_download_verifies_checksums_and_shows_progress(server, tmp_path, capsys):
    cache = tmp_path / "cache"
    path = fetch(server.url(), cache_dir=cache, sha256=SHA256, md5=MD5.upper())

    assert path.read_bytes() == PAYLOAD
    assert path.name == "ml-test.zip"
    assert path == cache_path(server.url(), cache)
    assert files_under(cache) == [path]  # no .part or sidecar left behind
    stderr = capsys.readouterr().err
    assert "ml-test.zip  100.0%  0.3/0.3 MB" in stderr
    assert "MB/s" in stderr and "checksum verified" in stderr


def test_progress_false_is_silent_and_reports_nothing(server, tmp_path, capsys):
    fetch(server.url(), cache_dir=tmp_path, progress=False)
    assert capsys.readouterr().err == ""


def test_without_checksum_the_sha256_is_printed_for_pinning(server, tmp_path, capsys):
    fetch(server.url(), cache_dir=tmp_path)
    assert SHA256 in capsys.readouterr().err


def test_second_fetch_uses_the_cache(server, tmp_path, capsys):
    first = fetch(server.url(), cache_dir=tmp_path, sha256=SHA256)
    assert len(server.seen) == 1
    second = fetch(server.url(), cache_dir=tmp_path, sha256=SHA256)
    third = fetch(server.url(), cache_dir=tmp_path)

    assert first == second == third
    assert len(server.seen) == 1  # nothing downloaded again
    assert "using cached" in capsys.readouterr().err


def test_cache_dir_defaults_to_env_var(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SS4REC_CACHE", str(tmp_path / "from-env"))
    path = fetch(server.url(), progress=False)
    assert path.is_relative_to(tmp_path / "from-env")
    assert path.read_bytes() == PAYLOAD


def test_same_basename_from_two_urls_does_not_collide(server, tmp_path):
    first = fetch(server.url("a/ml.zip"), cache_dir=tmp_path, progress=False)
    second = fetch(server.url("b/ml.zip"), cache_dir=tmp_path, progress=False)
    assert first != second and first.name == second.name == "ml.zip"
    assert len(server.seen) == 2


def test_wrong_checksum_is_refused_and_nothing_is_kept(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(DataError, match="checksum mismatch") as raised:
        fetch(server.url(), cache_dir=tmp_path, sha256=wrong, progress=False)
    message = str(raised.value)
    assert wrong in message and SHA256 in message  # expected and actual
    assert files_under(tmp_path) == []


def test_wrong_md5_alone_is_refused(server, tmp_path):
    with pytest.raises(DataError, match=f"md5 expected {'f' * 32}, got {MD5}"):
        fetch(server.url(), cache_dir=tmp_path, md5="f" * 32, progress=False)
    assert files_under(tmp_path) == []


def test_malformed_checksum_argument_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="64 hex characters"):
        fetch("http://127.0.0.1:9/x.zip", cache_dir=tmp_path, sha256="abc")
    with pytest.raises(DataError, match="not an http"):
        fetch("data/ml-1m.zip", cache_dir=tmp_path)


def test_altered_cache_is_downloaded_again_when_a_checksum_is_given(server, tmp_path):
    path = fetch(server.url(), cache_dir=tmp_path, progress=False)
    path.write_bytes(b"corrupted")
    assert fetch(server.url(), cache_dir=tmp_path, progress=False) == path  # trusted as is
    assert path.read_bytes() == b"corrupted"

    fetch(server.url(), cache_dir=tmp_path, sha256=SHA256, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert len(server.seen) == 2


def test_interrupted_transfer_is_resumed_with_a_range_request(server, tmp_path):
    server.cut_after = 70_000
    with pytest.raises(DataError, match="interrupted after 0.1 MB of 0.3 MB") as raised:
        fetch(server.url(), cache_dir=tmp_path, sha256=SHA256, progress=False)
    assert "run the same command again to resume" in str(raised.value)
    final = cache_path(server.url(), tmp_path)
    part = final.with_name(final.name + ".part")
    assert not final.exists()
    assert part.stat().st_size == 70_000

    path = fetch(server.url(), cache_dir=tmp_path, sha256=SHA256, progress=False)

    assert server.seen[-1]["range"] == "bytes=70000-"
    assert server.seen[-1]["if_range"] == '"v1"'  # resumes only the same version
    assert path.read_bytes() == PAYLOAD
    assert files_under(tmp_path) == [path]


@pytest.mark.parametrize("why", ["server ignores ranges", "remote file changed"])
def test_resume_starts_over_when_the_server_sends_the_whole_file(server, tmp_path, why):
    server.cut_after = 50_000
    with pytest.raises(DataError, match="interrupted"):
        fetch(server.url(), cache_dir=tmp_path, progress=False)
    new_payload = PAYLOAD[::-1]
    if why == "server ignores ranges":
        server.ignore_range, new_payload = True, PAYLOAD
    else:
        server.payload, server.etag = new_payload, '"v2"'

    path = fetch(server.url(), cache_dir=tmp_path,
                 sha256=hashlib.sha256(new_payload).hexdigest(), progress=False)

    assert server.seen[-1]["range"] == "bytes=50000-"
    assert path.read_bytes() == new_payload


@pytest.mark.parametrize("extra", [0, 10], ids=["part-already-whole", "part-too-long"])
def test_range_not_satisfiable_finishes_or_starts_over(server, tmp_path, extra):
    final = cache_path(server.url(), tmp_path)
    final.parent.mkdir(parents=True)
    final.with_name(final.name + ".part").write_bytes(PAYLOAD + b"x" * extra)

    path = fetch(server.url(), cache_dir=tmp_path, sha256=SHA256, progress=False)

    assert server.seen[0]["range"] == f"bytes={len(PAYLOAD) + extra}-"  # answered 416
    assert len(server.seen) == (1 if extra == 0 else 2)
    assert path.read_bytes() == PAYLOAD
    assert files_under(tmp_path) == [path]


def test_http_error_names_status_and_url_without_query_secrets(server, tmp_path):
    server.fail_status = 404
    with pytest.raises(DataError, match="HTTP 404") as raised:
        fetch(server.url("missing.zip?token=s3cret"), cache_dir=tmp_path, progress=False)
    message = str(raised.value)
    assert f"127.0.0.1:{server.server_port}/missing.zip" in message
    assert "s3cret" not in message
    assert files_under(tmp_path) == []


def test_unreachable_host_is_a_clear_error(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DataError, match="cannot reach"):
        fetch(f"http://127.0.0.1:{port}/x.zip", cache_dir=tmp_path, progress=False)
    assert files_under(tmp_path) == []


def test_disk_full_while_writing_leaves_nothing(server, tmp_path):
    final = cache_path(server.url(), tmp_path)
    final.parent.mkdir(parents=True)
    part = final.with_name(final.name + ".part")
    # /dev/full fails every write with ENOSPC: a real full disk, in miniature.
    os.symlink("/dev/full", part)

    with pytest.raises(DataError, match="disk full"):
        fetch(server.url(), cache_dir=tmp_path, progress=False)

    assert not os.path.lexists(part) and not final.exists()
    assert files_under(tmp_path) == []


def test_not_enough_free_space_is_refused_before_downloading(server, tmp_path, monkeypatch):
    tiny = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: tiny)
    with pytest.raises(DataError, match=r"disk full: .* needs 0.3 MB but .* 0.0 MB free"):
        fetch(server.url(), cache_dir=tmp_path, progress=False)
    assert files_under(tmp_path) == []
