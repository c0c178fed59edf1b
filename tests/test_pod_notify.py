"""Webhook notifications of pod runs that fail: start + failure with the cause, same exit code.

The successful run's start + finish is checked in test_entrypoint.py (it shares the one
debug training run). Here every run fails before training, so each takes seconds. The
webhook is a real HTTP server on 127.0.0.1 run by the test.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from localserver import local_http_server

SCRIPT = Path(__file__).resolve().parents[1] / "runpod_entrypoint.sh"


class _Webhook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append(json.loads(body)["text"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    with local_http_server(_Webhook, deadline_s=1200, posts=[]) as httpd:
        httpd.url = f"http://127.0.0.1:{httpd.server_port}/api/webhooks/1/t0ken"
        yield httpd


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def pod(*args, cwd, env_extra=None):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("SS4REC_NOTIFY_URL", None)
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def cli(*args, env_extra=None):
    env = {**os.environ}
    env.pop("SS4REC_NOTIFY_URL", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "ss4rec", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_preflight_failure_posts_start_and_failure_with_the_cause(webhook, tmp_path):
    proc = pod("--debug", "--device", "cpu", "--set", "learning_rate=0", "--notify", webhook.url,
               "--output", "r", cwd=tmp_path)
    assert proc.returncode == 1
    assert len(webhook.posts) == 2, webhook.posts
    start, failure = webhook.posts
    assert start.startswith("ss4rec started: SS4Rec on ml-100k | device cpu")
    assert failure.startswith("ss4rec FAILED: SS4Rec on ml-100k")
    assert "preflight optimiser/learning rate: learning_rate=0" in failure
    assert not (tmp_path / "r" / "results.json").exists()


def test_unreachable_webhook_does_not_change_the_exit_code(tmp_path):
    args = ["--debug", "--device", "cpu", "--set", "num_epochs=1"]
    quiet = pod(*args, "--output", "a", cwd=tmp_path)
    noisy = pod(*args, "--notify", closed_port_url(), "--output", "b", cwd=tmp_path)
    assert quiet.returncode == noisy.returncode == 1
    cause = "error: preflight config/keys and values: unknown config key 'num_epochs'"
    assert quiet.stderr.strip().splitlines()[-1].startswith(cause)
    assert noisy.stderr.strip().splitlines()[-1].startswith(cause)
    assert "notification to http://127.0.0.1/... failed" in noisy.stderr  # warned, path redacted


def test_train_reports_its_own_failure_from_the_environment_variable(webhook, tmp_path):
    proc = cli("train", "--set", "num_epochs=1", "--device", "cpu", "--output", str(tmp_path / "run"),
               env_extra={"SS4REC_NOTIFY_URL": webhook.url})
    assert proc.returncode == 2
    assert [p.split(":")[0] for p in webhook.posts] == ["ss4rec started", "ss4rec FAILED"]
    assert "ConfigError: unknown config key 'num_epochs'" in webhook.posts[1]
    assert str(tmp_path / "run") in webhook.posts[0]


def test_nproc_without_gpus_is_a_clear_error(webhook):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two GPUs")
    proc = cli("train", "--nproc", "2", "--notify", webhook.url)
    assert proc.returncode == 2
    assert "--nproc 2 needs 2 CUDA GPUs" in proc.stderr.strip().splitlines()[-1]
    assert webhook.posts == []  # refused before the run started
