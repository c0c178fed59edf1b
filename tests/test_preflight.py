"""ss4rec.pipeline.preflight on real data: a full table on good input, FAIL lines for broken runs.

Real RecBole datasets and models throughout; the "NaN at the first batch" model is a
real RecBole SASRec whose loss is made NaN, defined here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as RecBoleGRU4Rec
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from conftest import TINY_SS4REC
from ss4rec.cli import main as cli_main
from ss4rec.config.files import _recbole_dir
from ss4rec.models.ss4rec import SS4Rec as OurSS4Rec
from ss4rec.pipeline.preflight import FAIL, PASS, SECTIONS, SKIP, preflight

BUNDLED_INTER = _recbole_dir() / "dataset_example" / "ml-100k" / "ml-100k.inter"


class SASRec(RecBoleSASRec):
    """RecBole's SASRec (named like it, so its defaults load) whose loss is NaN from the start."""

    def calculate_loss(self, interaction):
        return super().calculate_loss(interaction) * float("nan")


class SS4Rec(OurSS4Rec):
    """SS4Rec whose loss is 1e-12 times too small: its gradients underflow in fp16."""

    def calculate_loss(self, interaction):
        return super().calculate_loss(interaction) * 1e-12


class GRU4Rec(RecBoleGRU4Rec):
    """RecBole's GRU4Rec whose loss does not depend on its parameters: every gradient is 0."""

    def calculate_loss(self, interaction):
        return super().calculate_loss(interaction) * 0.0


def statuses(report) -> dict:
    return {(c.section, c.name): c.status for c in report.checks}


def detail(report, section, name) -> str:
    return next(c.detail for c in report.checks if (c.section, c.name) == (section, name))


def write_dataset(root: Path, name: str, header: str, extra_lines=(), rows: int = 2000) -> Path:
    """``root/name/name.inter``: the first ``rows`` ratings of ML-100K, then ``extra_lines``."""
    lines = BUNDLED_INTER.read_text(encoding="utf-8").splitlines()[1:rows + 1]
    folder = root / name
    folder.mkdir(parents=True)
    (folder / f"{name}.inter").write_text("\n".join([header, *lines, *extra_lines]) + "\n", encoding="utf-8")
    return root


def test_good_input_gives_a_full_table_of_passes():
    report = preflight("SS4Rec", "ml-100k", ["tiny"], dict(TINY_SS4REC), device="cpu")
    assert report.ok, report.table()
    got = statuses(report)
    assert {c.section for c in report.checks} == set(SECTIONS)
    for key in [("environment", "versions"), ("config", "keys and values"), ("config", "time field"),
                ("data", "timestamps"), ("data", "after filtering"), ("model", "forward"),
                ("model", "CE loss at init"), ("model", "backward"), ("optimiser", "learning rate"),
                ("estimate", "epoch time and memory")]:
        assert got[key] == PASS, (key, report.table())
    assert "305 users" in detail(report, "data", "after filtering")
    # the time axis of the file as read (before filtering): ML-100K's same-second facts, the auto unit
    assert got[("data", "time axis")] == PASS
    axis = detail(report, "data", "time axis")
    assert "415 of 943 users' last two" in axis and "time_unit auto = 37 s" in axis, axis
    # the CE loss at init is near ln(n_items) and the estimate is a real timing
    loss = float(detail(report, "model", "forward").split()[1])
    n_items = int(detail(report, "data", "after filtering").split()[2].replace(",", "")) + 1  # + padding
    assert abs(loss - math.log(n_items)) < 0.25 * math.log(n_items)
    assert f"ln(n_items) = {math.log(n_items):.3f}" in detail(report, "model", "CE loss at init")
    assert report.estimate["seconds_per_epoch"] > 0 and report.estimate["batches_per_epoch"] > 1
    table = report.table()
    assert table.splitlines()[0].split() == ["section", "check", "status", "detail"]
    assert table.splitlines()[-1] == "preflight PASS: 0 FAIL, 0 WARN"


def test_corrupted_timestamps_fail_with_the_line(tmp_path):
    root = write_dataset(tmp_path, "broken", "user_id:token\titem_id:token\trating:float\ttimestamp:float",
                         ["7\t8\t3\tnot-a-time", "9\t10\t4\t-5"])
    report = preflight("SS4Rec", "broken", (), {"data_path": str(root)}, device="cpu")
    assert not report.ok
    assert statuses(report)[("data", "timestamps")] == FAIL
    text = detail(report, "data", "timestamps")
    assert "2 of 2,002" in text and "line 2002" in text and "'not-a-time'" in text
    assert report.first_failure.startswith("preflight data/timestamps:")
    # the slow checks are not run on a doomed run
    assert statuses(report)[("model", "-")] == SKIP


def test_untyped_header_fails(tmp_path):
    root = write_dataset(tmp_path, "untyped", "user_id\titem_id\trating\ttimestamp")
    report = preflight("SASRec", "untyped", (), {"data_path": str(root)}, device="cpu")
    assert statuses(report)[("data", "header types")] == FAIL
    assert "name:type" in detail(report, "data", "header types")


def test_missing_dataset_fails_naming_the_converter(tmp_path):
    report = preflight("SS4Rec", "nothere", (), {"data_path": str(tmp_path)}, device="cpu")
    assert statuses(report)[("data", "files exist")] == FAIL
    assert "ss4rec convert" in detail(report, "data", "files exist")


def test_learning_rate_zero_fails():
    report = preflight("SS4Rec", "ml-100k", ["tiny"], {**TINY_SS4REC, "learning_rate": 0}, device="cpu")
    assert statuses(report)[("optimiser", "learning rate")] == FAIL
    assert "learning_rate=0" in report.first_failure


def test_unknown_key_and_ce_with_sampling_fail():
    report = preflight("SS4Rec", "ml-100k", ["tiny"], {"num_epochs": 3}, device="cpu")
    assert statuses(report)[("config", "keys and values")] == FAIL
    assert "did you mean 'epochs'" in report.first_failure
    sampling = {"loss_type": "CE", "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}
    report = preflight("SASRec", "ml-100k", ["tiny"], sampling, device="cpu")
    assert statuses(report)[("config", "loss vs sampling")] == FAIL
    assert "train_neg_sample_args=~" in report.first_failure


def test_cuda_backend_without_kernels_fails():
    report = preflight("SS4Rec", "ml-100k", ["tiny"], {**TINY_SS4REC, "mamba_backend": "cuda"}, device="cpu")
    assert statuses(report)[("environment", "mamba kernels")] == FAIL
    assert "mamba_backend=torch" in report.first_failure


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_device_without_gpu_fails():
    report = preflight("SS4Rec", "ml-100k", ["tiny"], dict(TINY_SS4REC), device="cuda")
    assert statuses(report)[("environment", "device")] == FAIL
    assert "--device cpu" in report.first_failure


def test_model_class_with_nan_loss_fails_at_the_first_batch():
    report = preflight(SASRec, "ml-100k", ["tiny"], {}, device="cpu")
    got = statuses(report)
    assert got[("data", "after filtering")] == PASS
    assert got[("model", "build")] == PASS
    assert got[("model", "forward")] == FAIL
    assert "loss is nan on the first real batch" in report.first_failure
    assert got[("estimate", "host memory")] == PASS  # estimated before anything was built
    assert got[("estimate", "epoch time and memory")] == SKIP


def test_cli_prints_the_table_writes_json_and_exits_1_on_fail(tmp_path, capsys):
    code = cli_main(["preflight", "--config", "tiny", "--set", "learning_rate=0", "--device", "cpu",
                     "--output", str(tmp_path), "--no-env"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "optimiser    learning rate" in out and "preflight FAIL: 1 FAIL" in out
    assert err.strip().splitlines()[-1].startswith("error: preflight optimiser/learning rate: learning_rate=0")
    saved = json.loads((tmp_path / "preflight.json").read_text())
    assert saved["ok"] is False and saved["counts"]["FAIL"] == 1


def test_host_memory_is_estimated_before_loading_and_fails_beyond_the_machine():
    from ss4rec.pipeline.preflight import PreflightReport, _check_host_memory, available_memory

    report = preflight("SS4Rec", "ml-100k", ["tiny"], {**TINY_SS4REC, "train_mode": "sequence"},
                       device="cpu", environment=None)
    got = statuses(report)
    assert got[("estimate", "host memory")] == PASS
    assert got[("estimate", "train modes")] == PASS
    names = [(c.section, c.name) for c in report.checks]
    assert names.index(("estimate", "host memory")) < names.index(("data", "after filtering"))
    line = next(c.detail for c in report.checks if c.name == "train modes")
    assert "train_mode sequence" in line and "prefix: ~" in line
    modes = report.estimate["seconds_per_epoch_by_mode"]
    assert modes["prefix"] > modes["sequence"] > 0

    # A log far larger than any machine: FAIL, naming the way out, before anything is built.
    assert available_memory() > 0
    huge = PreflightReport(model="SS4Rec", dataset="huge", device="cpu")
    _check_host_memory(huge, rows=10**13)
    assert not huge.ok
    assert "host RAM" in huge.first_failure and "filter the data harder" in huge.first_failure


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_runs_one_real_batch_and_keeps_fp32s_gradients(precision):
    report = preflight("SS4Rec", "ml-100k", ["tiny"], {**TINY_SS4REC, "precision": precision}, device="cpu")
    assert report.ok, report.table()
    assert detail(report, "model", "precision").startswith(f"{precision} (set by precision)")
    assert f"{precision}, every gradient entry fp32 has is there" in detail(report, "model", "backward")
    saved = report.to_dict()
    assert saved["precision"]["precision"] == precision
    assert saved["precision"]["loss_scaling"] == (precision == "fp16")
    assert saved["device_facts"]["device"] == "cpu" and saved["device_facts"]["type"] == "cpu"


def test_gradients_lost_to_fp16_fail():
    report = preflight(SS4Rec, "ml-100k", ["tiny"], {**TINY_SS4REC, "precision": "fp16"}, device="cpu")
    assert statuses(report)[("model", "backward")] == FAIL
    assert "fp16 turns gradient entries that fp32 has into exactly 0" in report.first_failure
    assert "precision: bf16" in report.first_failure
    assert statuses(report)[("estimate", "epoch time and memory")] == SKIP


def test_all_zero_gradients_fail():
    report = preflight(GRU4Rec, "ml-100k", ["tiny"], {}, device="cpu")
    assert statuses(report)[("model", "backward")] == FAIL
    assert "every gradient is 0 (fp32)" in report.first_failure
