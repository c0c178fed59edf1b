"""One validation layer: bad settings and bad data get the same one-line verdict from
``train`` and ``preflight``, before any run folder exists; warnings reach the run's log."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ss4rec.cli import main as cli_main
from ss4rec.errors import ConfigError
from ss4rec.config.validation import RULES, check_values

HEADER = "user_id:token\titem_id:token\ttimestamp:float"
SMALL = ["--config", "tiny", "--set", "d_state=8", "--set", "d_P=8", "--set", "expand=1", "--device", "cpu"]


def _ml100k_rows(max_user=120):
    import recbole

    path = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return [(u, i, t) for u, i, _, t in rows if int(u) <= max_user]


def _lines(rows):
    return "".join("\t".join(map(str, r)) + "\n" for r in rows)


def _corpus():
    """name -> .inter text; each made from real ML-100K rows."""
    rows = _ml100k_rows()
    return {
        "bom": "\ufeff" + HEADER + "\n" + _lines(rows),
        "empty": "",
        "header_only": HEADER + "\n",
        "one_each": HEADER + "\n" + _lines((n, i, t) for n, (_, i, t) in enumerate(rows[:400])),
        "no_time_column": "user_id:token\titem_id:token\n" + _lines((u, i) for u, i, _ in rows),
        "text_times": HEADER + "\n" + _lines((u, i, "yesterday") for u, i, _ in rows),
        "nan_times": HEADER + "\n" + _lines((u, i, "nan" if n % 9 == 0 else t) for n, (u, i, t) in enumerate(rows)),
        "negative_times": HEADER + "\n" + _lines((u, i, -float(t)) for u, i, t in rows),
        "untyped_header": "user_id\titem_id\ttimestamp\n" + _lines(rows),
    }


REFUSED_DATA = {
    "bom": "byte-order mark (BOM)",
    "empty": "is empty (0 bytes)",
    "header_only": "has a header but no rows",
    "one_each": "every user in one_each.inter has one interaction",
    "no_time_column": "has no 'timestamp' column",
    "text_times": "not finite non-negative numbers; first at line 2: 'yesterday'",
    "nan_times": "first at line 2: 'nan'",
    "negative_times": "not finite non-negative numbers",
    "untyped_header": "header column(s)",
}

REFUSED_SETTINGS = {
    "epochs=abc": "epochs='abc'", "epochs=0": "epochs=0", "learning_rate=-1": "learning_rate=-1",
    "MAX_ITEM_LIST_LENGTH=0": "MAX_ITEM_LIST_LENGTH=0", "train_batch_size=0": "train_batch_size=0",
    "eval_batch_size=0": "eval_batch_size=0", "stopping_step=-1": "stopping_step=-1",
    "hidden_size=0": "hidden_size=0", "dropout_prob=1.5": "dropout_prob=1.5", "weight_decay=-1": "weight_decay=-1",
    "topk=[0]": "topk=[0]", "seed=abc": "seed='abc'", "clip_grad_norm=abc": "clip_grad_norm='abc'",
    "grad_accum_steps=0": "grad_accum_steps=0", "guard_nonfinite=maybe": "guard_nonfinite='maybe'",
    "train_mode=windows": "train_mode='windows'",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name, text in _corpus().items():
        (root / name).mkdir()
        (root / name / f"{name}.inter").write_text(text, encoding="utf-8")
    return root


def _verdicts(args, out, capsys):
    """(train's exit code and last stderr line, preflight's), both on the same arguments."""
    train_code = cli_main(["train", *args, "--output", str(out)])
    train_err = capsys.readouterr().err
    pre_code = cli_main(["preflight", *args])
    pre_err = capsys.readouterr().err
    for err in (train_err, pre_err):
        assert "Traceback" not in err, err[-2000:]
    return (train_code, train_err.strip().splitlines()[-1]), (pre_code, pre_err.strip().splitlines()[-1])


def _cause(line):
    """``error: preflight data/rows: CAUSE`` or ``error: CAUSE`` -> CAUSE."""
    return re.sub(r"^error: (preflight [a-z]+/[^:]+: )?", "", line)


@pytest.mark.parametrize("name", sorted(REFUSED_DATA))
def test_bad_data_same_verdict_from_train_and_preflight(name, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    (train_code, train_line), (pre_code, pre_line) = _verdicts(
        ["--dataset", name, "--data-path", str(corpus), *SMALL], out, capsys)
    assert train_code == 2 and pre_code != 0
    assert REFUSED_DATA[name] in train_line
    assert _cause(train_line) == _cause(pre_line)
    assert not out.exists()  # refused before the run folder


@pytest.mark.parametrize("setting", sorted(REFUSED_SETTINGS))
def test_bad_settings_same_verdict_from_train_and_preflight(setting, tmp_path, capsys):
    out = tmp_path / "run"
    (train_code, train_line), (pre_code, pre_line) = _verdicts([*SMALL, "--set", setting], out, capsys)
    assert train_code == 2 and pre_code != 0
    assert REFUSED_SETTINGS[setting] in train_line and "use " in train_line
    assert _cause(train_line) == _cause(pre_line)
    assert not out.exists()


def test_millisecond_times_and_duplicate_rows_are_warnings_in_the_run_log(tmp_path, capsys):
    rows = _ml100k_rows(80)
    data = tmp_path / "data"
    (data / "warned").mkdir(parents=True)
    ms = [(u, i, int(t) * 1000) for u, i, t in rows]
    (data / "warned" / "warned.inter").write_text(HEADER + "\n" + _lines(ms + ms[:25]), encoding="utf-8")
    args = ["--dataset", "warned", "--data-path", str(data), *SMALL, "--set", "time_unit=1000"]
    assert cli_main(["preflight", *args]) == 0
    report = capsys.readouterr().out
    assert "look like milliseconds" in report and "--set time_unit=1000" in report
    assert "25 rows of warned.inter repeat an earlier" in report
    run = tmp_path / "run"
    assert cli_main(["train", *args, "--output", str(run)]) == 0
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "WARNING preflight data/timestamp unit:" in log and "WARNING preflight data/duplicate rows: 25 rows" in log


def test_rules_read_plainly():
    assert RULES["train_batch_size"].problem(0) == "use an integer >= 1"
    assert RULES["dropout_prob"].problem(1.0) == "use a number >= 0 and < 1"
    assert RULES["topk"].problem([5, 0]) == "use a list of integers, each >= 1"
    assert RULES["lr_schedule_steps"].problem(None) is None
    assert RULES["epochs"].problem(True) == "use an integer >= 1"  # a bool is not a count
    assert RULES["learning_rate"].problem(float("nan")) == "use a number >= 0"
    for key, good in [("epochs", 3), ("learning_rate", 1e-3), ("topk", [1, 10]), ("lr_scheduler", "Cosine")]:
        assert RULES[key].problem(good) is None
    # Keys without a rule must keep the type of their known default.
    check_values({"mf_embedding_size": 64}, defaults={"mf_embedding_size": 64})
    with pytest.raises(ConfigError, match=r"mf_embedding_size='big' \(from x.yaml\): use an integer"):
        check_values({"mf_embedding_size": "big"}, "x.yaml", {"mf_embedding_size": 64})


def test_config_and_guards_no_longer_import_each_other():
    src = Path(__file__).resolve().parents[1] / "src" / "ss4rec"

    def imports(path):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert "ss4rec.training.guards" not in imports(src / "config" / "files.py")
    assert "ss4rec.config.files" not in imports(src / "training" / "guards.py")
    assert "ss4rec.config.files" not in imports(src / "config" / "validation.py")
