"""Nothing is overwritten without being asked: a second ``train`` into a run folder, a run
into a folder of other files and a second ``convert`` into a dataset are refused with what is
there and the ways on; ``--overwrite`` replaces on request; ``--resume`` refuses another
model or dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ss4rec.cli import main as cli_main
from ss4rec.training.runfolder import check_run_folder

GRU = ["--model", "GRU4Rec", "--config", "tiny", "--set", "hidden_size=16", "--set", "MAX_ITEM_LIST_LENGTH=10",
       "--device", "cpu"]


def _digest(folder: Path) -> dict:
    """Every file under ``folder`` -> its SHA-256 (the lock file aside: it is emptied on exit)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".ss4rec.lock"}


def _last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("keep") / "run"
    assert cli_main(["train", *GRU, "--output", str(run)]) == 0
    return run


def test_train_twice_into_one_folder_keeps_the_first_run(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(finished_run, run)
    before = _digest(run)
    capsys.readouterr()
    assert cli_main(["train", *GRU, "--set", "seed=7", "--output", str(run)]) == 2
    line = _last_error(capsys)
    assert f"--output {run} already holds a finished run (results.json" in line
    assert "--resume" in line and "GRU4Rec-last.pth" in line and "new --output" in line and "--overwrite" in line
    assert _digest(run) == before  # results.json, checkpoints, curves.png, train.log: all intact

    # Asked for: --overwrite replaces the earlier run (its files go first; others stay).
    (run / "notes.txt").write_text("mine", encoding="utf-8")
    assert cli_main(["train", *GRU, "--set", "seed=7", "--output", str(run), "--overwrite"]) == 0
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["config"]["seed"] == 7
    assert (run / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert "--overwrite: removed the earlier run's results.json" in (run / "train.log").read_text(encoding="utf-8")


def test_a_folder_of_other_files_is_refused_and_untouched(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "results.csv"):
        (folder / name).write_text(name, encoding="utf-8")
    before = _digest(folder)
    assert cli_main(["train", *GRU, "--output", str(folder)]) == 2
    line = _last_error(capsys)
    assert "3 other file(s) that are not a run (a.jpg, b.jpg, results.csv)" in line and "--overwrite" in line
    assert _digest(folder) == before and sorted(p.name for p in folder.iterdir()) == ["a.jpg", "b.jpg", "results.csv"]


def test_what_a_new_run_may_start_in(tmp_path):
    check_run_folder(tmp_path / "missing")  # created by the run
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty")
    (tmp_path / "planned").mkdir()
    (tmp_path / "planned" / "preflight.json").write_text("{}", encoding="utf-8")  # preflight --output
    (tmp_path / "planned" / "plan.txt").write_text("plan", encoding="utf-8")  # runpod_entrypoint.sh
    check_run_folder(tmp_path / "planned")
    (tmp_path / "crashed" / "checkpoints").mkdir(parents=True)
    (tmp_path / "crashed" / "train.log").write_text("...", encoding="utf-8")
    from ss4rec.errors import UserError

    with pytest.raises(UserError, match="an earlier run that did not finish"):
        check_run_folder(tmp_path / "crashed")


def test_resume_refuses_another_model_or_dataset(finished_run, tmp_path, capsys):
    last = finished_run / "checkpoints" / "GRU4Rec-last.pth"
    before = _digest(finished_run)
    sas = ["--model", "SASRec", *GRU[2:]]
    assert cli_main(["train", *sas, "--set", "epochs=2", "--resume", str(last)]) == 2
    line = _last_error(capsys)
    assert "belongs to another run (model 'GRU4Rec' there, --model 'SASRec' now)" in line
    data = tmp_path / "data" / "other"
    data.mkdir(parents=True)
    import recbole

    source = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    (data / "other.inter").write_bytes(source.read_bytes())
    assert cli_main(["train", *GRU, "--dataset", "other", "--data-path", str(tmp_path / "data"),
                     "--resume", str(last)]) == 2
    assert "dataset 'ml-100k' there, --dataset 'other' now" in _last_error(capsys)
    assert _digest(finished_run) == before


def _movielens_1m(folder: Path, users: int) -> Path:
    folder.mkdir(parents=True)
    lines = [f"{u}::{i}::4::{978300000 + 60 * (u * 10 + i)}" for u in range(1, users + 1) for i in range(1, 6)]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    movies = [f"{i}::Movie {i} (1999)::Drama" for i in range(1, 6)]
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    return folder


def test_convert_twice_keeps_the_first_dataset(tmp_path, capsys):
    first, second = _movielens_1m(tmp_path / "v1", 3), _movielens_1m(tmp_path / "v2", 4)
    out = tmp_path / "data"
    assert cli_main(["convert", str(first), str(out), "--name", "mine"]) == 0
    before = _digest(out)
    capsys.readouterr()
    assert cli_main(["convert", str(second), str(out), "--name", "mine"]) == 2
    line = _last_error(capsys)
    assert f"{out / 'mine'} already holds mine.inter" in line and "--overwrite" in line and "--name" in line
    assert _digest(out) == before
    # Without --name the name is found while converting: refused at the end, still nothing changed.
    assert cli_main(["convert", str(first), str(tmp_path / "data2")]) == 0
    before = _digest(tmp_path / "data2")
    assert cli_main(["convert", str(second), str(tmp_path / "data2")]) == 2
    assert "already holds" in _last_error(capsys) and _digest(tmp_path / "data2") == before
    assert not list((tmp_path / "data2").glob(".ss4rec-partial-*"))
    # Asked for: replaced.
    assert cli_main(["convert", str(second), str(out), "--name", "mine", "--overwrite"]) == 0
    assert len((out / "mine" / "mine.inter").read_text(encoding="utf-8").splitlines()) == 1 + 4 * 5
