"""RecBole's Trainer, extended: guards, safe checkpoints, exact resume, LR schedules, W&B.

:class:`SS4RecTrainer` keeps RecBole's ``fit`` / ``evaluate`` loop and changes only:

- **checkpoints**: plain dicts (:mod:`ss4rec.training.checkpoint`), written atomically, loaded with
  ``weights_only=True`` (RecBole pickles its ``Config``, which torch >= 2.6 refuses).
  ``MODEL-best.pth`` at each new best, ``MODEL-last.pth`` after every epoch; both hold
  model, optimiser, LR schedule, epoch, optimiser step, best score and result, early-stopping
  counter, guard state and every random generator (Python, numpy, torch, CUDA, and the
  training dataloader's own shuffling generator), so :meth:`resume_checkpoint` continues a
  killed run as if it had never stopped.
- **one training step** (``_train_epoch``, RecBole's loop plus hooks): gradient accumulation
  (``grad_accum_steps``), the LR schedule, the pre-clip gradient norm every optimiser step,
  ``clip_grad_norm``, and the guards of :mod:`ss4rec.training.guards` (non-finite loss or gradient,
  LR 0 while steps remain, loss stuck at the random baseline, frozen validation metrics).
  A guard stops training with :class:`~ss4rec.errors.TrainingGuardError`, after saving the
  last good weights (``MODEL-lastgood.pth``) and a debug bundle (``MODEL-guard-debug.json``:
  config, the failing batch's ids, loss / LR / grad-norm history) in the checkpoint folder.
- **W&B**: :class:`ss4rec.training.wandb_logging.WandbRunLogger` replaces RecBole's logger, so a run
  makes exactly one ``wandb.init``; :meth:`close` calls ``wandb.finish``.
- **epoch hooks** (:attr:`SS4RecTrainer.epoch_hooks`): called after every evaluated epoch with
  ``(epoch_idx, valid_score, valid_result)``; a hook that returns a reason (a non-empty
  string) ends training there, as early stopping would (e.g. a tuner pruning a trial). The
  trainer knows nothing of who listens.

    >>> trainer = SS4RecTrainer(config, model)  # doctest: +SKIP
    >>> trainer.resume_checkpoint("runs/demo/checkpoints/SS4Rec-last.pth")  # doctest: +SKIP
    >>> best_score, best_result = trainer.fit(train_data, valid_data)  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from recbole.data.interaction import Interaction
from recbole.trainer import Trainer
from torch.nn.utils.clip_grad import clip_grad_norm_

from ss4rec.errors import TrainingGuardError, UserError
from ss4rec.ssm.s5 import raise_deferred_errors
from ss4rec.training import distributed
from ss4rec.training.checkpoint import (
    config_to_plain,
    fingerprint_differences,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    to_plain,
)
from ss4rec.training.guards import LRSchedule, TrainingGuards, baseline_loss, guard_settings, optimizer_steps
from ss4rec.training.host_memory import keep_freed_memory
from ss4rec.training.precision import autocast, loss_scaler, resolve_precision
from ss4rec.training.progress import EpochProgress
from ss4rec.training.runfolder import working_dir, write_json_atomic
from ss4rec.training.wandb_logging import WandbRunLogger

STEP_LOG_LENGTH = 1000  # optimiser steps of loss / LR / grad-norm history kept for debug bundles
# guard_check_batches: ~ on a GPU: batches between reads of the losses and gradient norms.
GPU_CHECK_BATCHES = 100


class _StopRequested(Exception):
    """An epoch hook asked to end training after this epoch (see SS4RecTrainer.epoch_hooks)."""


def _grad_norms(grads, norm_type: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(each gradient's norm, the norm of all together as ``clip_grad_norm_`` computes it before
    clipping), on the gradients' device: nothing is read back here."""
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), norm_type) for g in grads])
    return norms, torch.linalg.vector_norm(norms, norm_type)


@dataclass
class _Pending:
    """One batch's losses or one optimiser step's (loss, grad norm), still on the device, with
    what the guards and logs need to report them once they are read back."""

    kind: str  # "batch" or "step"
    where: str  # "epoch 0, batch 3 (optimiser step 3)"
    values: torch.Tensor  # batch: its loss parts; step: [mean loss, pre-clip grad norm]
    tuple_loss: bool = False  # batch: the model returned a tuple of losses
    ids: dict | None = None  # batch: its user / item id tensors, for the debug bundle
    norms: torch.Tensor | None = None  # step: each parameter's gradient norm
    names: list | None = None  # step: the parameters of those norms
    step: int = 0
    epoch: int = 0
    lr: float = 0.0
    scaled: bool = False  # step: fp16 with a loss scaler (which skips inf steps itself)


# Settings a resume may change; they are applied and recorded (results.json
# training.resumed_from.changed). Any other difference from the checkpoint's settings
# refuses the resume: the weights, data and schedule would not be those of the run.
RESUME_MAY_CHANGE = {
    "epochs", "stopping_step", "learning_rate", "eval_step", "eval_batch_size", "show_progress",
    "progress_interval", "worker", "use_gpu", "gpu_id", "log_wandb",
    "wandb_project", "nproc", "world_size", "ip", "port", "offset", "local_rank",
    "guard_nonfinite", "guard_lr_zero", "guard_baseline_loss", "guard_frozen_metrics",
    "guard_check_batches", "precision",
}

# Settings added after a run may have been saved, with the value that computes what runs saved
# before them computed: a checkpoint without the key resumes when the run uses that value.
ADDED_SETTINGS = {"time_transform": "linear"}


def settings_changes(saved: dict, current: dict) -> tuple[dict, dict]:
    """(changes a resume may apply, changes that refuse it): ``{key: (saved, current)}`` each.

    ``saved`` and ``current`` are plain run configs; the keys compared are those either run
    set (its ``run_settings.config_dict``), with the values each run ended up using. Folders
    may move: the data's identity is checked by its fingerprint instead.
    """
    keys = set((saved.get("run_settings") or {}).get("config_dict") or {})
    keys |= set((current.get("run_settings") or {}).get("config_dict") or {})
    keys -= {"checkpoint_dir", "data_path"}  # where the run and its data live, not what they are
    allowed, refused = {}, {}
    for key in sorted(keys):
        old, new = saved.get(key), current.get(key)
        if key not in saved and key in ADDED_SETTINGS and new == ADDED_SETTINGS[key]:
            continue  # saved before the setting existed, and this run keeps its old behaviour
        if old != new:
            (allowed if key in RESUME_MAY_CHANGE else refused)[key] = (old, new)
    return allowed, refused


class SS4RecTrainer(Trainer):
    """RecBole ``Trainer`` with guards, safe checkpoints, exact resume, LR schedules and W&B."""

    def __init__(self, config, model):
        self.guard_config = guard_settings(config)
        for key, value in self.guard_config.items():  # unset keys: show the defaults used
            if config[key] is None:
                config[key] = value
        # RecBole's __init__ starts its own W&B run when log_wandb is on; ours replaces it,
        # so hide the flag from it: exactly one wandb.init per run.
        # fp32 / bf16 / fp16 (and RecBole's enable_amp / enable_scaler mapped onto it): ours
        # replaces RecBole's AMP code, whose GradScaler cannot unscale S5's complex gradients.
        self.precision = resolve_precision(config, config["device"])
        log_wandb = config["log_wandb"]
        config["log_wandb"] = False
        # RecBole's __init__ also opens a tensorboard writer under ./log_tensorboard: put it
        # in the run folder (beside checkpoints/), never in the caller's working directory.
        run_folder = Path(config["checkpoint_dir"]).resolve().parent
        run_folder.mkdir(parents=True, exist_ok=True)
        # Under DDP, RecBole wraps the model as DistributedDataParallel(device_ids=[local_rank]),
        # which fails for a CPU model; hide DDP from it and wrap the model ourselves.
        single_spec = config["single_spec"]
        config["single_spec"] = True
        try:
            with working_dir(run_folder):
                super().__init__(config, model)
        finally:
            config["log_wandb"] = log_wandb
            config["single_spec"] = single_spec
        self.enable_amp = self.enable_scaler = False  # RecBole's switches: see self.precision
        self.logger.info(f"precision: {self.precision.precision} ({self.precision.why})")
        if torch.device(self.device).type == "cpu":  # page faults were ~25% of an SS4Rec CPU step
            self.logger.info(keep_freed_memory())
        self.writer = distributed.is_writer(config)  # rank 0 (or no DDP): saves and evaluates
        if not single_spec:
            self.distributed_model = distributed.wrap_model(self.model, self.device)
        self.wandblogger = WandbRunLogger(config if self.writer else {"log_wandb": False})

        self.grad_accum_steps = self.guard_config["grad_accum_steps"]
        self.guards = TrainingGuards(
            self.guard_config, baseline_loss(config["loss_type"], getattr(model, "n_items", None))
        )
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.lr_schedule: LRSchedule | None = None
        self.optim_step = 0  # optimiser steps taken in the whole run (RecBole's cur_step is
        self.total_optim_steps = None  # its early-stopping counter, kept as it is)
        self.step_log = collections.deque(maxlen=STEP_LOG_LENGTH)
        self.epochs_ran: list[int] = []  # epoch indices trained by this process
        self.resumed_from: dict | None = None
        self.dataset_fingerprint: dict | None = None  # set by the pipeline; saved in checkpoints
        self.earlier_train_seconds = 0.0  # training time of the legs before a resume
        self.history: list[dict] = []  # per epoch: train loss, valid metrics (every leg)
        # After every evaluated epoch: hook(epoch_idx, valid_score, valid_result) -> a reason to
        # stop training now (a non-empty string), or None. Under DDP every rank calls its hooks,
        # which must then decide alike.
        self.epoch_hooks: list = []
        self.stopped_by: dict | None = None  # {"epoch", "reason"} when a hook ended training
        self.fit_started: float | None = None  # time.time() when this leg's fit began (_prepare_fit)
        self.last_checkpoint_file = os.path.join(self.checkpoint_dir, f"{config['model']}-last.pth")
        # The loss of one training batch: the model's calculate_loss, or (train_mode:
        # sequence) ss4rec.models.losses.window_loss, set by the pipeline.
        self.batch_loss = None
        self._scaler = loss_scaler(self.precision.precision, self.device)  # active for fp16 only
        # Batches between reads of the losses and gradient norms (guard_check_batches): on the CPU
        # and under --debug every batch (the guards stop at the failing batch, before its update);
        # on a GPU every GPU_CHECK_BATCHES batches, each progress line and each epoch's end, so the
        # GPU never waits for the host (a failure is still named by its own epoch and batch).
        every = self.guard_config["guard_check_batches"]
        if every is None:
            every = 1 if torch.device(self.device).type == "cpu" or torch.is_anomaly_enabled() else GPU_CHECK_BATCHES
        self.check_batches = int(every)
        self._pending: list[_Pending] = []  # numbers on the device, not yet read back
        self._batch_losses: list = []  # this epoch's batch losses, read back (floats or tuples)
        self._pending_resume = None
        self._train_data = None
        self._has_valid = False
        self._saved = True
        self._latest_valid_result = None
        self._epoch = 0
        self._where = None
        self._batch = None
        self._failing_ids = None  # ids of the batch whose loss failed a guard

    # ---- fit: RecBole's loop, with a per-epoch "last" checkpoint and guard bookkeeping ----

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self._prepare_fit(train_data, valid_data, saved)

        def after_evaluation(epoch_idx, valid_score):
            # RecBole calls this after early stopping and the best checkpoint are updated:
            # the right moment for a "last" checkpoint a resume can continue from.
            if saved:
                self._save_last(epoch_idx)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)
            for hook in self.epoch_hooks:
                reason = hook(epoch_idx, valid_score, self._latest_valid_result)
                if reason:
                    self.stopped_by = {"epoch": epoch_idx, "reason": str(reason)}
                    self.logger.info(f"epoch {epoch_idx}: training stopped ({reason})")
                    raise _StopRequested

        try:
            return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                               show_progress=show_progress, callback_fn=after_evaluation)
        except _StopRequested:  # as early stopping: the best epoch so far is the run's result
            return self.best_valid_score, self.best_valid_result
        except TrainingGuardError as err:
            self._record_guard_stop(err)
            raise

    def _prepare_fit(self, train_data, valid_data, saved):
        self.fit_started = time.time()
        self._train_data = train_data
        self._has_valid = bool(valid_data)
        self._saved = saved
        self.batches_per_epoch = len(train_data)
        self.total_optim_steps = optimizer_steps(self.batches_per_epoch, self.grad_accum_steps, self.epochs)
        s = self.guard_config
        if s["lr_scheduler"] != "none" or s["lr_warmup_steps"]:
            length = s["lr_schedule_steps"] or self.total_optim_steps
            self.lr_schedule = LRSchedule(s["lr_scheduler"], length, s["lr_warmup_steps"], float(s["lr_min_ratio"]))
            self.logger.info(
                f"LR schedule: {s['lr_scheduler']}, {s['lr_warmup_steps']} warmup steps, {length} "
                f"optimiser steps in all ({self.batches_per_epoch} batches per epoch / "
                f"grad_accum_steps {self.grad_accum_steps} -> {self.total_optim_steps} steps in "
                f"{self.epochs} epochs), final LR {s['lr_min_ratio']} x learning_rate"
            )
            if length > self.total_optim_steps:
                self.logger.warning(
                    f"lr_schedule_steps={length} is longer than the {self.total_optim_steps} optimiser "
                    "steps of this run: the LR never reaches its final value (leave lr_schedule_steps "
                    "unset to fit the schedule to the run)"
                )
        if self._pending_resume is not None:
            if self._pending_resume["rng"] is not None:
                set_rng_state(self._pending_resume["rng"], self.device)
            generator_state = self._pending_resume["generator"]
            if generator_state is not None and getattr(train_data, "generator", None) is not None:
                train_data.generator.set_state(generator_state)  # RecBole shuffles with its own generator
            self._pending_resume = None

    def _is_eval_epoch(self, epoch_idx: int) -> bool:
        return self._has_valid and self.eval_step > 0 and (epoch_idx + 1) % self.eval_step == 0

    # ---- one epoch: RecBole's _train_epoch with accumulation, LR schedule, norms and guards ----

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        loss_func = loss_func or self.batch_loss or self.model.calculate_loss
        self._epoch = epoch_idx
        progress = EpochProgress(f"epoch {epoch_idx}", len(train_data), self.guard_config["progress_interval"],
                                 bar=show_progress and sys.stderr.isatty())
        distributed_run = not self.config["single_spec"]
        if distributed_run and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        n_batches = len(train_data)
        first_step = self.optim_step
        self._batch_losses = []
        group_loss, group_size = None, 0
        self.optimizer.zero_grad()
        for batch_idx, interaction in enumerate(train_data):
            interaction = self._to_device(interaction)
            self._batch = interaction
            self._where = f"epoch {epoch_idx}, batch {batch_idx} (optimiser step {self.optim_step})"
            sync_loss = 0
            if distributed_run:
                self.set_reduce_hook()
                sync_loss = self.sync_grad_loss()
            with autocast(self.precision.precision, self.device):
                losses = loss_func(interaction)
            parts = losses if isinstance(losses, tuple) else (losses,)
            loss = sum(parts)
            values = torch.stack([part.detach().float() for part in parts])  # [parts], on the device
            if distributed_run:
                # The mean over all ranks: every rank logs, and every guard decides on, the
                # same numbers, so a guard stops all ranks at the same step.
                values = distributed.mean_over_ranks(values)
            self._pending.append(_Pending("batch", self._where, values, tuple_loss=isinstance(losses, tuple),
                                          ids=self._ids_of(interaction)))
            if self.check_batches == 1:  # a non-finite loss stops the run before its backward
                self._read_back(progress)
            # Gradients of a group of batches add up: scale each so the group's is their mean.
            group_start = batch_idx - batch_idx % self.grad_accum_steps
            group_len = min(self.grad_accum_steps, n_batches - group_start)
            self._scaler.scale((loss + sync_loss) / group_len).backward()
            group_loss = values.sum() if group_loss is None else group_loss + values.sum()
            group_size += 1
            if group_size == group_len:
                self._optimizer_step(group_loss / group_size)
                group_loss, group_size = None, 0
            # Read back at fixed batches (the same on every DDP rank, so all stop together) and,
            # in a single process, for each progress line.
            if (self.check_batches > 1 and batch_idx % self.check_batches == 0) or \
                    (not distributed_run and progress.line_due()):
                self._read_back(progress)
            progress.update(lr=max(g["lr"] for g in self.optimizer.param_groups))
        self._read_back(progress)  # the epoch's end: every number is on the host now
        progress.close()
        self.epochs_ran.append(epoch_idx)
        # Mean over batches of the per-batch losses (each a mean over its targets): comparable
        # across epochs, batch sizes and train modes, unlike RecBole's sum over batches.
        losses = self._batch_losses
        if losses and isinstance(losses[0], tuple):
            total_loss = tuple(sum(part) / max(n_batches, 1) for part in zip(*losses))
            mean = sum(total_loss)
        else:
            total_loss = sum(losses) / max(n_batches, 1) if losses else None
            mean = total_loss
        self.history.append({"epoch": epoch_idx, "train_loss": mean})
        self._log_epoch_steps(epoch_idx, first_step)
        if self._saved and not self._is_eval_epoch(epoch_idx):
            self._save_last(epoch_idx)  # no evaluation follows: this epoch's state is final
        return total_loss

    def _optimizer_step(self, step_loss: torch.Tensor) -> None:
        if not self.config["single_spec"]:
            distributed.average_complex_gradients(self.model)  # outside DDP (see distributed.py)
        scaled = self._scaler.is_enabled()
        if scaled:
            self._scaler.unscale_(self.optimizer)  # norms and clipping on true gradient values
        named = [(name, p) for name, p in self.model.named_parameters() if p.grad is not None]
        clip = dict(self.clip_grad_norm or {})
        norms, grad_norm = _grad_norms([p.grad for _, p in named], float(clip.get("norm_type", 2.0))) \
            if named else (None, step_loss.new_zeros(()))
        lr = self._apply_lr_schedule()
        self._pending.append(_Pending("step", self._where, torch.stack([step_loss.float(), grad_norm.float()]),
                                      norms=norms, names=[name for name, _ in named], step=self.optim_step,
                                      epoch=self._epoch, lr=lr, scaled=scaled))
        if self.check_batches == 1:  # a non-finite gradient stops the run before this update
            self._read_back()
        self.guards.check_lr(lr, self.optim_step, self.total_optim_steps, self._where)
        if clip:
            clip_grad_norm_([p for _, p in named], **clip)
        self._scaler.step(self.optimizer)  # fp16: skipped when a gradient is inf/NaN (one read)
        self._scaler.update()
        self.optimizer.zero_grad()
        self.optim_step += 1

    def _read_back(self, progress: EpochProgress | None = None) -> None:
        """Read every pending number back from the device at once (one sync), then run the
        guards and the logs on them in the order they were produced.

        A failure names its own batch and step, also when it is read back later (GPU runs): the
        run then stops at the read-back, after the steps in between (whose weights are then
        likely non-finite: the debug bundle says so, and the epoch checkpoint is the resume point).
        """
        pending, self._pending = self._pending, []
        if pending:
            numbers = torch.cat([p.values.reshape(-1).double() for p in pending]).tolist()  # the one sync
            at = 0
            for record in pending:
                size = record.values.numel()
                values, at = numbers[at:at + size], at + size
                if record.kind == "batch":
                    self._after_batch(record, values, progress)
                else:
                    self._after_step(record, values[0], values[1])
        raise_deferred_errors(self.model)  # S5's time-gap checks counted on the device

    def _after_batch(self, record: _Pending, values: list, progress: EpochProgress | None) -> None:
        loss_value = sum(values)
        try:
            self.guards.check_loss(loss_value, record.where)
        except TrainingGuardError:
            self._where, self._failing_ids = record.where, record.ids
            raise
        self._batch_losses.append(tuple(values) if record.tuple_loss else loss_value)
        if progress is not None:
            progress.add_loss(loss_value)

    def _after_step(self, record: _Pending, step_loss: float, grad_norm: float) -> None:
        if not record.scaled:  # a loss scaler expects inf gradients now and then: it skips those steps
            try:
                self.guards.check_grads(grad_norm, record.where, lambda: self._first_bad(record))
            except TrainingGuardError:
                self._where = record.where
                raise
        entry = {"step": record.step, "epoch": record.epoch, "loss": step_loss, "lr": record.lr,
                 "grad_norm": grad_norm}
        self.step_log.append(entry)
        self.tensorboard.add_scalar("Train/step_loss", step_loss, record.step)
        self.tensorboard.add_scalar("Train/lr", record.lr, record.step)
        self.tensorboard.add_scalar("Train/grad_norm", grad_norm, record.step)
        self.wandblogger.log_step({"loss": step_loss, "lr": record.lr, "grad_norm": grad_norm}, record.step)
        self.guards.check_baseline(step_loss, record.step + 1, record.where)

    @staticmethod
    def _first_bad(record: _Pending) -> str:
        """The first parameter whose gradient norm (kept per parameter) was not finite."""
        if record.norms is None:
            return "?"
        finite = torch.isfinite(record.norms).tolist()
        return next((name for name, ok in zip(record.names, finite) if not ok), "?")

    def _to_device(self, interaction):
        """The batch on the training device. To a GPU through pinned memory, asynchronously: a
        copy from ordinary (pageable) memory would wait for all queued GPU work first."""
        if torch.device(self.device).type != "cuda":
            return interaction.to(self.device)
        return Interaction({k: v.pin_memory().to(self.device, non_blocking=True)
                            for k, v in interaction.interaction.items()})

    def _ids_of(self, interaction) -> dict:
        """The user and item id tensors of a batch (kept, not copied, until its read-back)."""
        ids = {}
        for key in ("USER_ID_FIELD", "ITEM_ID_FIELD"):
            field = self.config[key]
            values = interaction.interaction.get(field) if field else None
            if values is not None:
                ids[field] = values
        return ids

    def _apply_lr_schedule(self) -> float:
        """Set this step's LR on every parameter group; return the largest."""
        if self.lr_schedule is not None:
            factor = self.lr_schedule.factor(self.optim_step)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * factor
        return max(group["lr"] for group in self.optimizer.param_groups)

    def _log_epoch_steps(self, epoch_idx: int, first_step: int) -> None:
        steps = [r for r in self.step_log if r["step"] >= first_step]
        if not steps:
            return
        norms = [r["grad_norm"] for r in steps]
        self.logger.info(
            f"epoch {epoch_idx}: {len(steps)} optimiser steps (run: {self.optim_step}/"
            f"{self.total_optim_steps}), lr {steps[0]['lr']:.4g} -> {steps[-1]['lr']:.4g}, "
            f"grad norm (pre-clip) mean {sum(norms) / len(norms):.4g} max {max(norms):.4g}"
        )

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        return super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses).replace(
            "train loss", "train loss (mean per target)")

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        raise_deferred_errors(self.model)  # S5's time-gap checks of the evaluation, on a GPU
        self._latest_valid_result = valid_result
        if self.history and self.history[-1]["epoch"] == self._epoch:
            self.history[-1]["valid"] = {k: float(v) for k, v in valid_result.items()}
        self.guards.check_metrics(valid_result, self._epoch)
        return valid_score, valid_result

    # ---- checkpoints ----

    def _checkpoint_state(self, epoch: int, best_valid_result=None, rng_ranks=None) -> dict:
        generator = getattr(self._train_data, "generator", None)
        return {
            "model": self.config["model"],
            "epoch": epoch,
            "cur_step": self.cur_step,  # RecBole's early-stopping counter
            "optim_step": self.optim_step,
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": to_plain(dict(best_valid_result)) if best_valid_result else None,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {**self.lr_schedule.state_dict(), "base_lrs": list(self.base_lrs),
                          "step": self.optim_step} if self.lr_schedule else None,
            "grad_accum_steps": self.grad_accum_steps,
            "guards": self.guards.state_dict(),
            "rng": rng_state(self.device),
            "rng_ranks": rng_ranks,  # under DDP: every rank's generators, by rank (else None)
            "dataloader_generator": generator.get_state() if generator is not None else None,
            "loss_scaler": to_plain(self._scaler.state_dict()) if self._scaler.is_enabled() else None,
            "precision": self.precision.precision,
            "history": to_plain(self.history),
            "train_seconds": self.train_seconds(),
            "config": config_to_plain(self.config),
            "dataset": self.dataset_fingerprint,
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        # Every rank gets here at the same points (RecBole's fit and ours call it on all ranks):
        # collect their random generators, so a resumed DDP run continues each rank's streams.
        rng_ranks = None if self.config["single_spec"] else distributed.all_gather_objects(rng_state(self.device))
        if not self.writer:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        if epoch < 0 and self.resumed_from:
            # RecBole saves the current weights as "best" when no epoch is left to train;
            # after a resume that would overwrite the real best checkpoint.
            self.logger.info(f"nothing left to train after epoch {self.start_epoch - 1}")
            return
        # At a new best RecBole saves before storing best_valid_result: the latest result is it.
        best_result = kwargs.pop("best_valid_result", self._latest_valid_result)
        save_checkpoint(self._checkpoint_state(epoch, best_result, rng_ranks), path)
        if verbose:
            self.logger.info(f"Saving current: {path}")

    def _save_last(self, epoch_idx: int) -> None:
        self._save_checkpoint(epoch_idx, verbose=False, saved_model_file=self.last_checkpoint_file,
                              best_valid_result=self.best_valid_result)
        self.logger.info(f"epoch {epoch_idx} done; saved {self.last_checkpoint_file} "
                         f"(resume with --resume to continue from epoch {epoch_idx + 1})")

    def resume_checkpoint(self, resume_file):
        """Continue the run saved in ``resume_file`` (``MODEL-last.pth``) from its next epoch.

        Restores model, optimiser, LR-schedule position, epoch, optimiser step, best score and
        result, early-stopping counter, guard state and every random generator. Unlike
        RecBole's, it leaves ``saved_model_file`` (the best checkpoint) where it is.
        """
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        if str(checkpoint.get("model", "")).lower() != str(self.config["model"]).lower():
            raise UserError(
                f"checkpoint {resume_file} is for model {checkpoint.get('model')!r}, this run trains "
                f"{self.config['model']!r}: resume with the same --model"
            )
        differences = (fingerprint_differences(checkpoint.get("dataset"), self.dataset_fingerprint)
                       if self.dataset_fingerprint else [])  # None: a trainer built outside ss4rec.run
        if differences:
            raise UserError(f"checkpoint {resume_file} was trained on other data than this run loads "
                            f"({'; '.join(differences)}): resume with the run's own --dataset / --data-path, "
                            "or start a new run")
        changed, refused = settings_changes(checkpoint.get("config") or {}, config_to_plain(self.config))
        if refused:
            listed = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in refused.items())
            raise UserError(f"--resume {resume_file}: settings differ from the run's ({listed}). Resume with "
                            "the run's settings (epochs, stopping_step, learning_rate and the progress, guard "
                            "and evaluation settings may change), or start a new run")
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.optim_step = checkpoint.get("optim_step", 0)
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if "learning_rate" in changed:  # the optimiser's state holds the old rate: apply the new one
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base
        self.guards.load_state_dict(checkpoint.get("guards") or {})
        if checkpoint.get("loss_scaler") and self._scaler.is_enabled():  # fp16: the scale reached
            self._scaler.load_state_dict(checkpoint["loss_scaler"])
        self.earlier_train_seconds = float(checkpoint.get("train_seconds", 0.0))
        self.history = [entry for entry in checkpoint.get("history") or [] if entry["epoch"] < self.start_epoch]
        rng = checkpoint.get("rng")
        ranks = checkpoint.get("rng_ranks")
        if not self.config["single_spec"] and ranks and len(ranks) == self.config["world_size"]:
            rng = ranks[self.config["local_rank"]]  # this rank's own streams
        self._pending_resume = {"rng": rng,
                                "generator": checkpoint.get("dataloader_generator")}
        self.resumed_from = {"checkpoint": str(resume_file), "epochs_done": self.start_epoch,
                             "start_epoch": self.start_epoch,
                             "changed": {k: list(v) for k, v in changed.items()}}
        for key, (old, new) in changed.items():
            self.logger.info(f"resume: {key} {old!r} -> {new!r} (applied)")
        self.logger.info(
            f"Resuming from {resume_file}: epochs 0..{self.start_epoch - 1} done (0-based), training "
            f"continues at epoch index {self.start_epoch} (epoch {self.start_epoch + 1} of "
            f"{self.epochs}), optimiser step {self.optim_step}, best valid score "
            f"{self.best_valid_score:.4f}, early-stopping counter {self.cur_step}"
        )

    # ---- guard stop: last good weights and a debug bundle ----

    def _record_guard_stop(self, err: TrainingGuardError) -> None:
        if not self.writer:  # all ranks stop at the same step; rank 0 saves the evidence
            return
        folder = Path(self.checkpoint_dir)
        name = self.config["model"]
        saved = []
        weights_ok = all(bool(p.isfinite().all()) for p in self.model.parameters())
        good_path = folder / f"{name}-lastgood.pth"
        if weights_ok:
            # Mid-epoch weights just before the failing update: for inspection. The epoch
            # recorded is the last completed one, so a resume redoes the interrupted epoch.
            state = self._checkpoint_state(self._epoch - 1, self.best_valid_result)
            state["guard_stop"] = {"error": str(err), "where": self._where}
            save_checkpoint(state, good_path)
            saved.append(f"last good weights {good_path}")
        bundle_path = folder / f"{name}-guard-debug.json"
        bundle = {
            "error": str(err),
            "where": self._where,
            "epoch": self._epoch,
            "optimiser_step": self.optim_step,
            "weights_finite": weights_ok,
            "batch_ids": self._batch_ids(),
            "step_history": list(self.step_log),
            "epoch_losses": {str(k): v for k, v in self.train_loss_dict.items()},
            "valid_history": self.guards.metric_history,
            "last_checkpoint": self.last_checkpoint_file if os.path.exists(self.last_checkpoint_file) else None,
            "lastgood_checkpoint": str(good_path) if weights_ok else None,
            "config": config_to_plain(self.config),
        }
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(bundle_path, bundle)
        saved.append(f"debug bundle {bundle_path}")
        if os.path.exists(self.last_checkpoint_file):
            saved.append(f"resume point (after the fix) {self.last_checkpoint_file}")
        err.args = (f"{err}. Saved: {'; '.join(saved)}",)
        self.logger.error(str(err))

    def _batch_ids(self) -> dict:
        """The ids of the batch that failed (or of the latest one), as lists for the bundle."""
        ids = self._failing_ids if self._failing_ids is not None else (
            self._ids_of(self._batch) if self._batch is not None else {})
        return {field: values.tolist() for field, values in ids.items()}

    # ---- results and shutdown ----

    def train_seconds(self) -> float:
        """Seconds spent in fit over the whole run: earlier legs (before a resume) and this one."""
        return self.earlier_train_seconds + (time.time() - self.fit_started if self.fit_started else 0.0)

    def epochs_trained(self) -> int:
        """Epochs trained in the whole run: earlier legs (before a resume) and this one."""
        earlier = self.resumed_from["epochs_done"] if self.resumed_from else 0
        return earlier + len(self.epochs_ran)

    def training_summary(self) -> dict:
        """What this process trained: for ``results.json``."""
        lrs = [r["lr"] for r in self.step_log]
        return {
            "epochs_ran": list(self.epochs_ran),
            "resumed_from": self.resumed_from,
            "optimizer_steps": self.optim_step,
            "planned_optimizer_steps": self.total_optim_steps,
            "grad_accum_steps": self.grad_accum_steps,
            "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule else None,
            "lr_last_steps": lrs[-3:],
            "precision": self.precision.to_dict(),
            "guard_check_batches": self.check_batches,
            "last_checkpoint": self.last_checkpoint_file if os.path.exists(self.last_checkpoint_file) else None,
            "stopped_by": self.stopped_by,
        }

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if self.config["single_spec"]:
            return self._evaluate_here(eval_data, load_best_model, model_file, show_progress)
        # DDP: rank 0 scores every user (its evaluation loaders are not sharded) and sends the
        # result; the metrics are then exactly a single process's on the same weights.
        result = self._evaluate_here(eval_data, load_best_model, model_file, show_progress) \
            if self.writer else None
        return distributed.broadcast_from_rank0(result)

    def set_reduce_hook(self):
        # RecBole's, without its per-batch host-to-device copy (a wait on GPUs): DDP's forward
        # on a dummy batch made on the device prepares its gradient all-reduce for backward.
        forward = self.model.forward
        self.model.forward = lambda x: x
        try:
            self.distributed_model(torch.zeros(1, dtype=torch.long, device=self.device))
        finally:
            self.model.forward = forward

    def sync_grad_loss(self):
        # RecBole's sum(param) * 0, which ties every parameter to the loss so DDP all-reduces
        # each gradient; its running sum fails on complex parameters (SS4Rec's S5 Lambda).
        return sum(torch.view_as_real(p).sum() * 0 if p.is_complex() else p.sum() * 0
                   for p in self.model.parameters())

    def _map_reduce(self, result, num_sample):
        return result  # evaluation is not sharded (see evaluate): nothing to combine

    def _evaluate_here(self, eval_data, load_best_model, model_file, show_progress):
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def close(self, test_result=None, failed: bool = False) -> None:
        """Log the test metrics to W&B and finish its run (RecBole never calls wandb.finish)."""
        if test_result:
            self.wandblogger.log_test(test_result)
        self.wandblogger.finish(exit_code=1 if failed else 0)
        # RecBole's tensorboard writer uses a path relative to the run folder and flushes from
        # a thread: close it while the run is still in that folder (and before a DDP rank's
        # scratch folder is removed), or a late flush fails with FileNotFoundError.
        self.tensorboard.close()

