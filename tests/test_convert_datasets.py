"""``ss4rec convert`` for the paper's other datasets: KuaiRec 2.0, Amazon reviews (2014, 2018,
2023) and RecBole atomic files; and the ``paper-*`` presets.

Every source is written by the test in the release's real format from one event log of
~500 rows (60 users, 45 items, times with milliseconds), with the awkward cases the real
files have: gzip, rows without a time, exact duplicate rows, millisecond times, the two
column orders of the headerless Amazon CSVs, "loose JSON" lines, CRLF. The converted files
are compared with the log row for row, loaded by RecBole and trained for one epoch.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_SS4REC
from localserver import local_http_server

import ss4rec
from ss4rec.cli import main
from ss4rec.config.files import check_keys, load_config_file, model_config_file, resolve_config_file
from ss4rec.config.validation import check_values

REPO = Path(__file__).resolve().parents[1]
BASE_TIME = 1_593_878_903.438  # KuaiRec's first timestamp
N_USERS, N_ITEMS = 60, 45
DUPLICATED = [3, 50, 200]  # log rows written twice
WITHOUT_TIME = [(7, 11), (8, 12), (9, 13), (59, 44)]  # (user, item) rows written without a time


def event_log(seed: int = 0) -> list[tuple[int, int, float]]:
    """(user, item, time) rows: each user walks the item ring with small steps, hours apart."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(N_USERS):
        time = BASE_TIME + float(rng.integers(0, 30 * 86400))
        item = int(rng.integers(0, N_ITEMS))
        for _ in range(int(rng.integers(6, 12))):
            item = (item + int(rng.integers(1, 3))) % N_ITEMS
            time = round(time + float(rng.integers(60, 3 * 86400)) + int(rng.integers(0, 1000)) / 1000, 3)
            rows.append((user, item, time))
    return rows


LOG = event_log()


def reviewer(user: int) -> str:
    return f"A{user:03d}X9Q2ZKV7M"  # the shape of an Amazon reviewer id (A + 13)


def asin(item: int) -> str:
    return f"B00{item:07d}"  # the shape of an ASIN (B + 9)


def written_rows():
    """The log as a release lists it: duplicates repeated, rows without a time among them."""
    without_time = dict(zip(range(0, 97 * len(WITHOUT_TIME), 97), WITHOUT_TIME))
    for index, row in enumerate(LOG):
        yield row
        if index in DUPLICATED:
            yield row
        if index in without_time:
            yield (*without_time[index], None)


# ---------------------------------------------------------------- writers of the real formats
def kuairec_csv(rows=None) -> str:
    lines = ["user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio"]
    for user, item, time in rows or written_rows():
        play, duration = 1000 + 37 * item, 9000 + 11 * user
        if time is None:
            lines.append(f"{user},{item},{play},{duration},,,,{play / duration}")
        else:
            stamp = pd.Timestamp(time, unit="s", tz="Asia/Shanghai")
            lines.append(f"{user},{item},{play},{duration},{stamp.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]},"
                         f"{stamp.strftime('%Y%m%d')},{time:.3f},{play / duration}")
    return "\n".join(lines) + "\n"


def write_kuairec_csv(folder: Path) -> Path:
    path = folder / "big_matrix.csv"
    path.write_text(kuairec_csv())
    return path


def write_kuairec_zip(folder: Path) -> Path:
    """KuaiRec.zip as released: both matrices and side files under 'KuaiRec 2.0/data/'."""
    path = folder / "KuaiRec.zip"
    other = [(u, i, BASE_TIME + 60 * k) for k, (u, i) in enumerate([(0, 1), (0, 2), (1, 1)])]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("KuaiRec 2.0/data/big_matrix.csv", kuairec_csv(other))
        archive.writestr("KuaiRec 2.0/data/small_matrix.csv", kuairec_csv())
        archive.writestr("KuaiRec 2.0/data/user_features.csv", "user_id,user_active_degree\n0,high_active\n")
        archive.writestr("__MACOSX/KuaiRec 2.0/._small_matrix.csv", b"\x00\x05\x16\x07")
    return path


def amazon_2014_record(user, item, time) -> dict:
    record = {"reviewerID": reviewer(user), "asin": asin(item), "reviewerName": "J. Doe", "helpful": [0, 1],
              "reviewText": "Works, tab\there, newline\nthere.", "overall": float(1 + (user + item) % 5),
              "summary": "ok"}
    if time is not None:
        record["unixReviewTime"] = int(time)
        record["reviewTime"] = pd.Timestamp(int(time), unit="s").strftime("%m %d, %Y")
    return record


def write_amazon_2014_json_gz(folder: Path) -> Path:
    path = folder / "reviews_Sports_and_Outdoors_5.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for n, row in enumerate(written_rows()):
            record = amazon_2014_record(*row)
            # some lines in the 2014 release's "loose JSON" (Python dict literals)
            out.write((str(record) if n % 10 == 0 else json.dumps(record)) + "\n")
    return path


def write_amazon_2018_json(folder: Path) -> Path:
    path = folder / "Video_Games_5.json"
    with open(path, "w", encoding="utf-8") as out:
        for user, item, time in written_rows():
            record = {"overall": float(1 + (user + item) % 5), "verified": True, "reviewerID": reviewer(user),
                      "asin": asin(item), "style": {"Format:": " Video Game"}, "reviewerName": "Ann",
                      "reviewText": "Great game", "summary": "Five Stars"}
            if time is not None:
                record["unixReviewTime"] = int(time)
            out.write(json.dumps(record) + "\n")
    return path


def ratings_lines(item_first: bool) -> list[str]:
    lines = []
    for user, item, time in written_rows():
        ids = [asin(item), reviewer(user)] if item_first else [reviewer(user), asin(item)]
        lines.append(",".join(ids + [f"{float(1 + (user + item) % 5)}", "" if time is None else str(int(time))]))
    return lines


def write_amazon_2014_ratings(folder: Path) -> Path:
    path = folder / "ratings_Sports_and_Outdoors.csv"
    path.write_text("\n".join(ratings_lines(item_first=False)) + "\n")
    return path


def write_amazon_2018_ratings_gz(folder: Path) -> Path:
    path = folder / "Video_Games.csv.gz"
    with gzip.open(path, "wb") as out:
        out.write(("\r\n".join(ratings_lines(item_first=True)) + "\r\n").encode())
    return path


def write_amazon_2023_jsonl_gz(folder: Path) -> Path:
    path = folder / "Sports_and_Outdoors.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for user, item, time in written_rows():
            record = {"rating": float(1 + (user + item) % 5), "title": "Nice", "text": "Sturdy.", "images": [],
                      "asin": f"B99{item:07d}", "parent_asin": asin(item), "user_id": f"AG{user:026d}",
                      "timestamp": None if time is None else round(time * 1000), "helpful_vote": 0,
                      "verified_purchase": True}
            out.write(json.dumps(record) + "\n")
    return path


def write_amazon_2023_csv(folder: Path) -> Path:
    path = folder / "Video_Games.csv"
    lines = ["user_id,parent_asin,rating,timestamp"]
    for user, item, time in written_rows():
        lines.append(f"AG{user:026d},{asin(item)},{float(1 + (user + item) % 5)},"
                     f"{'' if time is None else round(time * 1000)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def atomic_inter(rows) -> str:
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{reviewer(u)}\t{asin(i)}\t{float(1 + (u + i) % 5)}\t{int(t)}" for u, i, t in rows]
    return "\n".join(lines) + "\n"


def write_recbole_zip(folder: Path) -> Path:
    """RecBole's Amazon zip layout: Amazon_Sports_and_Outdoors.{inter,item} at the top."""
    path = folder / "Amazon_Sports_and_Outdoors.zip"
    rows = [r for r in written_rows() if r[2] is not None]
    items = "item_id:token\ttitle:token_seq\tprice:float\n" + "".join(
        f"{asin(i)}\tThing number {i}\t{i + 0.99}\n" for i in range(N_ITEMS))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Amazon_Sports_and_Outdoors.inter", atomic_inter(rows))
        archive.writestr("Amazon_Sports_and_Outdoors.item", items)
    return path


# expected (user, item, time) per output
def kuairec_expected():
    return {(str(u), str(i), t) for u, i, t in LOG}


def amazon_expected():
    return {(reviewer(u), asin(i), float(int(t))) for u, i, t in LOG}


def amazon_2023_expected():
    return {(f"AG{u:026d}", asin(i), round(t * 1000) / 1000) for u, i, t in LOG}


N_WITHOUT_TIME = sum(1 for r in written_rows() if r[2] is None)

SOURCES = {
    # id: (writer, extra args, dataset name, expected rows, format fragment)
    "kuairec-csv": (write_kuairec_csv, [], "kuairec-big", kuairec_expected, "kuairec (big_matrix.csv)"),
    "kuairec-zip": (write_kuairec_zip, ["--name", "kuairec-small"], "kuairec-small", kuairec_expected,
                    "kuairec (small_matrix.csv)"),
    "amazon-2014-json-gz": (write_amazon_2014_json_gz, [], "amazon-sports", amazon_expected, "2014/2018 reviews"),
    "amazon-2018-json": (write_amazon_2018_json, [], "amazon-video-games", amazon_expected, "2014/2018 reviews"),
    "amazon-2014-ratings": (write_amazon_2014_ratings, [], "amazon-sports", amazon_expected, "the 2014 order"),
    "amazon-2018-ratings-gz": (write_amazon_2018_ratings_gz, [], "amazon-video-games", amazon_expected,
                               "the 2018 order"),
    "amazon-2023-jsonl-gz": (write_amazon_2023_jsonl_gz, [], "amazon-sports", amazon_2023_expected,
                             "2023 reviews"),
    "amazon-2023-csv": (write_amazon_2023_csv, [], "amazon-video-games", amazon_2023_expected, "2023 CSV"),
    "recbole-zip": (write_recbole_zip, ["--name", "amazon-sports"], "amazon-sports", amazon_expected,
                    "recbole atomic"),
}


def read_inter(path: Path) -> tuple[list[str], set[tuple[str, str, float]], pd.DataFrame]:
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    rows = {(u, i, float(t)) for u, i, t in zip(frame["user_id:token"], frame["item_id:token"],
                                                 frame["timestamp:float"])}
    return list(frame.columns), rows, frame


def convert(src: Path, out: Path, *args: str) -> int:
    return main(["convert", str(src), str(out), *args])


# ---------------------------------------------------------------- every format round-trips
@pytest.mark.parametrize("case", list(SOURCES))
def test_every_format_converts_to_the_log_row_for_row(case, tmp_path, capsys):
    writer, args, name, expected, fmt = SOURCES[case]
    src = writer(tmp_path)
    assert convert(src, tmp_path / "data", *args) == 0
    captured = capsys.readouterr()
    folder = tmp_path / "data" / name
    header, rows, frame = read_inter(folder / f"{name}.inter")
    stats = json.loads((folder / f"{name}.stats.json").read_text())
    assert fmt in stats["format"]
    assert f"wrote {tmp_path / 'data'}/{name}/{name}.inter: {stats['rows']:,} interactions" in captured.out

    want = expected()
    assert header[:2] == ["user_id:token", "item_id:token"] and "timestamp:float" in header
    assert {(u, i) for u, i, _ in rows} == {(u, i) for u, i, _ in want}
    got_times = {(u, i): t for u, i, t in rows}  # a user never meets an item twice in LOG
    for u, i, t in want:  # times exact to the millisecond, in seconds
        assert got_times[(u, i)] == pytest.approx(t, abs=1e-6), (u, i)
    if case == "recbole-zip":  # passed through byte for byte, duplicates counted, not dropped
        with zipfile.ZipFile(src) as archive:
            assert (folder / f"{name}.inter").read_bytes() == archive.read("Amazon_Sports_and_Outdoors.inter")
            assert (folder / f"{name}.item").read_bytes() == archive.read("Amazon_Sports_and_Outdoors.item")
        assert len(frame) == len(LOG) + len(DUPLICATED)
        assert stats["exact_duplicates_kept"] == len(DUPLICATED)
        assert "passed through unchanged" in captured.err
    else:  # duplicates and rows without a time left out, and said so
        assert len(frame) == len(LOG)
        assert stats["dropped"] == {"without_timestamp": N_WITHOUT_TIME, "duplicates": len(DUPLICATED)}
        assert stats["rows_read"] == len(LOG) + len(DUPLICATED) + N_WITHOUT_TIME
        assert f"{N_WITHOUT_TIME} rows without a timestamp, {len(DUPLICATED)} exact duplicate rows" in captured.err
    assert (stats["users"], stats["items"]) == (len({r[0] for r in want}), len({r[1] for r in want}))
    if case.startswith("kuairec"):
        assert "watch_ratio:float" in header
        first = frame.iloc[0]
        assert first["timestamp:float"] == f"{LOG[0][2]:.3f}".rstrip("0").rstrip(".")  # never 1.59e9
    else:
        assert "rating:float" in header
    if "2023" not in case and not case.startswith("kuairec"):
        assert all("." not in t for t in frame["timestamp:float"])  # whole seconds stay integers


def test_min_watch_ratio_keeps_kuairec_rows_at_or_above_it(tmp_path, capsys):
    src = write_kuairec_csv(tmp_path)
    ratios = {(u, i): (1000 + 37 * i) / (9000 + 11 * u) for u, i, _ in LOG}
    threshold = float(np.median(list(ratios.values())))
    assert convert(src, tmp_path / "data", "--min-watch-ratio", str(threshold)) == 0
    _, rows, _ = read_inter(tmp_path / "data" / "kuairec-big" / "kuairec-big.inter")
    assert {(u, i) for u, i, _ in rows} == {(str(u), str(i)) for (u, i), r in ratios.items() if r >= threshold}
    stats = json.loads((tmp_path / "data" / "kuairec-big" / "kuairec-big.stats.json").read_text())
    assert stats["min_watch_ratio"] == threshold and stats["dropped"]["below_min_watch_ratio"] > 0
    capsys.readouterr()
    assert convert(write_amazon_2018_json(tmp_path), tmp_path / "data", "--min-watch-ratio", "2") == 2
    assert "--min-watch-ratio applies to KuaiRec only" in capsys.readouterr().err


# ---------------------------------------------------------------- loaded and trained
@pytest.mark.parametrize("case", ["kuairec-csv", "amazon-2014-json-gz", "amazon-2023-jsonl-gz", "recbole-zip"])
def test_converted_data_trains_one_epoch_on_tiny(case, tmp_path):
    """One output per kind of .inter file (the other sources write byte-identical files: the
    round-trip test): ms-fraction times with watch_ratio, whole-second times with rating,
    times from milliseconds, and RecBole's file passed through."""
    writer, args, name, expected, _ = SOURCES[case]
    assert convert(writer(tmp_path), tmp_path / "data", *args) == 0
    result = ss4rec.run(model="SS4Rec", dataset=name, config_files=["tiny"],
                        config_dict={**TINY_SS4REC, "data_path": str(tmp_path / "data")},
                        output_dir=tmp_path / "run", device="cpu")
    assert result["epochs_run"] == 1
    assert all(np.isfinite(v) for v in result["test"].values()) and result["test"]
    assert result["n_items"] == len({r[1] for r in expected()}) + 1  # + padding


def test_sources_of_one_kind_write_identical_files(tmp_path):
    outputs = {}
    for case in ("amazon-2014-json-gz", "amazon-2018-json", "amazon-2014-ratings", "amazon-2018-ratings-gz"):
        writer, args, name, _, _ = SOURCES[case]
        folder = tmp_path / case
        folder.mkdir()
        assert convert(writer(folder), folder / "data", "--name", "x") == 0
        outputs[case] = (folder / "data" / "x" / "x.inter").read_bytes()
    assert len(set(outputs.values())) == 1
    a, b = (tmp_path / "j", tmp_path / "c")
    a.mkdir(), b.mkdir()
    assert convert(write_amazon_2023_jsonl_gz(a), a / "data", "--name", "x") == 0
    assert convert(write_amazon_2023_csv(b), b / "data", "--name", "x") == 0
    assert (a / "data/x/x.inter").read_bytes() == (b / "data/x/x.inter").read_bytes()


# ---------------------------------------------------------------- bad input: clear, nothing written
def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def _zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


KUAI = kuairec_csv(LOG[:40])
JSON_2014 = "".join(json.dumps(amazon_2014_record(*r)) + "\n" for r in LOG[:40])
RATINGS = "\n".join(ratings_lines(False)[:40]) + "\n"
ATOMIC = atomic_inter(LOG[:40])

BAD = {
    # case: ({file name: bytes or text}, file the message names, fragments)
    "kuairec cut mid-line": ({"big_matrix.csv": KUAI + "5,17,1000,2000,2020-07-05 00:0"}, "big_matrix.csv",
                             ["line 42", "expected 8 fields", "found 5"]),
    "kuairec user id not a number": ({"big_matrix.csv": KUAI + "x,17,1,2,t,20200705,1593878903.0,1.0\n"},
                                     "big_matrix.csv", ["line 42", "non-negative integer user id, got 'x'"]),
    "kuairec negative timestamp": ({"big_matrix.csv": KUAI + "5,17,1,2,t,20200705,-3.5,1.0\n"}, "big_matrix.csv",
                                   ["line 42", "non-negative timestamp, got '-3.5'"]),
    "kuairec empty": ({"small_matrix.csv": ""}, "small_matrix.csv", ["line 1", "file is empty"]),
    "kuairec header only": ({"small_matrix.csv": KUAI.splitlines()[0] + "\n"}, "small_matrix.csv",
                            ["no rows after the header"]),
    "kuairec zip with both matrices, no choice": (
        {"KuaiRec.zip": _zip({"d/big_matrix.csv": KUAI, "d/small_matrix.csv": KUAI})}, "KuaiRec.zip",
        ["both big_matrix.csv and small_matrix.csv", "--name kuairec-small"]),
    "json cut mid-record": ({"reviews_Sports_and_Outdoors_5.json": JSON_2014 + JSON_2014[:70]},
                            "reviews_Sports_and_Outdoors_5.json", ["line 41", "not a JSON record", "truncated"]),
    "gzip cut short": ({"reviews_Sports_and_Outdoors_5.json.gz": _gz(JSON_2014 * 20)[:-40]},
                       "reviews_Sports_and_Outdoors_5.json.gz", ["truncated or damaged", "download it again"]),
    "json without an asin": ({"r.json": JSON_2014 + '{"reviewerID": "A1", "overall": 5.0}\n'}, "r.json",
                             ["line 41", "expected a 'asin' id, got None"]),
    "json time as text": ({"r.json": JSON_2014 + json.dumps({"reviewerID": "A1", "asin": "B000000001",
                                                              "unixReviewTime": "yesterday"}) + "\n"},
                          "r.json", ["line 41", "number for 'unixReviewTime', got 'yesterday'"]),
    "json array line": ({"r.json": JSON_2014 + "[1, 2]\n"}, "r.json", ["line 41", "one JSON object per line"]),
    "ratings csv cut mid-line": ({"ratings_Sports_and_Outdoors.csv": RATINGS + "A123,B0000000"},
                                 "ratings_Sports_and_Outdoors.csv", ["line 41", "expected 4 fields", "found 2"]),
    "ratings csv rating not a number": ({"ratings_X.csv": RATINGS + f"{reviewer(1)},{asin(1)},five,1380000000\n"},
                                        "ratings_X.csv", ["line 41", "number for the rating, got 'five'"]),
    "csv of unknown ids": ({"x.csv": "u1,i1,5.0,100\nu2,i2,4.0,101\n"}, "x.csv",
                           ["not a format ss4rec converts", "KuaiRec 2.0"]),
    "2023 csv bad rating": ({"All_Beauty.csv": "user_id,parent_asin,rating,timestamp\nAG1,B081TJ8YS3,x,1588615855070\n"},
                            "All_Beauty.csv", ["line 2", "number for the rating, got 'x'"]),
    "atomic header without time": ({"d.inter": "user_id:token\titem_id:token\n1\t2\n"}, "d.inter",
                                   ["line 1", "lacks timestamp:float"]),
    "atomic short line": ({"d.inter": ATOMIC + "A1\tB1\t5.0\n"}, "d.inter", ["line 42", "expected 4 fields", "tabs"]),
    "atomic blank timestamp": ({"d.inter": ATOMIC + "A1\tB1\t5.0\t\n"}, "d.inter", ["line 42", "timestamp is blank"]),
    "atomic zip cut short": ({"Amazon_X.zip": _zip({"Amazon_X.inter": ATOMIC * 30})[:-200]}, "Amazon_X.zip",
                             ["zip"]),
    "bad .item beside a good .inter": ({"d.inter": ATOMIC, "d.item": "item_id:token\ttitle:token_seq\nB1\n"},
                                       "d.item", ["line 2", "expected 2 fields"]),
}


@pytest.fixture
def good_output(tmp_path):
    """An output folder holding a good earlier conversion named 'demo'."""
    out = tmp_path / "out"
    assert convert(write_amazon_2014_ratings(tmp_path), out, "--name", "demo") == 0
    return out, _snapshot(out)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sources_fail_clearly_and_write_nothing(case, good_output, tmp_path, capsys):
    files, culprit, fragments = BAD[case]
    out, before = good_output
    folder = tmp_path / "src"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    src = folder / next(iter(files)) if len(files) == 1 else folder
    capsys.readouterr()

    assert convert(src, out, "--name", "demo", "--overwrite") == 2  # a bad source never replaces it
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: ") and str(folder / culprit) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert _snapshot(out) == before  # byte-identical, no staging folder left behind
    assert convert(src, tmp_path / "fresh" / "data") == 2
    assert not (tmp_path / "fresh").exists()


# ---------------------------------------------------------------- from a URL, with a checksum
class _Files(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_url_with_checksum_is_downloaded_once_verified_and_converted(tmp_path, capsys):
    kuairec = write_kuairec_zip(tmp_path).read_bytes()
    reviews = write_amazon_2014_json_gz(tmp_path).read_bytes()
    files = {"KuaiRec.zip": kuairec, "reviews_Sports_and_Outdoors_5.json.gz": reviews}
    with local_http_server(_Files, files=files) as httpd:
        base = f"http://127.0.0.1:{httpd.server_port}"
        cache, data = tmp_path / "cache", tmp_path / "data"
        for name, body, args, dataset in [("KuaiRec.zip", kuairec, ["--name", "kuairec-small"], "kuairec-small"),
                                          ("reviews_Sports_and_Outdoors_5.json.gz", reviews, [], "amazon-sports")]:
            sha = hashlib.sha256(body).hexdigest()
            command = ["convert", f"{base}/{name}", str(data), "--sha256", sha, "--cache-dir", str(cache), *args]
            assert main(command) == 0
            err = capsys.readouterr().err
            assert "checksum verified" in err
            assert (data / dataset / f"{dataset}.inter").is_file()
            assert list(cache.glob(f"*/{name}"))
        del files["KuaiRec.zip"]  # the second time comes from the cache
        assert main(["convert", f"{base}/KuaiRec.zip", str(data), "--name", "kuairec-small", "--overwrite",
                     "--sha256", hashlib.sha256(kuairec).hexdigest(), "--cache-dir", str(cache)]) == 0
        assert "using cached" in capsys.readouterr().err
        before = _snapshot(data)
        assert main(["convert", f"{base}/reviews_Sports_and_Outdoors_5.json.gz", str(data), "--sha256", "0" * 64,
                     "--overwrite", "--cache-dir", str(tmp_path / "other-cache")]) == 2
        assert "checksum mismatch" in capsys.readouterr().err
        assert _snapshot(data) == before


# ---------------------------------------------------------------- presets
# The official configs' keys (XiaoWei-i/SS4Rec, config/SS4Rec/config_*.yaml) common to all five.
OFFICIAL_COMMON = {
    "hidden_size": 64, "num_layers": 2, "dropout_prob": 0.2, "loss_type": "CE", "d_state": 32, "d_conv": 4,
    "expand": 2, "dt_min": 0.001, "dt_max": 0.1, "d_P": 32,
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "user_inter_num_interval": "[5,inf)", "item_inter_num_interval": "[5,inf)", "epochs": 200,
    "train_batch_size": 1024, "learner": "adam", "learning_rate": 0.001, "eval_step": 1, "stopping_step": 10,
    "train_neg_sample_args": None, "metrics": ["Hit", "NDCG", "MRR"], "valid_metric": "NDCG@10",
    "eval_batch_size": 2048, "weight_decay": 0.0, "topk": [10],
}
PRESETS = {"paper-ml-1m": 200, "paper-kuairec-big": 200, "paper-kuairec-small": 200,
           "paper-amazon-sports": 50, "paper-amazon-video-games": 50}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_reproduce_the_official_configs_and_pass_validation(preset, tmp_path):
    from ss4rec.pipeline.settings import build_config

    settings = load_config_file(preset)
    model_defaults = load_config_file(model_config_file("SS4Rec"))
    merged = {**model_defaults, **settings}
    for key, value in OFFICIAL_COMMON.items():
        assert merged[key] == value, key
    assert settings["MAX_ITEM_LIST_LENGTH"] == PRESETS[preset]
    assert settings["TIME_FIELD"] == "timestamp"  # the official TIMESTAMP_FIELD is not a RecBole key
    for model in ("SS4Rec", "SASRec", "GRU4Rec"):  # no model keys: baselines run under it too
        check_keys(settings, model, source=preset)
        check_values(settings, preset)
    assert convert(write_kuairec_csv(tmp_path), tmp_path / "data", "--name", "paper-data") == 0
    config, _ = build_config("SS4Rec", "paper-data", [preset], {"data_path": str(tmp_path / "data")},
                             device="cpu")
    assert config["MAX_ITEM_LIST_LENGTH"] == PRESETS[preset] and config["hidden_size"] == 64
    assert config["user_inter_num_interval"] == "[5,inf)" and config["eval_args"]["order"] == "TO"


def test_paper_ml_1m_preset_is_the_ss4rec_config():
    assert load_config_file("paper-ml-1m") == load_config_file("ss4rec")
    assert resolve_config_file("paper-amazon-sports").parent == resolve_config_file("ss4rec").parent


# ---------------------------------------------------------------- the pod entrypoint
def test_entrypoint_takes_a_paper_dataset_with_raw_url(tmp_path):
    small = kuairec_csv(LOG).encode()
    with local_http_server(_Files, files={"KuaiRec.zip": _zip({"KuaiRec 2.0/data/small_matrix.csv": small.decode(),
                                                               "KuaiRec 2.0/data/big_matrix.csv": KUAI})}) as httpd:
        env = {**os.environ, "PYTHON": sys.executable, "SS4REC_CACHE": str(tmp_path / "cache")}
        env.pop("SS4REC_NOTIFY_URL", None)
        proc = subprocess.run(
            ["bash", str(REPO / "runpod_entrypoint.sh"), "--dataset", "kuairec-small", "--raw",
             f"http://127.0.0.1:{httpd.server_port}/KuaiRec.zip", "--data-dir", "data", "--debug", "--device", "cpu",
             "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--config paper-kuairec-small" in proc.stdout and "--config ss4rec " not in proc.stdout
    assert "wrote data/kuairec-small/kuairec-small.inter" in proc.stdout and "preflight PASS" in proc.stdout
    missing = subprocess.run(["bash", str(REPO / "runpod_entrypoint.sh"), "--dataset", "amazon-sports"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "ratings_Sports_and_Outdoors.csv" in missing.stderr and "--raw" in missing.stderr


def test_small_blocks_blank_lines_and_line_numbers_across_blocks(tmp_path):
    """The readers cut files into blocks (64 MB by default): with 1 KB blocks, the output and
    the line named in an error are the same as with one block; blank lines are no rows."""
    from ss4rec.data.amazon import convert_amazon
    from ss4rec.data.kuairec import convert_kuairec
    from ss4rec.errors import DataError

    text = kuairec_csv()
    lines = text.splitlines()
    with_blanks = "\n".join(lines[:100] + ["", "  "] + lines[100:]) + "\n\n"
    (tmp_path / "big_matrix.csv").write_text(with_blanks)
    whole = convert_kuairec(tmp_path / "big_matrix.csv", tmp_path / "one")
    small = convert_kuairec(tmp_path / "big_matrix.csv", tmp_path / "many", block_bytes=1024)
    assert (tmp_path / "one/kuairec-big/kuairec-big.inter").read_bytes() == \
        (tmp_path / "many/kuairec-big/kuairec-big.inter").read_bytes()
    assert whole["rows"] == small["rows"] == len(LOG)
    bad = with_blanks.rstrip("\n") + "\n1,2,3\n"
    (tmp_path / "big_matrix.csv").write_text(bad)
    for block_bytes in (1024, 64 << 20):  # header + data + 2 blank lines, then the bad one
        with pytest.raises(DataError, match=rf"line {len(lines) + 3}: expected 8 fields"):
            convert_kuairec(tmp_path / "big_matrix.csv", tmp_path / "many", block_bytes=block_bytes)

    path = write_amazon_2018_ratings_gz(tmp_path)
    one = convert_amazon(path, tmp_path / "a1", name="x")
    many = convert_amazon(path, tmp_path / "a2", name="x", block_bytes=1024)
    assert (tmp_path / "a1/x/x.inter").read_bytes() == (tmp_path / "a2/x/x.inter").read_bytes()
    assert one["rows"] == many["rows"] == len(LOG)
