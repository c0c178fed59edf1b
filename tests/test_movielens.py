"""``ss4rec convert``: every GroupLens layout round-trips RecBole's real ML-100K, bad input
never leaves a partial or damaged output, and the result loads in RecBole.

The sources are written from RecBole's bundled ``ml-100k`` atomic files in the 100K layout
(u.data/u.item/u.user), the 1M layout (``::``, latin-1) and the csv layout (header, quoted
titles), so the conversion is checked against 100,000 real interactions.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ss4rec  # noqa: F401  (numpy-2 compatibility for RecBole)
from ss4rec.cli import main
from ss4rec.data.movielens import ML100K_GENRES, convert_movielens

RECBOLE_ML100K = Path(__import__("recbole").__file__).parent / "dataset_example" / "ml-100k"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ml100k():
    """RecBole's bundled ml-100k: (inter, item, user) DataFrames of strings."""
    def load(ext):
        frame = pd.read_csv(RECBOLE_ML100K / f"ml-100k.{ext}", sep="\t", dtype=str,
                            keep_default_na=False, quoting=csv.QUOTE_NONE)
        frame.columns = [c.split(":")[0] for c in frame.columns]
        return frame
    return load("inter"), load("item"), load("user")


def inter_multiset(path: Path) -> np.ndarray:
    """The (user, item, rating, timestamp) rows of a .inter file, sorted, as int64 [N 4]."""
    frame = pd.read_csv(path, sep="\t", dtype=str)
    assert list(frame.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    values = np.stack([frame[c].map(lambda v: int(float(v))).to_numpy(np.int64) for c in frame.columns], 1)
    return values[np.lexsort(values.T[::-1])]


def write_100k_layout(folder: Path, inter, item, user) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    inter[["user_id", "item_id", "rating", "timestamp"]].to_csv(folder / "u.data", sep="\t", header=False, index=False)
    with open(folder / "u.item", "w", encoding="latin-1") as out:
        for row in item.itertuples():
            flags = ["1" if g in row._4.split() else "0" for g in ML100K_GENRES]
            out.write("|".join([row.item_id, f"{row.movie_title} ({row.release_year})",
                                f"01-Jan-{row.release_year}", "", "http://x"] + flags) + "\n")
    with open(folder / "u.user", "w", encoding="latin-1") as out:
        for row in user.itertuples():
            out.write("|".join([row.user_id, row.age, row.gender, row.occupation, row.zip_code]) + "\n")
    return folder


def write_1m_layout(folder: Path, inter, item, user) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ratings.dat", "w", encoding="latin-1") as out:
        for u, i, r, t in inter[["user_id", "item_id", "rating", "timestamp"]].itertuples(index=False):
            out.write(f"{u}::{i}::{r}::{t}\n")
    with open(folder / "movies.dat", "w", encoding="latin-1", errors="replace") as out:
        for row in item.itertuples():
            out.write(f"{row.item_id}::{row.movie_title} ({row.release_year})::{row._4.replace(' ', '|')}\n")
    with open(folder / "users.dat", "w", encoding="latin-1") as out:
        for row in user.itertuples():
            out.write(f"{row.user_id}::{row.gender}::{row.age}::{row.occupation}::{row.zip_code}\n")
    return folder


def write_csv_layout(folder: Path, inter, item, readme: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ratings = inter[["user_id", "item_id", "rating", "timestamp"]].copy()
    ratings.columns = ["userId", "movieId", "rating", "timestamp"]
    ratings["rating"] = ratings["rating"].astype(float)  # 3.0 like the real csv releases
    ratings.to_csv(folder / "ratings.csv", index=False)
    movies = pd.DataFrame({"movieId": item["item_id"],
                           "title": item["movie_title"] + " (" + item["release_year"] + ")",
                           "genres": item.iloc[:, 3].str.replace(" ", "|")})
    movies.to_csv(folder / "movies.csv", index=False, quoting=csv.QUOTE_NONNUMERIC)
    if readme is not None:
        (folder / "README.txt").write_text(readme)
    return folder


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """A zip like GroupLens ships: every file under one top folder named like ``folder``."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{folder.name}/{path.name}")
    return zip_path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> sha256 of its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} | {
            str(p.relative_to(folder)) + "/": "dir" for p in folder.rglob("*") if p.is_dir()}


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("layout", ["100k", "1m", "csv", "zip"])
def test_every_layout_round_trips_the_real_ml100k(layout, ml100k, tmp_path, capsys):
    inter, item, user = ml100k
    if layout == "100k":
        src, expected_layout = write_100k_layout(tmp_path / "ml-100k", *ml100k), "100k"
    elif layout == "1m":
        src, expected_layout = write_1m_layout(tmp_path / "ml-1m", *ml100k), "dat"
    elif layout == "csv":
        src, expected_layout = write_csv_layout(tmp_path / "ml-latest-small", inter, item), "csv"
    else:
        src = zip_folder(write_1m_layout(tmp_path / "ml-1m", *ml100k), tmp_path / "ml-1m.zip")
        expected_layout = "dat"

    assert main(["convert", str(src), str(tmp_path / "out"), "--name", "rt"]) == 0
    out = tmp_path / "out" / "rt"
    np.testing.assert_array_equal(inter_multiset(out / "rt.inter"), inter_multiset(RECBOLE_ML100K / "ml-100k.inter"))

    stats = json.loads((out / "rt.stats.json").read_text())
    assert (stats["rows"], stats["users"], stats["items"], stats["layout"]) == (100_000, 943, 1682, expected_layout)
    assert stats["time_range"]["min"] == int(inter["timestamp"].astype(int).min())
    assert stats["time_range"]["max"] == int(inter["timestamp"].astype(int).max())

    items = pd.read_csv(out / "rt.item", sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    assert list(items.columns) == ["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"]
    assert len(items) == len(item)
    toy_story = items[items["item_id:token"] == "1"].iloc[0].tolist()
    assert toy_story == ["1", "Toy Story", "1995", "Animation Children's Comedy"]
    if layout != "csv":
        users = pd.read_csv(out / "rt.user", sep="\t", dtype=str, keep_default_na=False)
        assert users.iloc[0].tolist() == ["1", "24", "M", "technician", "85711"]
        assert len(users) == 943
    else:
        assert not (out / "rt.user").exists()
    assert "rt.inter" in capsys.readouterr().out


def test_converted_dataset_loads_in_recbole(ml100k, tmp_path, monkeypatch):
    from recbole.config import Config
    from recbole.data import create_dataset

    write_csv_layout(tmp_path / "src", ml100k[0], ml100k[1])
    convert_movielens(tmp_path / "src", tmp_path / "data", name="ml-local")
    monkeypatch.chdir(tmp_path)  # RecBole writes log/ into the working directory
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # Config reads --key=value from argv
    config = Config(model="SASRec", dataset="ml-local", config_dict={
        "data_path": str(tmp_path / "data"), "show_progress": False, "state": "ERROR",
        "train_neg_sample_args": None,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"],
                     "item": ["item_id", "movie_title", "release_year", "genre"]},
    })
    dataset = create_dataset(config)
    assert dataset.inter_num == 100_000
    assert dataset.user_num == 943 + 1 and dataset.item_num == 1682 + 1  # + padding id
    timestamps = np.asarray(dataset.inter_feat["timestamp"])
    assert timestamps.min() >= 874_724_710 - 128 and timestamps.max() <= 893_286_638 + 128


def test_latin1_titles_tabs_and_exact_integer_timestamps(tmp_path):
    src = tmp_path / "ml-1m"
    src.mkdir()
    (src / "ratings.dat").write_bytes(b"1::2::5::1697164147\n1::3::4::978300760\n")
    (src / "movies.dat").write_bytes("2::Misérables, Les (1995)::Drama|Musical\n"
                                     "3::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n"
                                     .encode("latin-1"))
    (src / "users.dat").write_bytes(b"1::F::1::10::48067\n")
    assert main(["convert", str(src), str(tmp_path / "out"), "--name", "acc"]) == 0
    out = tmp_path / "out" / "acc"
    item_lines = (out / "acc.item").read_text(encoding="utf-8").splitlines()
    assert item_lines[1] == "2\tMisérables, Les\t1995\tDrama Musical"
    assert item_lines[2] == "3\tAmélie (Fabuleux destin d'Amélie Poulain, Le)\t2001\tComedy Romance"
    inter_lines = (out / "acc.inter").read_text().splitlines()
    assert inter_lines[1] == "1\t2\t5.0\t1697164147"  # never 1.697164147e9

    # a csv title with a tab and a newline inside its quotes stays one field of one line
    csv_src = tmp_path / "csvsrc"
    csv_src.mkdir()
    (csv_src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n7,9,3.5,1000000000\n")
    (csv_src / "movies.csv").write_text('movieId,title,genres\n9,"Odd\ttitle,\nwith ""quotes"" (1999)",(no genres listed)\n')
    assert main(["convert", str(csv_src), str(tmp_path / "out"), "--name", "odd"]) == 0
    lines = (tmp_path / "out" / "odd" / "odd.item").read_text().splitlines()
    assert lines[1:] == ['9\tOdd title, with "quotes"\t1999\t']
    assert (tmp_path / "out" / "odd" / "odd.inter").read_text().splitlines()[1] == "7\t9\t3.5\t1000000000"


@pytest.mark.parametrize("files, readme, expected", [
    ({"ratings.dat": "1::2::3::4\n", "movies.dat": "2::A (1990)::Drama\n", "users.dat": "1::F::1::10::1\n"}, None, "ml-1m"),
    ({"ratings.dat": "1::2::3::4\n", "movies.dat": "2::A (1990)::Drama\n", "tags.dat": "1::2::x::4\n"}, None, "ml-10m"),
    ({"ratings.csv": "userId,movieId,rating,timestamp\n1,2,3.0,4\n"}, "This dataset (ml-25m) describes", "ml-25m"),
    ({"ratings.csv": "userId,movieId,rating,timestamp\n1,2,3.0,4\n"}, None, "ml-csv"),
    ({"u.data": "1\t2\t3\t4\n"}, None, "ml-100k"),
])
def test_default_name_follows_the_documented_rule(files, readme, expected, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    if readme:
        (src / "README.txt").write_text(readme)
    stats = convert_movielens(src, tmp_path / "out")
    assert stats["name"] == expected
    assert (tmp_path / "out" / expected / f"{expected}.inter").is_file()


def test_progress_lines_go_to_stderr(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    rows = "\n".join(f"{u},{u % 7 + 1},4.0,{1_000_000_000 + u}" for u in range(1, 2501))
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + rows + "\n")
    convert_movielens(src, tmp_path / "out", name="p", chunk_rows=500,
                      progress=lambda m: print(m, file=sys.stderr), progress_every=1000)
    err = capsys.readouterr().err
    assert "1,000 ratings read" in err and "2,000 ratings read" in err


# --------------------------------------------------------------------------- bad input
GOOD_CSV = "userId,movieId,rating,timestamp\n1,10,4.0,978300760\n2,10,3.5,978300761\n2,11,5.0,978300762\n"
GOOD_DAT = "1::10::4::978300760\n2::10::3::978300761\n2::11::5::978300762\n"
GOOD_UDATA = "1\t10\t4\t978300760\n2\t10\t3\t978300761\n2\t11\t5\t978300762\n"
MOVIES_DAT = "10::Heat (1995)::Action|Crime\n11::Casino (1995)::Drama\n"

BAD_INPUTS = {
    # case: ({file: content}, file named in the message, message fragments)
    "empty ratings.csv": ({"ratings.csv": ""}, "ratings.csv", ["line 1", "empty", "expected the header"]),
    "header only": ({"ratings.csv": "userId,movieId,rating,timestamp\n"}, "ratings.csv", ["no ratings"]),
    "wrong header": ({"ratings.csv": "user,item,rating,time\n1,10,4.0,978300760\n"}, "ratings.csv",
                     ["line 1", "expected the header 'userId,movieId,rating,timestamp'"]),
    "truncated u.data": ({"u.data": GOOD_UDATA + "3\t12\t4"}, "u.data", ["line 4", "expected 4 fields", "found 3"]),
    "missing field in ratings.dat": ({"ratings.dat": "1::10::4::978300760\n2::10::3\n", "movies.dat": MOVIES_DAT},
                                     "ratings.dat", ["line 2", "expected 4 fields", "'::'"]),
    "extra field": ({"ratings.csv": GOOD_CSV + "3,10,4.0,978300763,9\n"}, "ratings.csv", ["line 5", "found 5"]),
    "single colon": ({"ratings.dat": GOOD_DAT + "3:10::4::978300763\n", "movies.dat": MOVIES_DAT}, "ratings.dat",
                     ["line 4", "expected 4 fields"]),
    "non-numeric timestamp": ({"ratings.csv": GOOD_CSV + "3,10,4.0,yesterday\n"}, "ratings.csv",
                              ["line 5", "expected integer epoch seconds", "'yesterday'"]),
    "fractional timestamp": ({"ratings.dat": GOOD_DAT + "3::10::4::978300763.5\n", "movies.dat": MOVIES_DAT}, "ratings.dat",
                        ["line 4", "expected integer epoch seconds"]),
    "negative timestamp": ({"u.data": GOOD_UDATA + "3\t10\t4\t-5\n"}, "u.data", ["line 4", "non-negative timestamp"]),
    "blank rating": ({"ratings.csv": "userId,movieId,rating,timestamp\n1,10,,978300760\n"}, "ratings.csv",
                     ["line 2", "rating is blank"]),
    "non-numeric user": ({"ratings.csv": GOOD_CSV + "abc,10,4.0,978300763\n"}, "ratings.csv",
                         ["line 5", "expected an integer user id"]),
    "binary garbage": ({"u.data": GOOD_UDATA + "\x00\x9f\x01garbage\xff\xfe\n"}, "u.data", ["line 4", "expected 4 fields"]),
    "bad movies.dat after good ratings": ({"ratings.dat": GOOD_DAT, "movies.dat": MOVIES_DAT + "x::Bad (2000)::Drama\n"},
                                          "movies.dat", ["line 3", "expected an integer movie id"]),
    "bad users.dat": ({"ratings.dat": GOOD_DAT, "movies.dat": MOVIES_DAT, "users.dat": "1::F::1::10\n"},
                      "users.dat", ["line 1", "expected 5 fields"]),
    "movies.csv wrong header": ({"ratings.csv": GOOD_CSV, "movies.csv": "id,name\n10,Heat\n"}, "movies.csv",
                                ["line 1", "expected the header 'movieId,title,genres'"]),
    "no known files": ({"notes.txt": "hello\n", "data.tsv": "1\t2\n"}, "src", ["no MovieLens ratings file", "notes.txt"]),
}


@pytest.fixture
def good_output(tmp_path):
    """An output folder holding a good earlier conversion named 'demo'."""
    src = tmp_path / "good"
    src.mkdir()
    (src / "ratings.dat").write_text(GOOD_DAT)
    (src / "movies.dat").write_text(MOVIES_DAT)
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--name", "demo"]) == 0
    before = snapshot(out)
    assert "demo/demo.inter" in before
    return out, before


def _write_source(folder: Path, files: dict) -> Path:
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content.encode("latin-1"))
    return folder


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_cleanly_and_keeps_the_old_output(case, good_output, tmp_path, capsys):
    files, culprit, fragments = BAD_INPUTS[case]
    out, before = good_output
    src = _write_source(tmp_path / "src", files)
    capsys.readouterr()

    code = main(["convert", str(src), str(out), "--name", "demo", "--overwrite"])  # even asked to replace it
    err = capsys.readouterr().err
    assert code == 2
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: ")
    assert str(src / culprit if culprit != "src" else src) in message
    for fragment in fragments:
        assert fragment in message
    assert snapshot(out) == before  # byte-identical, no new file, no leftover staging folder

    fresh = tmp_path / "fresh" / "data"
    assert main(["convert", str(src), str(fresh)]) == 2
    assert not (tmp_path / "fresh").exists()


def test_broken_zips_fail_cleanly(good_output, tmp_path, capsys):
    out, before = good_output
    good_src = _write_source(tmp_path / "ml-1m", {"ratings.dat": GOOD_DAT * 50, "movies.dat": MOVIES_DAT})
    archive = zip_folder(good_src, tmp_path / "ml-1m.zip")
    data = archive.read_bytes()

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    not_a_zip = tmp_path / "noise.zip"
    not_a_zip.write_bytes(bytes(range(256)) * 10)
    # same size, so the directory is intact, but the compressed ratings data is corrupted
    corrupted = tmp_path / "corrupted.zip"
    offset = data.index(b"ml-1m/ratings.dat") + len("ml-1m/ratings.dat") + 20
    corrupted.write_bytes(data[:offset] + bytes(b ^ 0x5A for b in data[offset:offset + 40]) + data[offset + 40:])

    for bad in (truncated, not_a_zip, corrupted):
        capsys.readouterr()
        assert main(["convert", str(bad), str(out), "--name", "demo", "--overwrite"]) == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith(f"error: {bad}") and "zip" in message, message
        assert snapshot(out) == before


def test_missing_source_and_bad_name(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    src = _write_source(tmp_path / "src", {"ratings.csv": GOOD_CSV})
    assert main(["convert", str(src), str(tmp_path / "out"), "--name", "../x"]) == 2
    assert "expected a plain dataset name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
