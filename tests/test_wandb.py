"""W&B logging in offline mode: one ``wandb.init`` per run, the logged keys, ``wandb.finish``.

The offline run file (``wandb/offline-run-*/run-*.wandb``) is read back with a small reader
of its record format (LevelDB-style log blocks holding wandb's protobuf records).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
import torch
import wandb
from wandb.proto import wandb_internal_pb2

import ss4rec
from ss4rec.errors import UserError
from ss4rec.training.wandb_logging import WandbRunLogger

SMALL = {"user_inter_num_interval": "[0,25]", "train_batch_size": 256, "epochs": 2}
BLOCK = 32768  # the log's block size; a record header is 7 bytes (crc, length, type)


def offline_records(path: Path) -> list:
    """Every protobuf record of an offline ``.wandb`` run file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, chunks, pos = [], [], 7  # after the file header (magic, version)
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding at the end of the file
            break
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # keep ~ clean
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


def test_offline_run_logs_train_valid_test_keys_with_one_init_and_a_finish(offline, monkeypatch, tmp_path):
    calls = []
    real_init = wandb.init

    def counting_init(*args, **kwargs):  # the real wandb.init, counted
        calls.append(kwargs)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", counting_init)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = ss4rec.run(model="GRU4Rec", dataset="ml-100k", config_files=["tiny"],
                            config_dict={**SMALL, "log_wandb": True, "wandb_project": "ss4rec-test"},
                            output_dir=tmp_path / "run", device="cpu")
    finally:
        torch.set_num_threads(saved_threads)

    assert len(calls) == 1 and calls[0]["project"] == "ss4rec-test"
    assert calls[0]["config"]["model"] == "GRU4Rec"  # plain data, not RecBole's Config object
    assert wandb.run is None  # wandb.finish() was called
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = offline_records(next(runs[0].glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds.count("run") == 1 and "exit" in kinds
    history = [{item_key(i): i.value_json for i in r.history.item} for r in records if r.HasField("history")]
    logged = set().union(*history)
    for key in ("train/loss", "train/lr", "train/grad_norm", "optim_step", "epoch/train_loss",
                "valid/ndcg@10", "valid/hit@10", "test/ndcg@10", "test/mrr@10"):
        assert key in logged, key
    steps = [row for row in history if "train/grad_norm" in row]
    assert len(steps) == 2 * 11  # every optimiser step of 2 epochs x 11 batches
    test_row = next(row for row in history if "test/ndcg@10" in row)
    assert float(test_row["test/ndcg@10"]) == pytest.approx(result["test"]["ndcg@10"])


def test_missing_wandb_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets when not installed
    with pytest.raises(UserError, match=r"pip install 'wandb>=0.16'"):
        WandbRunLogger({"log_wandb": True, "wandb_project": None})
    WandbRunLogger({"log_wandb": False, "wandb_project": None}).finish()  # off: needs nothing


def test_unreachable_server_falls_back_to_offline_with_one_warning(monkeypatch, tmp_path, caplog):
    import socket
    import time

    with socket.socket() as probe:  # a local port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="ss4rec.training.wandb_logging"):
        result = ss4rec.run(model="GRU4Rec", dataset="ml-100k", config_files=["tiny"],
                            config_dict={**SMALL, "epochs": 1, "log_wandb": True},
                            output_dir=tmp_path / "run", device="cpu")
    assert time.monotonic() - started < 120  # training included; the fallback itself is seconds
    warnings = [r.getMessage() for r in caplog.records if "W&B server unreachable" in r.getMessage()]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0]
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))  # logged offline
    assert result["test"]["ndcg@10"] > 0 and wandb.run is None
