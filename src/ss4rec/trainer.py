"""RecBole's Trainer, extended: checkpoints that load on torch >= 2.6.

RecBole's ``Trainer`` pickles its ``Config`` into checkpoints and reloads them with a plain
``torch.load``, which torch >= 2.6 refuses (``weights_only=True`` by default): training
succeeds, then ``evaluate(load_best_model=True)`` crashes. This subclass saves plain dicts
(:mod:`ss4rec.checkpoint`) atomically and loads them with ``weights_only=True``.
Everything else is RecBole's own loop.
"""

from __future__ import annotations

import torch
from recbole.trainer import Trainer

from ss4rec.checkpoint import config_to_plain, load_checkpoint, save_checkpoint


class SS4RecTrainer(Trainer):
    """RecBole ``Trainer`` with plain-dict, atomically written, safely loaded checkpoints."""

    def _checkpoint_state(self, epoch: int) -> dict:
        return {
            "model": self.config["model"],
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": config_to_plain(self.config),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        save_checkpoint(self._checkpoint_state(epoch), path)
        if verbose:
            self.logger.info(f"Saving current: {path}")

    def resume_checkpoint(self, resume_file):
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.saved_model_file = str(resume_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
