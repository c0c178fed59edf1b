"""Post run start / finish / failure messages to a Slack or Discord incoming webhook.

    >>> from ss4rec.training.notify import Notifier
    >>> notifier = Notifier("https://hooks.slack.com/services/T000/B000/XXXX")  # doctest: +SKIP
    >>> notifier.start(model="SS4Rec", dataset="ml-1m", device="cuda", run_dir="runs/ml1m")
    ... # doctest: +SKIP
    >>> notifier.finish({"hit@10": 0.2817, "ndcg@10": 0.1563, "mrr@10": 0.1182},
    ...                 duration_s=5400)  # doctest: +SKIP
    >>> # or, when the run raised:  notifier.failure(exc)  # or a one-line string

Without a URL (argument or ``$SS4REC_NOTIFY_URL``) the notifier is a silent no-op, so the
caller never needs an ``if``:

    >>> Notifier(url="").start("SS4Rec", "ml-100k", "cpu", "runs/demo")
    False

Each message is one JSON object carrying the same text under ``text`` (what Slack reads)
and ``content`` (what Discord reads); each service ignores the other's key, so one
payload works for both. Notifications must never cost a run: every method catches all
errors, waits at most ``timeout`` seconds, logs the first failure once as a warning (with
the webhook's path redacted, since for Slack and Discord the path *is* the secret) and
stays silent about later ones. They return whether the message was delivered.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.parse
import urllib.request
from typing import Mapping

__all__ = ["Notifier", "ENV_VAR", "redact_url"]

ENV_VAR = "SS4REC_NOTIFY_URL"
_LOG = logging.getLogger(__name__)
# Discord rejects content over 2000 characters; Slack allows more. Stay under both.
_MAX_CHARS = 1900
# Discord (behind Cloudflare) refuses urllib's default "Python-urllib/3.x" user agent.
_USER_AGENT = "ss4rec-notify/0.1"
# The metrics worth a glance, in the order they are shown; others are left out.
_HEADLINE_METRICS = ("hit@10", "hr@10", "ndcg@10", "mrr@10")


def redact_url(url: str) -> str:
    """Scheme and host only: the rest of a webhook URL is its credential.

    >>> redact_url("https://discord.com/api/webhooks/123/abc-token")
    'https://discord.com/...'
    """
    parsed = urllib.parse.urlparse(url)
    if not parsed.scheme or not parsed.hostname:
        return "<webhook URL without scheme or host>"
    return f"{parsed.scheme}://{parsed.hostname}/..."


class Notifier:
    """Webhook poster for one training run; see the module docstring for an example.

    ``url``: a Slack / Discord incoming-webhook URL (or any endpoint taking a JSON POST);
    ``None`` falls back to ``$SS4REC_NOTIFY_URL``; empty means disabled.
    ``timeout``: seconds one post may take (connect plus response) before it is given up.
    """

    def __init__(self, url: str | None = None, *, timeout: float = 5.0) -> None:
        if url is None:
            url = os.environ.get(ENV_VAR, "")
        self.url = url.strip() or None
        self.timeout = timeout
        self._warned = False
        self._run_label = "ss4rec run"
        self._started_at: float | None = None
        if self.url and urllib.parse.urlparse(self.url).scheme not in ("http", "https"):
            self._warn_once(f"notifications disabled: {redact_url(self.url)} is not an "
                            "http(s) URL")
            self.url = None

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def start(self, model: str, dataset: str, device: str, run_dir: str | os.PathLike) -> bool:
        """Announce the run; remembers model / dataset / time for the later messages."""
        self._run_label = f"{model} on {dataset}"
        self._started_at = time.monotonic()
        return self.send(f"ss4rec started: {self._run_label} | device {device} | "
                         f"run folder {os.fspath(run_dir)}")

    def finish(self, metrics: Mapping[str, float], duration_s: float | None = None) -> bool:
        """Report the test metrics (HR / NDCG / MRR @10 when present) and the duration.

        ``duration_s`` defaults to the time since :meth:`start`.
        """
        shown = _headline(metrics)
        return self.send(f"ss4rec finished: {self._run_label} in "
                         f"{_duration(self._elapsed(duration_s))} | test {shown}")

    def failure(self, cause: str | BaseException, duration_s: float | None = None) -> bool:
        """Report a failed run with its one-line cause (an exception is formatted for you)."""
        if isinstance(cause, BaseException):
            cause = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        one_line = re.sub(r"\s+", " ", str(cause)).strip() or "unknown cause"
        return self.send(f"ss4rec FAILED: {self._run_label} after "
                         f"{_duration(self._elapsed(duration_s))} | {one_line}")

    def send(self, text: str) -> bool:
        """Post ``text`` as ``{"text": ..., "content": ...}``; True when the server took it."""
        if not self.enabled:
            return False
        if len(text) > _MAX_CHARS:
            text = text[: _MAX_CHARS - 3] + "..."
        body = json.dumps({"text": text, "content": text}).encode("utf-8")
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": _USER_AGENT},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(1 << 16)  # Slack answers "ok", Discord 204 with no body
            return True
        except Exception as exc:  # a webhook must never fail the run, whatever went wrong
            self._warn_once(f"notification to {redact_url(self.url)} failed "
                            f"({type(exc).__name__}: {self._scrub(str(exc))}); the run "
                            "goes on and later notification failures are not logged")
            return False

    def _elapsed(self, duration_s: float | None) -> float | None:
        if duration_s is not None:
            return duration_s
        if self._started_at is not None:
            return time.monotonic() - self._started_at
        return None

    def _scrub(self, message: str) -> str:
        """Some errors (e.g. bad characters in the URL) quote the URL: hide its secret part."""
        secret = urllib.parse.urlparse(self.url).path.strip("/")
        message = message.replace(self.url, redact_url(self.url))
        return message.replace(secret, "...") if len(secret) > 3 else message

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            _LOG.warning(message)


def _headline(metrics: Mapping[str, float]) -> str:
    """``hit@10 0.2817, ndcg@10 0.1563, mrr@10 0.1182`` (case-insensitive keys)."""
    by_name = {str(name).lower(): value for name, value in metrics.items()}
    names = [name for name in _HEADLINE_METRICS if name in by_name]
    if not names:  # other metric sets: show what there is, a few of them
        names = list(by_name)[:6]
    if not names:
        return "no metrics"
    return ", ".join(f"{name} {_number(by_name[name])}" for name in names)


def _number(value) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)


def _duration(seconds: float | None) -> str:
    """``1h 02m 03s`` / ``4m 05s`` / ``12s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
