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
        "duplicate_column": HEADER + "\titem_id:token\n" + _lines((u, i, t, i) for u, i, t in rows),
        "latin1_bytes": (HEADER + "\n" + _lines(rows[:50]) + "7\tcaf\xe9\t881250949\n" + _lines(rows[50:])
                         ).encode("latin-1"),
        "control_chars": HEADER + "\n" + _lines(rows[:30]) + "7\t2\x01\t881250949\n" + _lines(rows[30:]),
        "ragged_line": HEADER + "\n" + _lines(rows[:10]) + "7\t2\t881250949\t5\n" + _lines(rows[10:]),
        "two_each": HEADER + "\n" + _lines((n // 2, i, t) for n, (_, i, t) in enumerate(rows[:600])),
        # NAME.inter is fine; what RecBole loads beside it is not
        "empty_item": {"inter": HEADER + "\n" + _lines(rows), "item": ""},
        "bad_item": {"inter": HEADER + "\n" + _lines(rows),
                     "item": "item_id:token\tmovie_title:token_seq\titem_id:float\n1\tx\t2\n"},
        # NAME.inter that is no file
        "folder_inter": "<folder>",
        "looping_inter": "<loop>",
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
    "duplicate_column": "line 1, column 4: header column 'item_id:token' repeats column 2",
    "latin1_bytes": "latin1_bytes.inter: line 52, column 2: byte 0xe9 is not UTF-8",
    "control_chars": "control_chars.inter: line 32, column 2: control character 0x01",
    "ragged_line": "ragged_line.inter: line 12: 4 tab-separated fields, the header has 3",
    "two_each": "leaves no valid and no test interactions",
    "empty_item": "empty_item.item is empty (0 bytes)",
    "bad_item": "bad_item.item: line 1, column 3: header column 'item_id:float' repeats column 1",
    "folder_inter": "folder_inter.inter is a folder, not a file",
    "looping_inter": "looping_inter.inter is a symbolic link loop",
}

REFUSED_SETTINGS = {
    "epochs=abc": "epochs='abc'", "epochs=0": "epochs=0", "learning_rate=-1": "learning_rate=-1",
    "MAX_ITEM_LIST_LENGTH=0": "MAX_ITEM_LIST_LENGTH=0", "train_batch_size=0": "train_batch_size=0",
    "eval_batch_size=0": "eval_batch_size=0", "stopping_step=-1": "stopping_step=-1",
    "hidden_size=0": "hidden_size=0", "dropout_prob=1.5": "dropout_prob=1.5", "weight_decay=-1": "weight_decay=-1",
    "topk=[0]": "topk=[0]", "seed=abc": "seed='abc'", "clip_grad_norm=abc": "clip_grad_norm='abc'",
    "grad_accum_steps=0": "grad_accum_steps=0", "guard_nonfinite=maybe": "guard_nonfinite='maybe'",
    "train_mode=windows": "train_mode='windows'",
    "seed=-1": "seed=-1", "seed=99999999999": "seed=99999999999",
    "load_col=abc": "load_col='abc'", "load_col={inter: user_id}": "load_col={'inter': 'user_id'}",
    "metrics=[Hit, Recal]": "unknown metric(s) ['Recal']", "valid_metric=NDCG@50": "valid_metric='NDCG@50'",
    "valid_metric=Recall@10": "not among the metrics computed",
    "eval_args=abc": "eval_args='abc'", "eval_args={split: {RS: [1]}}": "split RS: use 3 ratios",
    "eval_args={split: {LS: test_only}}": "split LS: use valid_and_test",
    "eval_args={order: time}": "order: use RO", "eval_args={spilt: {RS: [0.8,0.1,0.1]}}": "unknown key(s) ['spilt']",
    "clip_grad_norm={max_norm: 5, max_nrom: 1}": "unknown key(s) ['max_nrom']",
    "clip_grad_norm={max_norm: -1}": "gradient ascent", "clip_grad_norm={}": "max_norm is missing",
    "train_neg_sample_args={distribution: gaussian}": "distribution: use uniform",
    "user_inter_num_interval=40": "use an interval such as",
}


# The packaged tiny config loads only NAME.inter's columns; these need every file loaded.
EXTRA_ARGS = {"empty_item": ["--set", "load_col=~"], "bad_item": ["--set", "load_col=~"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name, content in _corpus().items():
        folder = root / name
        folder.mkdir()
        files = content if isinstance(content, dict) else {"inter": content}
        for suffix, text in files.items():
            path = folder / f"{name}.{suffix}"
            if text == "<folder>":
                path.mkdir()
            elif text == "<loop>":
                path.symlink_to(path.name)
            else:
                path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
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
        ["--dataset", name, "--data-path", str(corpus), *SMALL, *EXTRA_ARGS.get(name, [])], out, capsys)
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


REFUSED_RUNS = {
    "sasrec_heads": (["--model", "SASRec", "--config", "tiny", "--set", "hidden_size=30", "--set", "n_heads=4",
                      "--device", "cpu"], "hidden_size=30 is not divisible by n_heads=4"),
    "length_that_cannot_fit": ([*SMALL, "--set", "MAX_ITEM_LIST_LENGTH=50000000"], "GB, but"),
    "filters_remove_every_row": ([*SMALL, "--set", "user_inter_num_interval=[5000,inf)"], "leave no rows"),
    "nproc_beyond_cpus": ([*SMALL, "--nproc", "4096"], "--nproc 4096 --device cpu: this machine gives"),
}


@pytest.mark.parametrize("name", sorted(REFUSED_RUNS))
def test_bad_runs_same_verdict_from_train_and_preflight(name, tmp_path, capsys):
    args, cause = REFUSED_RUNS[name]
    out = tmp_path / "run"
    (train_code, train_line), (pre_code, pre_line) = _verdicts(args, out, capsys)
    assert train_code == 2 and pre_code != 0
    assert cause in train_line, train_line
    free = re.compile(r"[0-9.]+ GB is")  # memory available moves between the two calls
    assert free.sub("", _cause(train_line)) == free.sub("", _cause(pre_line))
    assert not out.exists()


def test_a_port_out_of_range_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", *SMALL, "--nproc", "2", "--port", "99999"])
    assert exit_.value.code == 2
    assert "'99999' is not a TCP port: use a number from 1 to 65535" in capsys.readouterr().err


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


def test_convert_output_with_quoted_titles_reads_the_same_in_checks_and_loader(tmp_path, capsys):
    """A MovieLens title that begins with a quote: `ss4rec convert` writes it as it is, and
    RecBole's loader reads it literally, as the data checks do (no field swallows the next lines)."""
    from ss4rec.data.loaders import create_dataset
    from ss4rec.pipeline.settings import build_config

    rows = _ml100k_rows(120)
    source = tmp_path / "ml-1m-like"
    source.mkdir()
    (source / "ratings.dat").write_text("".join(f"{u}::{i}::4::{t}\n" for u, i, t in rows), encoding="latin-1")
    items = sorted({int(i) for _, i, _ in rows})
    titles = {i: (f'"Quoted {i}" and more (1999)' if n % 7 == 0 else f"Movie {i} (1999)") for n, i in enumerate(items)}
    (source / "movies.dat").write_text("".join(f"{i}::{titles[i]}::Drama\n" for i in items), encoding="latin-1")
    data = tmp_path / "data"
    assert cli_main(["convert", str(source), str(data), "--name", "quoted"]) == 0
    item_file = data / "quoted" / "quoted.item"
    assert sum(1 for line in item_file.read_text(encoding="utf-8").splitlines()[1:] if line.split("\t")[1].startswith('"')) > 10
    args = ["--dataset", "quoted", "--data-path", str(data), *SMALL, "--set", "load_col=~"]
    assert cli_main(["preflight", "--no-env", *args]) == 0
    config, _ = build_config("SS4Rec", "quoted", ["tiny"], {"load_col": None, "data_path": str(data)}, device="cpu")
    dataset = create_dataset(config)
    assert len(dataset.item_feat) == len(items) + 1  # every item row, plus padding
    capsys.readouterr()


# ---- the other commands: one clear line (exit 2) where a traceback or an unclear message was ----

def _refused(argv, capsys) -> str:
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    return err.strip().splitlines()[-1]


def test_outputs_that_cannot_be_written_are_refused_before_the_work(ss4rec_ce_run, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    checkpoint = ss4rec_ce_run["checkpoint"]
    line = _refused(["evaluate", "--checkpoint", checkpoint, "--output", str(a_file)], capsys)
    assert line == f"error: --output {a_file} is a file: give a folder path"
    line = _refused(["evaluate", "--checkpoint", checkpoint, "--output", str(a_file / "below")], capsys)
    assert f"lies under the file {a_file}" in line
    line = _refused(["preflight", *SMALL, "--output", str(a_file)], capsys)
    assert line == f"error: --output {a_file} is a file: give a folder path"
    run_dir = ss4rec_ce_run["run_dir"]
    line = _refused(["report", run_dir, "--plot", str(tmp_path)], capsys)
    assert f"--plot {tmp_path} is a folder: give a file path" in line
    line = _refused(["drift", "--past", "p.inter", "--future", "f.inter", "--output", str(a_file)], capsys)
    assert "is a file" in line
    assert a_file.read_text(encoding="utf-8") == "x"


def test_report_names_the_file_it_writes_and_refuses_damaged_results(ss4rec_ce_run, tmp_path, capsys):
    plot = tmp_path / "summary"
    assert cli_main(["report", ss4rec_ce_run["run_dir"], "--plot", str(plot)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"plot: {plot}.png" and plot.with_suffix(".png").is_file()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "results.json").write_text('{"model": "SS4Rec", "test": {', encoding="utf-8")
    line = _refused(["report", str(damaged), "--plot", str(tmp_path / "r.png")], capsys)
    assert f"{damaged / 'results.json'} is damaged (line 1, column" in line
    (damaged / "results.json").write_text("[1, 2]", encoding="utf-8")
    assert "is not the results.json of an `ss4rec train` run" in _refused(["report", str(damaged)], capsys)


def test_a_binary_users_file_is_refused(ss4rec_ce_run, tmp_path, capsys):
    users = tmp_path / "users.bin"
    users.write_bytes(bytes(range(256)))
    line = _refused(["recommend", "--checkpoint", ss4rec_ce_run["checkpoint"], "--users-file", str(users)], capsys)
    assert f"--users-file {users}: line 1: control character 0x00" in line or "is not UTF-8 text" in line


def test_a_failed_checkpoint_write_is_one_line_and_earlier_checkpoints_stay(tmp_path):
    """A full disk (here: a file-size limit, which fails the write the same way) while saving."""
    import resource
    import signal
    import subprocess
    import sys

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG), do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ss4rec", "train", "--model", "GRU4Rec", "--config", "tiny",
                           "--set", "hidden_size=64", "--set", "MAX_ITEM_LIST_LENGTH=10", "--device", "cpu",
                           "--output", str(run)], capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write checkpoint {run / 'checkpoints'}") and "(File too large" in line
    assert "the checkpoints written before it are intact" in line
    assert not list((run / "checkpoints").glob(".*.tmp"))  # nothing half-written


def test_the_python_api_takes_one_config_name_and_refuses_wrong_types():
    from ss4rec.pipeline.settings import build_config

    config, _ = build_config("SASRec", "ml-100k", "tiny", {"hidden_size": 16}, device="cpu")
    assert config["user_inter_num_interval"] == [0, 40]  # "tiny" is one file, not ['t', 'i', 'n', 'y']
    with pytest.raises(ConfigError, match=r"model=123: use a model name"):
        build_config(123, "ml-100k", ["tiny"], device="cpu")
    with pytest.raises(ConfigError, match=r"config_dict=\['epochs'\]: use a dict"):
        build_config("SASRec", "ml-100k", ["tiny"], ["epochs"], device="cpu")
