"""ss4rec.training.notify.Notifier posting to a real webhook server on 127.0.0.1 run by the test.

The server answers like Slack (200 "ok") or Discord (204, no body), or with an error
status; it records every JSON body, handles a bounded number of requests and stops by
itself.
"""

from __future__ import annotations

import http.server
import json
import logging
import socket
import time

import pytest
from localserver import local_http_server

from ss4rec.training.notify import ENV_VAR, Notifier, redact_url

METRICS = {"hit@10": 0.28171, "ndcg@10": 0.15634, "mrr@10": 0.11821, "precision@10": 0.028}


class _WebhookHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append({"path": self.path, "json": json.loads(body),
                                  "content_type": self.headers.get("Content-Type"),
                                  "user_agent": self.headers.get("User-Agent")})
        status = self.server.status
        self.send_response(status)
        reply = b"ok" if status == 200 else b""
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def webhook():
    """A webhook endpoint; ``webhook.url`` posts to it, ``webhook.posts`` are the bodies."""
    with local_http_server(_WebhookHandler, max_requests=20, posts=[], status=200) as httpd:
        httpd.url = f"http://127.0.0.1:{httpd.server_port}/services/T000/B000/s3cretpath"
        yield httpd


def texts(webhook) -> list[str]:
    """The posted messages, checking each is valid for both Slack and Discord."""
    out = []
    for post in webhook.posts:
        assert post["content_type"] == "application/json"
        assert post["user_agent"].startswith("ss4rec")  # not urllib's, which Discord blocks
        assert set(post["json"]) == {"text", "content"}  # Slack reads text, Discord content
        assert post["json"]["text"] == post["json"]["content"]
        assert len(post["json"]["content"]) <= 2000  # Discord's limit
        out.append(post["json"]["text"])
    return out


@pytest.mark.parametrize("status", [200, 204], ids=["slack-like", "discord-like"])
def test_a_run_posts_start_then_finish(webhook, status):
    webhook.status = status
    notifier = Notifier(webhook.url)
    assert notifier.enabled
    assert notifier.start(model="SS4Rec", dataset="ml-1m", device="cuda:0 (NVIDIA H100)",
                          run_dir="runs/ml1m-seed0")
    assert notifier.finish(METRICS, duration_s=3723)

    start, finish = texts(webhook)
    assert webhook.posts[0]["path"] == "/services/T000/B000/s3cretpath"
    for part in ("started", "SS4Rec on ml-1m", "cuda:0 (NVIDIA H100)", "runs/ml1m-seed0"):
        assert part in start
    assert finish == ("ss4rec finished: SS4Rec on ml-1m in 1h 02m 03s | "
                      "test hit@10 0.2817, ndcg@10 0.1563, mrr@10 0.1182")


def test_a_failed_run_posts_start_then_the_one_line_cause(webhook):
    notifier = Notifier(webhook.url)
    notifier.start("SASRec", "ml-100k", "cpu", "runs/demo")
    error = RuntimeError("CUDA out of memory.\n  Tried to allocate 2.00 GiB")
    assert notifier.failure(error, duration_s=65)
    assert notifier.failure("DataError: no .inter file in data/ml-1m")

    start, failure, failure_text = texts(webhook)
    assert "SASRec on ml-100k" in start
    assert failure == ("ss4rec FAILED: SASRec on ml-100k after 1m 05s | "
                       "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert failure_text.endswith("| DataError: no .inter file in data/ml-1m")


def test_duration_defaults_to_time_since_start_and_metric_case_is_ignored(webhook):
    notifier = Notifier(webhook.url)
    notifier.start("SS4Rec", "ml-1m", "cpu", "runs/x")
    notifier.finish({"HR@10": 0.5, "NDCG@10": 0.25})
    assert texts(webhook)[1] == "ss4rec finished: SS4Rec on ml-1m in 0s | test hr@10 0.5000, ndcg@10 0.2500"


def test_url_falls_back_to_the_environment(webhook, monkeypatch):
    monkeypatch.setenv(ENV_VAR, webhook.url)
    assert Notifier().send("hello from the env")
    assert texts(webhook) == ["hello from the env"]


def test_no_url_means_a_silent_no_op(webhook, monkeypatch, caplog):
    monkeypatch.delenv(ENV_VAR, raising=False)
    for notifier in (Notifier(), Notifier(url=""), Notifier(url="  ")):
        assert not notifier.enabled
        assert notifier.start("SS4Rec", "ml-1m", "cpu", "runs/x") is False
        assert notifier.finish(METRICS, 1.0) is False
        assert notifier.failure("boom") is False
    monkeypatch.setenv(ENV_VAR, webhook.url)
    assert not Notifier(url="").enabled  # an explicit empty URL beats the environment
    assert webhook.posts == [] and caplog.records == []


def test_long_messages_are_cut_to_fit_discord(webhook):
    assert Notifier(webhook.url).failure("x" * 5000)
    (text,) = texts(webhook)
    assert text.endswith("...") and len(text) <= 2000


def test_unreachable_webhook_never_raises_and_warns_once(caplog):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notifier = Notifier(f"http://127.0.0.1:{port}/api/webhooks/123/s3cret-token")
    with caplog.at_level(logging.WARNING, logger="ss4rec.training.notify"):
        assert notifier.start("SS4Rec", "ml-1m", "cpu", "runs/x") is False
        assert notifier.finish(METRICS, 10) is False
        assert notifier.failure(ValueError("boom")) is False

    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "http://127.0.0.1/..." in message and "failed" in message
    assert "s3cret" not in message and "webhooks" not in message


def test_error_status_is_a_logged_failure_not_an_exception(webhook, caplog):
    webhook.status = 404  # what Slack answers for a revoked hook
    notifier = Notifier(webhook.url)
    with caplog.at_level(logging.WARNING, logger="ss4rec.training.notify"):
        assert notifier.start("SS4Rec", "ml-1m", "cpu", "runs/x") is False
        assert notifier.finish(METRICS, 10) is False
    assert len(webhook.posts) == 2
    (record,) = caplog.records
    assert "HTTP Error 404" in record.getMessage()
    assert "s3cretpath" not in record.getMessage()


def test_hanging_webhook_is_given_up_after_the_timeout():
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        notifier = Notifier(f"http://127.0.0.1:{silent.getsockname()[1]}/hook", timeout=0.3)
        began = time.monotonic()
        assert notifier.start("SS4Rec", "ml-1m", "cpu", "runs/x") is False
        # Bounded by the timeout, not by the server: the run is never held up for long.
        assert time.monotonic() - began < 5


def test_non_http_url_disables_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ss4rec.training.notify"):
        notifier = Notifier("hooks.slack.com/services/T000/B000/s3cret")
        assert notifier.start("SS4Rec", "ml-1m", "cpu", "runs/x") is False
    assert not notifier.enabled
    (record,) = caplog.records
    assert "not an http(s) URL" in record.getMessage()
    assert "s3cret" not in record.getMessage()


def test_redact_url_keeps_only_scheme_and_host():
    assert redact_url("https://hooks.slack.com/services/T0/B0/abc") == "https://hooks.slack.com/..."
    assert "abc" not in redact_url("hooks.slack.com/services/T0/B0/abc")
