"""Weights & Biases logging for a training run: one ``wandb.init``, one ``wandb.finish``.

RecBole's Trainer builds its own ``WandbLogger`` (which calls ``wandb.init`` with the whole
``Config`` object and never ``wandb.finish``). :class:`ss4rec.training.trainer.SS4RecTrainer` keeps
RecBole's from starting and uses this one, with the same ``log_metrics`` /
``log_eval_metrics`` methods RecBole's loop calls, plus per-step and test logging.

Off by default; ``log_wandb: true`` turns it on (``wandb_project`` names the project,
default ``ss4rec``). ``WANDB_MODE=offline`` writes the run under ``./wandb/`` (the run
folder when started by :func:`ss4rec.run`) for a later ``wandb sync``. Online, an
unreachable W&B server (a pod without network, a firewall) never costs the run: the server
is probed first (a few seconds), and the run logs offline with one warning when the probe
or ``wandb.init`` fails, within :data:`ONLINE_BUDGET_S` seconds.

Logged keys: ``train/loss``, ``train/lr``, ``train/grad_norm`` (pre-clip) per optimiser step
(x axis ``optim_step``); ``epoch/train_loss`` per epoch (``epoch``); ``valid/<metric>`` per
evaluation (``valid_step``); ``test/<metric>`` once, also in the run summary.

    >>> logger = WandbRunLogger({"log_wandb": True, "wandb_project": "demo"})  # doctest: +SKIP
    >>> logger.log_step({"loss": 6.1, "lr": 1e-3, "grad_norm": 0.4}, step=0)  # doctest: +SKIP
    >>> logger.finish()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

from ss4rec.errors import UserError
from ss4rec.training.checkpoint import config_to_plain

DEFAULT_PROJECT = "ss4rec"
DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 5  # TCP connect to the W&B server
ONLINE_BUDGET_S = 30  # the most an unreachable server may delay a run
logger = logging.getLogger(__name__)


def server_unreachable(base_url: str | None = None) -> str | None:
    """Why the W&B server cannot be reached (a short reason), or None when a TCP connect works."""
    url = urlparse(base_url or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    host = url.hostname or "api.wandb.ai"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def _offline_requested() -> bool:
    return os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")


def import_wandb():
    """The wandb module, or a UserError saying how to install it."""
    try:
        import wandb
    except ImportError as exc:
        raise UserError(
            "log_wandb: true needs the wandb package, which is not installed: "
            "pip install 'wandb>=0.16' (or set log_wandb: false)"
        ) from exc
    return wandb


class WandbRunLogger:
    """Logs one training run to W&B; does nothing when ``log_wandb`` is off."""

    def __init__(self, config):
        self.enabled = bool(config["log_wandb"])
        self._wandb = None
        self._owns_run = False
        if not self.enabled:
            return
        wandb = import_wandb()
        self._wandb = wandb
        if wandb.run is None:  # a run the caller already started is reused, not replaced
            # dir: the run folder (the caller's cwd), named each time: wandb's process-wide
            # settings would otherwise keep the first run's folder for every later run.
            self._init(wandb, project=config["wandb_project"] or DEFAULT_PROJECT, config=config_to_plain(config),
                       dir=os.getcwd())
            self._owns_run = True
        wandb.define_metric("optim_step")
        wandb.define_metric("train/*", step_metric="optim_step")
        wandb.define_metric("epoch")
        wandb.define_metric("epoch/*", step_metric="epoch")
        wandb.define_metric("valid_step")
        wandb.define_metric("valid/*", step_metric="valid_step")

    @staticmethod
    def _init(wandb, **kwargs) -> None:
        """``wandb.init``; offline, with one warning, when the server cannot be reached in time."""
        if _offline_requested():
            wandb.init(**kwargs)
            return
        why = server_unreachable()
        if why is None:
            try:
                wandb.init(**kwargs, settings=wandb.Settings(init_timeout=ONLINE_BUDGET_S - PROBE_TIMEOUT_S))
                return
            except Exception as exc:  # wandb's CommError, UsageError, timeouts: all mean "not online"
                why = f"wandb.init failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        logger.warning(f"W&B server unreachable ({why}): logging offline to ./wandb in the run folder; "
                       "upload it later with `wandb sync RUN/wandb/offline-run-*`")
        wandb.init(**kwargs, mode="offline")

    def log_step(self, values: dict, step: int) -> None:
        """Per optimiser step: ``{"loss": ..., "lr": ..., "grad_norm": ...}``."""
        if self.enabled:
            self._wandb.log({**{f"train/{k}": v for k, v in values.items()}, "optim_step": step})

    def log_metrics(self, metrics: dict, head: str = "train", commit: bool = True) -> None:
        """RecBole's per-epoch calls: train loss (head ``train``) and valid metrics (``valid``)."""
        if not self.enabled:
            return
        if head == "train":  # RecBole's {"epoch", "train_loss", "train_step"}: one point per epoch
            loss = metrics.get("train_loss")
            loss = sum(loss) if isinstance(loss, tuple) else loss
            self._wandb.log({"epoch/train_loss": loss, "epoch": metrics.get("epoch")}, commit=commit)
            return
        row = {(k if k.endswith("_step") else f"{head}/{k}"): v for k, v in metrics.items()}
        self._wandb.log(row, commit=commit)

    def log_eval_metrics(self, metrics: dict, head: str = "eval") -> None:
        """The latest evaluation's metrics in the run summary (as RecBole's logger does)."""
        if self.enabled:
            for k, v in metrics.items():
                self._wandb.run.summary[f"{head}/{k}"] = v

    def log_test(self, metrics: dict) -> None:
        """Test metrics of the best model: logged once and kept in the summary."""
        if self.enabled and metrics:
            row = {f"test/{k}": float(v) for k, v in metrics.items()}
            self._wandb.log(row)
            for k, v in row.items():
                self._wandb.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        """End the W&B run this logger started (RecBole never does); safe to call twice."""
        if self.enabled and self._owns_run and self._wandb.run is not None:
            self._wandb.finish(exit_code=exit_code)
        self._owns_run = False
