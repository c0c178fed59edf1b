"""Preflight: check a run's environment, config, data, model and optimiser before training.

A GPU hour lost to a typo, a corrupted file or a NaN at step one is worth a few seconds
of checking first. :func:`preflight` builds the run exactly as :func:`ss4rec.run` would
(same config merge, same dataset, same model) and tries it on one real batch:

    >>> from ss4rec.pipeline.preflight import preflight
    >>> report = preflight("SS4Rec", "ml-100k", config_files=["tiny"], device="cpu")  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
    section      check                  status  detail
    environment  versions               PASS    python 3.11.9, torch 2.13.0, recbole 1.2.1, ...
    ...
    estimate     epoch time and memory  PASS    ~4.1 s/epoch (16 batches x 0.26 s), ...
    preflight PASS: 0 FAIL, 1 WARN
    >>> report.ok, report.first_failure  # doctest: +SKIP
    (True, None)

Checks, by section (FAIL stops the run; WARN is worth reading; SKIP: an earlier FAIL
made the check impossible):

* environment: versions; numpy / pandas / recbole combinations known to work; the device
  asked for exists; mamba-ssm's CUDA kernels when ``mamba_backend: cuda``.
* config: unknown keys (and every other error of the config build), ``loss_type`` vs
  negative sampling, the time field loaded, ``MAX_ITEM_LIST_LENGTH`` sane, guard settings.
* data: the ``.inter`` file exists, its header declares ``name:type`` columns, timestamps
  are numbers, finite and non-negative (and the time axis in one line: same-second shares,
  median gap, the ``time_unit: auto`` unit; ``ss4rec inspect`` has the rest); users /
  items / interactions left after filtering.
* model: built on the real dataset; one real training batch forward (finite loss; with CE,
  close to ``ln(n_items)`` at init) and backward (finite gradient norm).
* optimiser: ``learning_rate`` > 0, a known ``learner``, ``epochs`` >= 1.
* estimate: host RAM to load and prepare the data (FAIL, before anything is built, when it
  exceeds the memory available); seconds per epoch and peak memory from timing a few
  optimiser steps, and the epoch time of the other ``train_mode``.

``model`` may be a name or a model class (e.g. a subclass of a RecBole model), as in
:func:`ss4rec.run`.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from recbole.utils import init_seed

from ss4rec.data.atomic import ATOMIC_TYPES, MILLISECONDS_ABOVE
from ss4rec.data.loaders import EXACT_TIME_MODELS, create_dataset, prepare_data
from ss4rec.data.modes import train_mode
from ss4rec.data.reading import file_problem, scan_atomic_file
from ss4rec.data.sequences import TARGET_MASK, count_windows, estimate_host_memory
from ss4rec.data.time_profile import TimeLog, summary_line, time_profile
from ss4rec.errors import ConfigError, DataError, UserError
from ss4rec.models.losses import window_loss
from ss4rec.pipeline.envinfo import environment_info
from ss4rec.pipeline.settings import build_config
from ss4rec.ssm.mamba import GPU_INSTALL_HINT, backend_facts, mamba_kernels_available
from ss4rec.training.devices import device_facts
from ss4rec.training.guards import baseline_loss, guard_settings
from ss4rec.training.precision import autocast, loss_scaler, resolve_precision

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
SECTIONS = ("environment", "config", "data", "model", "optimiser", "estimate")
KNOWN_LEARNERS = ("adam", "sgd", "adagrad", "rmsprop", "sparse_adam", "adamw")
# CE loss at init counts as "near ln(n_items)" within this relative distance.
INIT_LOSS_TOLERANCE = 0.25
TIMED_BATCHES = 2
# bf16/fp16: a parameter fails when more than this share of the gradient entries fp32 gives
# it are exactly 0 in the lower precision (fp16 unscaled at SS4Rec's init: all of dt_proj's).
ZERO_GRAD_TOLERANCE = 0.01
FP16_BACKOFFS = 8  # fp16: halvings of the loss scale tried before an overflow counts as a FAIL


@dataclass
class Check:
    """One line of the preflight table."""

    section: str
    name: str
    status: str
    detail: str


@dataclass
class PreflightReport:
    """All checks of one preflight, in order; ``ok`` when none FAILed."""

    model: str
    dataset: str
    device: str | None
    checks: list[Check] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    estimate: dict = field(default_factory=dict)
    precision: dict = field(default_factory=dict)  # what training would run in (model check)
    device_facts: dict = field(default_factory=dict)  # the device the run would use
    mamba: dict | None = None  # SS4Rec: the Mamba backend the run would use, and its versions

    def add(self, section: str, name: str, status: str, detail: str) -> Check:
        check = Check(section, name, status, " ".join(str(detail).split()))
        self.checks.append(check)
        return check

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    @property
    def first_failure(self) -> str | None:
        """``section/check: detail`` of the first FAIL (the cause to report), or None."""
        for c in self.checks:
            if c.status == FAIL:
                return f"preflight {c.section}/{c.name}: {c.detail}"
        return None

    def counts(self) -> dict:
        return {s: sum(c.status == s for c in self.checks) for s in (PASS, WARN, FAIL, SKIP)}

    def table(self) -> str:
        """The checks as an aligned text table, ending with the verdict line."""
        rows = [("section", "check", "status", "detail")] + [
            (c.section, c.name, c.status, c.detail) for c in self.checks
        ]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{a:<{w0}}  {b:<{w1}}  {s:<6}  {d}".rstrip() for a, b, s, d in rows]
        n = self.counts()
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"preflight {verdict}: {n[FAIL]} FAIL, {n[WARN]} WARN")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "model": self.model, "dataset": self.dataset, "device": self.device,
                "first_failure": self.first_failure, "counts": self.counts(),
                "checks": [asdict(c) for c in self.checks], "estimate": self.estimate,
                "precision": self.precision, "device_facts": self.device_facts, "mamba": self.mamba,
                "environment": self.environment}


def preflight(model="SS4Rec", dataset: str = "ml-100k", config_files=(), config_dict=None,
              device: str | None = None, environment: dict | None = None,
              timed_batches: int = TIMED_BATCHES, processes: int = 1) -> PreflightReport:
    """Run every check (see the module docstring) and return the report; never trains.

    Args are those of :func:`ss4rec.run`. ``environment``: an already computed
    :func:`ss4rec.pipeline.envinfo.environment_info` (computed here when None). ``processes``: DDP
    processes on this machine (``--nproc``), each holding the whole dataset.
    """

    label = getattr(model, "__name__", model)
    report = PreflightReport(model=str(label), dataset=dataset, device=device)
    report.environment = environment if environment is not None else environment_info()
    _check_environment(report, device)
    config, model_class = _build(report, model, dataset, config_files, config_dict, device)
    if config is None:
        _skip_rest(report, "the config could not be built")
        return report
    report.device_facts = device_facts(config["device"])
    if config["mamba_backend"]:
        report.mamba = backend_facts(config["mamba_backend"], config["device"])
    _fast_checks(report, config, dataset, processes=processes)
    # Loading the data and running the model are the slow checks: only for a run that
    # can still go ahead (every failure so far is reported; fix those first).
    if not report.ok:
        _skip_rest(report, "an earlier check failed")
        return report
    loaded = _load_data(report, config)
    if loaded is None:
        _skip_rest(report, "the data could not be loaded")
        return report
    _check_model_and_estimate(report, config, model_class, *loaded, timed_batches=timed_batches)
    return report


def check_settings(config, model_label: str, dataset: str) -> None:
    """Preflight's checks of the settings alone (no data read): the first FAIL as a UserError.

    For ``compare``, which checks every model's settings before the first one trains.
    """
    report = PreflightReport(model=model_label, dataset=dataset, device=str(config["device"]))
    _check_config(report, config)
    _check_batch_memory(report, config)
    _check_optimiser(report, config)
    if not report.ok:
        raise UserError(report.first_failure)


def check_before_building(config, model_label: str, dataset: str, processes: int | None = None) -> list[str]:
    """Preflight's fast checks (settings, optimiser, the .inter file, host memory) for a run
    about to start: the first FAIL is raised as a UserError, the same verdict preflight gives.

    Returns the WARN lines (``section/name: detail``) for the run's log. Nothing is loaded or
    built; one streamed read of the id and time columns is the only pass over the data.
    """

    report = PreflightReport(model=model_label, dataset=dataset, device=str(config["device"]))
    # Under DDP every process on this machine loads the whole dataset (torchrun's count).
    if processes is None:  # --nproc's parent passes its count before it starts the processes
        processes = int(os.environ.get("LOCAL_WORLD_SIZE") or 1) if not config["single_spec"] else 1
    _fast_checks(report, config, dataset, stop_early=True, processes=processes)
    if not report.ok:
        raise UserError(report.first_failure)
    return [f"preflight {c.section}/{c.name}: {c.detail}" for c in report.checks if c.status == WARN]


def _fast_checks(report: PreflightReport, config, dataset: str, stop_early: bool = False,
                 processes: int = 1) -> None:
    """Settings, optimiser, the .inter file and the host-memory estimate: nothing is built.

    ``stop_early``: skip the pass over the data file once a check has failed (a run that is
    refused anyway need not wait for it); preflight reports every check.
    """
    _check_config(report, config)
    _check_batch_memory(report, config)
    _check_optimiser(report, config)
    rows = _check_inter_file(report, config, dataset) if report.ok or not stop_early else 0
    if rows:
        _check_host_memory(report, rows, processes)


def _skip_rest(report: PreflightReport, why: str) -> None:
    """A SKIP line for every section that has no line yet."""
    done = {c.section for c in report.checks}
    for section in SECTIONS:
        if section not in done:
            report.add(section, "-", SKIP, f"not checked: {why}")
    # The host-memory estimate comes before the data loads: the timing may still be missing.
    if "estimate" in done and not any(c.name == "epoch time and memory" for c in report.checks):
        report.add("estimate", "epoch time and memory", SKIP, f"not timed: {why}")


# ---- environment ---------------------------------------------------------------------------

def _check_environment(report: PreflightReport, device: str | None) -> None:
    env = report.environment
    report.add("environment", "versions", PASS,
               f"python {env['python']}, torch {env['torch']}, recbole {env['recbole']}, "
               f"numpy {env['numpy']}, pandas {env['pandas']}")
    problems, notes = [], []
    if env["recbole"] != "1.2.1":
        problems.append(f"recbole {env['recbole']} is not the tested 1.2.1 (pip install recbole==1.2.1)")
    if env["pandas"] and int(env["pandas"].split(".")[0]) >= 3:
        report.add("environment", "compatibility", FAIL,
                   f"pandas {env['pandas']} silently breaks RecBole's loading: pip install 'pandas<3'")
    else:
        if int(env["numpy"].split(".")[0]) >= 2:
            if hasattr(np, "float_"):
                notes.append(f"numpy {env['numpy']} with ss4rec's aliases for RecBole")
            else:
                problems.append("numpy 2 without ss4rec's aliases: `import ss4rec` before RecBole")
        if problems:
            report.add("environment", "compatibility", WARN, "; ".join(problems + notes))
        else:
            report.add("environment", "compatibility", PASS,
                       "; ".join(notes) or "numpy, pandas and recbole versions known to work")
    if device == "cuda" and not env["cuda"]["available"]:
        report.add("environment", "device", FAIL,
                   f"--device cuda, but torch {env['torch']} sees no CUDA GPU (CUDA build: "
                   f"{env['cuda']['build'] or 'none'}): use --device cpu, or a CUDA torch on a GPU machine")
    else:
        where = device or ("cuda" if env["cuda"]["available"] else "cpu")
        gpus = ", ".join(g["name"] for g in env["gpus"]) or "no GPU"
        report.add("environment", "device", PASS, f"{where} ({gpus})")


# ---- config --------------------------------------------------------------------------------

def _build(report, model, dataset, config_files, config_dict, device):
    """``build_config`` as ``ss4rec.run`` calls it; each kind of failure becomes a FAIL line."""

    try:
        return build_config(model, dataset, config_files, config_dict, device)
    except DataError as exc:
        report.add("data", "files exist", FAIL, str(exc))
    except ConfigError as exc:
        loss_vs_sampling = "loss_type is CE" in str(exc)
        report.add("config", "loss vs sampling" if loss_vs_sampling else "keys and values", FAIL, str(exc))
    except UserError as exc:
        if device == "cuda" and any(c.name == "device" and c.status == FAIL for c in report.checks):
            pass  # already reported by the environment checks
        else:
            report.add("environment", "device", FAIL, str(exc))
    except ValueError as exc:  # RecBole's own config validation
        text = str(exc)
        if "loss_type is CE" in text:
            report.add("config", "loss vs sampling", FAIL,
                       f"{text.strip()} Fix: --set train_neg_sample_args=~ (CE scores every item), "
                       "or --set loss_type=BPR")
        else:
            report.add("config", "keys and values", FAIL, f"RecBole rejects the config: {text}")
    return None, None


def _check_config(report: PreflightReport, config) -> None:
    report.add("config", "keys and values", PASS, "every key is known (config files, --set)")

    loss_type = config["loss_type"]
    sampling = (config["train_neg_sample_args"] or {}).get("distribution", "none")
    if loss_type == "BPR" and sampling == "none":
        report.add("config", "loss vs sampling", FAIL,
                   "loss_type BPR needs negative samples, but train_neg_sample_args is off: "
                   "--set 'train_neg_sample_args={distribution: uniform, sample_num: 1}' or use CE")
    else:
        report.add("config", "loss vs sampling", PASS,
                   f"loss_type {loss_type or 'model-defined'}, negative sampling {sampling}")

    time_field = config["TIME_FIELD"]
    load_col = config["load_col"]
    loaded = load_col is None or time_field in (load_col.get("inter") or [])

    is_ss4rec = config["model"] == "SS4Rec"
    reads_time = config["model"] in EXACT_TIME_MODELS
    if loaded:
        report.add("config", "time field", PASS, f"{time_field!r} is loaded")
    else:
        status = FAIL if reads_time else WARN
        why = f"{config['model']} reads the real time gaps" if reads_time else "no time order for the split"
        report.add("config", "time field", status,
                   f"{time_field!r} is not in load_col.inter ({why}): add it, e.g. "
                   f"load_col: {{inter: [user_id, item_id, {time_field}]}}")

    # Types and ranges (an integer >= 2 here) were checked when the config was built
    # (ss4rec.config.validation); what is left is advice.
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    if config["MODEL_TYPE"] is not None and str(config["MODEL_TYPE"]).endswith("SEQUENTIAL"):
        if max_len > 1000:
            report.add("config", "MAX_ITEM_LIST_LENGTH", WARN,
                       f"{max_len} positions per sequence: memory grows with it (paper: 50-200)")
        else:
            report.add("config", "MAX_ITEM_LIST_LENGTH", PASS, str(max_len))

    try:
        guard_settings(config)
        report.add("config", "guards and schedule", PASS,
                   f"lr_scheduler {config['lr_scheduler'] or 'none'}, "
                   f"grad_accum_steps {config['grad_accum_steps'] or 1}")
    except ConfigError as exc:
        report.add("config", "guards and schedule", FAIL, str(exc))

    backend = config["mamba_backend"] if is_ss4rec else None
    if backend is not None:
        _check_mamba_backend(report, config, backend)


def _check_batch_memory(report: PreflightReport, config) -> None:
    """A sequence length whose batches cannot fit, refused before anything is built.

    The lower bound used is one float32 tensor of [batch, MAX_ITEM_LIST_LENGTH, width] (the
    embedded batch every sequential model makes first), for the larger of the training and
    evaluation batches, against the memory of the device that trains (the GPU's memory, else
    the host memory available): a lower bound against an upper one, so it refuses only what
    cannot fit.
    """
    if not str(config["MODEL_TYPE"]).endswith("SEQUENTIAL"):
        return
    length = config["MAX_ITEM_LIST_LENGTH"]
    width = max(int(config[k] or 0) for k in ("hidden_size", "embedding_size")) or 64
    batch = max(int(config["train_batch_size"] or 1), int(config["eval_batch_size"] or 1))
    need = batch * length * width * 4
    device = config["device"]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        # The GPU's whole memory (no CUDA context needed: --nproc's parent checks before it
        # starts the processes and must not hold one), an upper bound of what is free.
        have, where = float(torch.cuda.get_device_properties(device).total_memory), f"the memory of {device}"
    else:
        have, where = available_memory(), "of host memory available"
    if have is None or need <= have:
        return
    report.add("config", "MAX_ITEM_LIST_LENGTH", FAIL,
               f"MAX_ITEM_LIST_LENGTH={length}: one batch of {batch:,} sequences x {length:,} positions x "
               f"{width} features needs at least {need / 2**30:.1f} GB, but {have / 2**30:.1f} GB is {where}: "
               "use a shorter MAX_ITEM_LIST_LENGTH (paper: 50-200) or smaller train_batch_size / eval_batch_size")


def _check_mamba_backend(report: PreflightReport, config, backend: str) -> None:
    on_cuda = str(config["device"]).startswith("cuda")
    kernels = report.environment.get("mamba_kernels", {})
    if backend == "cuda":
        ok, reason = mamba_kernels_available()
        if ok and kernels.get("ok", True) is False and "not checked" not in kernels.get("detail", ""):
            ok, reason = False, kernels["detail"]
        if not ok or not on_cuda:
            where = "" if on_cuda else f" (and the run is on {config['device']})"
            report.add("environment", "mamba kernels", FAIL,
                       f"mamba_backend: cuda, but the kernels cannot run: {reason}{where}. Fix: "
                       f"{GPU_INSTALL_HINT} on a CUDA machine, or --set mamba_backend=torch")
        else:
            report.add("environment", "mamba kernels", PASS, reason)
    elif backend == "auto" and on_cuda and not kernels.get("ok"):
        report.add("environment", "mamba kernels", WARN,
                   "running on CUDA without mamba-ssm kernels: the PyTorch Mamba is slower "
                   f"({GPU_INSTALL_HINT})")


# ---- optimiser -----------------------------------------------------------------------------

def _check_optimiser(report: PreflightReport, config) -> None:
    # learning_rate is a finite number >= 0 and epochs an integer >= 1 (ss4rec.config.validation,
    # checked when the config was built); 0 is left to decide here.
    lr = config["learning_rate"]
    if lr == 0 and config["guard_lr_zero"] is False:  # asked for on purpose (guard switched off)
        report.add("optimiser", "learning rate", WARN, "learning_rate=0 with guard_lr_zero off: nothing will train")
    elif lr == 0:
        report.add("optimiser", "learning rate", FAIL,
                   f"learning_rate={lr!r}: nothing would train; use a positive number "
                   "(paper: --set learning_rate=0.001)")
    elif lr > 0.1:
        report.add("optimiser", "learning rate", WARN, f"learning_rate={lr} is unusually large for Adam")
    else:
        report.add("optimiser", "learning rate", PASS, f"{lr:g}")
    learner = str(config["learner"]).lower()
    if learner not in KNOWN_LEARNERS:
        report.add("optimiser", "learner", WARN,
                   f"learner {config['learner']!r} is unknown: RecBole falls back to Adam "
                   f"(known: {', '.join(KNOWN_LEARNERS)})")
    else:
        report.add("optimiser", "learner", PASS, learner)


# ---- data ----------------------------------------------------------------------------------

def _check_inter_file(report: PreflightReport, config, dataset: str) -> int:
    """Header types and timestamps of NAME.inter, read directly (before RecBole does).

    Returns the number of rows (0 when a check failed or the rows were not counted).
    """

    path = Path(config["data_path"]) / f"{dataset}.inter"
    problem = file_problem(path)
    if problem and not problem.endswith("(0 bytes): delete it or write its header and rows"):
        report.add("data", "files exist", FAIL, problem)
        return 0
    report.add("data", "files exist", PASS, str(path))
    if path.stat().st_size == 0:
        report.add("data", "header types", FAIL, f"{path} is empty (0 bytes): re-create it with "
                   "`ss4rec convert`, or write a header line and one interaction per line")
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    if header[0].startswith("\ufeff"):
        report.add("data", "header types", FAIL,
                   f"{path} starts with a UTF-8 byte-order mark (BOM), which RecBole would read as part of "
                   f"the first column's name: save it as UTF-8 without a BOM, e.g. "
                   f"sed -i '1s/^\\xEF\\xBB\\xBF//' {path}")
        return 0
    untyped = [h for h in header if ":" not in h or h.split(":", 1)[1] not in ATOMIC_TYPES]
    names = {h.split(":", 1)[0]: h.split(":", 1)[1] if ":" in h else None for h in header}
    fix = f"expected tab-separated name:type columns ({', '.join(ATOMIC_TYPES)}); re-create it with `ss4rec convert`"
    if untyped:
        report.add("data", "header types", FAIL, f"{path.name}: header column(s) {untyped} {fix}")
        return 0
    uid, iid, time_field = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"]
    wanted = {uid: "token", iid: "token"}
    if time_field in names:
        wanted[time_field] = "float"
    missing = [f"{n}:{t}" for n, t in wanted.items() if names.get(n) != t]
    if missing:
        report.add("data", "header types", FAIL,
                   f"{path.name} lacks {missing} (header: {header}); {fix}")
        return 0
    report.add("data", "header types", PASS, " ".join(header))
    # The whole file, and the .item / .user files RecBole loads with it, as RecBole will read
    # them (ss4rec.data.reading): encoding, control characters, duplicate columns, field counts.
    try:
        for atomic in [path, *_side_files(config, dataset)]:
            scan_atomic_file(atomic)
    except DataError as exc:
        report.add("data", "file format", FAIL, str(exc))
        return 0

    # One pass with pandas' C parser: ids straight into categories and times into float64,
    # so 32M rows take about 0.5 GB. Only a file with bad times is read again, as text, to
    # quote the first bad value.
    has_time = time_field in names
    columns = {header.index(f"{uid}:token"): uid, header.index(f"{iid}:token"): iid}
    if has_time:
        columns[header.index(f"{time_field}:float")] = time_field
    read = dict(sep="\t", usecols=sorted(columns), keep_default_na=False, quoting=3, engine="c")
    dtypes = {header[c]: ("float64" if name == time_field else "category") for c, name in columns.items()}
    try:
        frame = pd.read_csv(path, dtype=dtypes, **read)
        times_parsed = True
    except ValueError:  # a time that is not a number
        frame = pd.read_csv(path, dtype={k: (str if v == "float64" else v) for k, v in dtypes.items()}, **read)
        times_parsed = False
    frame.columns = [columns[c] for c in sorted(columns)]  # file order
    if frame.empty:
        report.add("data", "rows", FAIL, f"{path} has a header but no rows: add interactions, one per line")
        return 0
    users = frame[uid].cat.codes.to_numpy()
    per_user = np.bincount(users)
    if per_user.max() < 2:
        report.add("data", "rows", FAIL,
                   f"every user in {path.name} has one interaction ({len(per_user):,} users): a sequential "
                   "model needs users with several (leave-one-out holds out each user's last two); "
                   "check that user_id is the user column")
        return 0
    report.add("data", "rows", PASS, f"{len(frame):,} rows, {len(per_user):,} users, "
                                     f"{int((per_user >= 2).sum()):,} with >= 2 interactions")

    if not has_time:
        status = FAIL if config["model"] in EXACT_TIME_MODELS else WARN
        report.add("data", "timestamps", status, f"{path.name} has no {time_field!r} column")
        return 0 if status == FAIL else len(frame)
    values = frame[time_field] if times_parsed else pd.to_numeric(frame[time_field], errors="coerce")
    numbers = values.to_numpy(dtype="float64")
    bad = ~np.isfinite(numbers) | (numbers < 0)
    if bad.any():
        first = int(bad.argmax())
        column = [c for c, name in columns.items() if name == time_field]
        raw = pd.read_csv(path, sep="\t", usecols=column, dtype=str, keep_default_na=False, quoting=3,
                          engine="c", skiprows=range(1, first + 1), nrows=1).iloc[0, 0]
        report.add("data", "timestamps", FAIL,
                   f"{int(bad.sum()):,} of {len(values):,} {time_field} values are not finite "
                   f"non-negative numbers; first at line {first + 2}: {raw!r}. "
                   "Fix or drop those rows (epoch seconds expected)")
        return 0
    report.add("data", "timestamps", PASS,
               f"{len(values):,} rows, {time_field} {values.min():.0f} .. {values.max():.0f}")
    in_ms = int((values > MILLISECONDS_ABOVE).sum())
    if in_ms:
        report.add("data", "timestamp unit", WARN,
                   f"{in_ms:,} {time_field} values exceed {MILLISECONDS_ABOVE:.0e}: they look like milliseconds, "
                   "not epoch seconds. SS4Rec reads gaps in time_unit: --set time_unit=1000 makes them "
                   "seconds again (or divide the column by 1000)")
    items = frame[iid].cat.codes.to_numpy()
    # The time axis in one line (same-second shares, median gap, the auto unit): ss4rec inspect has the rest.
    report.add("data", "time axis", PASS, summary_line(time_profile(TimeLog.from_arrays(users, items, numbers,
                                                                                         coded=True))))
    keys = pd.DataFrame({"u": users, "i": items, "t": values.to_numpy()})
    duplicates = int(keys.duplicated().sum())
    if duplicates:
        report.add("data", "duplicate rows", WARN,
                   f"{duplicates:,} rows of {path.name} repeat an earlier (user, item, {time_field}) exactly: "
                   "every copy is a training example; drop them (e.g. `sort -u`) unless they are real repeats")
    return len(values)


def _side_files(config, dataset: str) -> list[Path]:
    """The other atomic files RecBole loads with NAME.inter: NAME.user, NAME.item (and any
    ``additional_feat_suffix``) that exist, unless ``load_col`` leaves them out."""
    load_col = config["load_col"]
    suffixes = ["user", "item", *(config["additional_feat_suffix"] or [])]
    folder = Path(config["data_path"])
    return [folder / f"{dataset}.{s}" for s in suffixes
            if (folder / f"{dataset}.{s}").exists() or (folder / f"{dataset}.{s}").is_symlink()
            if load_col is None or s in load_col]


def available_memory() -> float | None:
    """Bytes this process may still use: MemAvailable, capped by a cgroup v2 limit (None if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if ":" in line}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return float(available)


def _check_host_memory(report: PreflightReport, rows: int, processes: int = 1) -> None:
    """Host RAM that loading and preparing ``rows`` interactions will take, before any is built
    (times ``processes``: each DDP process on this machine holds its own copy)."""

    need = estimate_host_memory(rows) * processes
    have = available_memory()
    report.estimate["host_memory_gb"] = need / 2**30
    text = f"~{need / 2**30:.1f} GB host RAM to load and prepare {rows:,} rows (either train_mode)"
    if processes > 1:
        text += f" for {processes} processes on this machine (each holds a copy)"
    if have is None:
        report.add("estimate", "host memory", PASS, text + "; available memory unknown")
    elif need > have:
        report.add("estimate", "host memory", FAIL,
                   f"{text}, but only {have / 2**30:.1f} GB is available: use a machine with more "
                   "memory, stop other processes, or filter the data harder (user_inter_num_interval "
                   "/ item_inter_num_interval, or `ss4rec split` to train on a time range)")
    else:
        report.add("estimate", "host memory", PASS, f"{text}; {have / 2**30:.1f} GB available")


def _load_data(report: PreflightReport, config):
    """RecBole's dataset and split exactly as the run builds them; counts after filtering."""


    try:
        init_seed(config["seed"], config["reproducibility"])
        with warnings.catch_warnings():  # pandas' chained-assignment notices inside RecBole
            warnings.simplefilter("ignore", FutureWarning)
            data = create_dataset(config)
            train_data, valid_data, test_data = prepare_data(config, data)
    except UserError as exc:  # the run gives this same line
        report.add("data", "load and filter", FAIL, str(exc))
        return None
    except Exception as exc:
        report.add("data", "load and filter", FAIL, f"RecBole cannot build the dataset: {type(exc).__name__}: {exc}")
        return None
    users, items, inters = data.user_num - 1, data.item_num - 1, data.inter_num
    counts = f"{users:,} users, {items:,} items, {inters:,} interactions after filtering"
    if users <= 0 or items <= 0 or len(train_data) == 0:
        report.add("data", "after filtering", FAIL,
                   f"{counts}: nothing left to train on; loosen user_inter_num_interval / "
                   "item_inter_num_interval or check the data")
        return None
    report.add("data", "after filtering", WARN if users < 50 else PASS,
               counts + (" (very few users: metrics will be noisy)" if users < 50 else ""))
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    if config["MODEL_TYPE"] is not None and str(config["MODEL_TYPE"]).endswith("SEQUENTIAL"):
        longest = int(torch.bincount(data.inter_feat[data.uid_field]).max())  # interactions per user
        if isinstance(max_len, int) and max_len > 2 * longest:
            report.add("config", "MAX_ITEM_LIST_LENGTH", WARN,
                       f"{max_len} is over twice the longest history ({longest}): mostly padding")
    return data, train_data, valid_data


# ---- model, optimiser step, estimate --------------------------------------------------------

def _loss_of(net, batch):
    """The training loss of one batch, as the trainer computes it in this train_mode."""

    loss = window_loss(net, batch) if TARGET_MASK in batch.interaction else net.calculate_loss(batch)
    return sum(loss) if isinstance(loss, tuple) else loss


def _positions_per_epoch(config, train_data) -> dict:
    """Positions the model computes in one training epoch, per train_mode (padding included)."""


    max_len = config["MAX_ITEM_LIST_LENGTH"]
    dataset = train_data._dataset
    if getattr(train_data, "targets", None) is not None:  # sequence mode: windows
        targets, windows = train_data.targets, len(dataset)
    else:
        uid = dataset.inter_feat[dataset.uid_field].numpy()
        targets = len(uid)
        windows = count_windows(np.unique(uid, return_counts=True)[1], max_len)
    return {"prefix": targets * max_len, "sequence": windows * max_len}


def _check_model_and_estimate(report, config, model_class, data, train_data, valid_data,
                              timed_batches: int) -> None:


    device = config["device"]
    try:
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        net = model_class(config, train_data._dataset).to(device)
    except Exception as exc:
        report.add("model", "build", FAIL, f"{type(exc).__name__}: {exc}")
        _skip_rest(report, "the model check failed")
        return
    n_params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    report.add("model", "build", PASS, f"{config['model']}: {n_params:,} trainable parameters on {device}")

    try:
        precision = resolve_precision(config, device)
    except ConfigError as exc:
        report.add("model", "precision", FAIL, str(exc))
        _skip_rest(report, "the precision cannot run here")
        return
    report.precision = precision.to_dict()
    report.add("model", "precision", PASS, f"{precision.precision} ({precision.why})")

    batches = iter(train_data)
    batch = next(batches).to(device)
    net.train()
    initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
    try:
        value, grads = _one_backward(net, batch, precision.precision, device)
    except Exception as exc:
        report.add("model", "forward", FAIL, f"one real batch fails: {type(exc).__name__}: {exc}")
        _skip_rest(report, "the model check failed")
        return
    if not math.isfinite(value):
        report.add("model", "forward", FAIL,
                   f"loss is {value} on the first real batch ({len(batch)} rows): check the data "
                   "(timestamps, ids) and the model's init; nothing can train from here")
        report.add("model", "backward", SKIP, "not run: the loss is not finite")
        _skip_rest(report, "the model check failed")
        return
    report.add("model", "forward", PASS,
               f"loss {value:.4f} on the first batch ({len(batch)} rows, {precision.precision})")
    baseline = baseline_loss(config["loss_type"], getattr(net, "n_items", None))
    if str(config["loss_type"]).upper() == "CE" and baseline:
        off = abs(value / baseline - 1)
        report.add("model", "CE loss at init", PASS if off <= INIT_LOSS_TOLERANCE else WARN,
                   f"{value:.3f} vs ln(n_items) = {baseline:.3f} ({off:.0%} off; tolerance "
                   f"{INIT_LOSS_TOLERANCE:.0%})" + ("" if off <= INIT_LOSS_TOLERANCE else
                                                    ": large init scores, check the init"))
    if not _check_gradients(report, net, batch, grads, precision.precision, device, initial):
        _skip_rest(report, "the model check failed")
        return
    _estimate(report, config, net, train_data, batches, timed_batches, precision.precision)


def _one_backward(net, batch, precision: str, device, seed: int = 0) -> tuple[float, dict]:
    """(loss, {name: true gradient}) of one batch in ``precision``, as the trainer computes it:
    autocast, and for fp16 a loss scaler (backing off from an inf/NaN like a training step).
    Dropout draws from ``seed``, so passes in two precisions see the same masks."""
    scaler = loss_scaler(precision, device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # unscale_ needs one; never steps
    for _ in range(FP16_BACKOFFS if scaler.is_enabled() else 1):
        net.zero_grad()
        with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
            torch.manual_seed(seed)
            with autocast(precision, device):
                loss = _loss_of(net, batch)
            scaler.scale(loss).backward()
        if not scaler.is_enabled():
            break
        scaler.unscale_(optimizer)
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if all(bool(torch.isfinite(g).all()) for g in grads):
            break
        scaler.update(scaler.get_scale() / 2)  # what a training step does after an overflow
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in net.named_parameters()
                                  if p.grad is not None}


def _check_gradients(report, net, batch, grads: dict, precision: str, device, initial: dict) -> bool:
    """FAIL on a non-finite or all-zero gradient, and (bf16/fp16) on gradient entries that the
    lower precision turns to exactly 0 where fp32 has them (underflow: silently no learning)."""
    bad = [name for name, g in grads.items() if not bool(torch.isfinite(g).all())]
    if bad:
        report.add("model", "backward", FAIL,
                   f"non-finite gradient, first in {bad[0]} ({len(bad)} tensors, {precision})")
        return False
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))) \
        if grads else 0.0
    if precision != "fp32":
        net.load_state_dict(initial)
        _, reference = _one_backward(net, batch, "fp32", device)
        net.load_state_dict(initial)
        lost = []
        for name, grad in grads.items():
            if name not in reference:
                continue
            has = reference[name] != 0
            zeroed = int((has & (grad == 0)).sum())
            if zeroed > ZERO_GRAD_TOLERANCE * max(int(has.sum()), 1):
                lost.append(f"{name} {zeroed}/{int(has.sum())}")
        if lost:
            report.add("model", "backward", FAIL,
                       f"{precision} turns gradient entries that fp32 has into exactly 0 ({'; '.join(lost[:3])}"
                       f"{'; ...' if len(lost) > 3 else ''}): they would not learn. Use "
                       + ("precision: bf16 (fp32's range) or fp32" if precision == "fp16" else "precision: fp32"))
            return False
    if norm == 0.0:
        report.add("model", "backward", FAIL,
                   f"every gradient is 0 ({precision}): nothing would change in training; check that "
                   "parameters require grad and that the loss depends on them")
        return False
    report.add("model", "backward", PASS,
               f"gradient norm {norm:.4g} over {len(grads)} tensors ({precision}"
               + (", every gradient entry fp32 has is there)" if precision != "fp32" else ")"))
    return True


def _peak_memory_mb(device) -> tuple[float, str]:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20, "peak GPU memory"

    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "peak process RSS"


def _estimate(report, config, net, train_data, batches, timed_batches: int, precision: str = "fp32") -> None:
    """Time a few optimiser steps in ``precision``: seconds per epoch and memory (lower bound:
    no evaluation)."""

    lr = config["learning_rate"]
    if not isinstance(lr, (int, float)) or lr <= 0:
        report.add("estimate", "epoch time and memory", SKIP, "not timed: learning_rate is not positive")
        return
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    device = config["device"]
    scaler = loss_scaler(precision, device)
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(timed_batches):
        try:
            batch = next(batches).to(device)
        except StopIteration:
            break
        start = time.perf_counter()
        optimizer.zero_grad()
        with autocast(precision, device):
            loss = _loss_of(net, batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    if not times:
        report.add("estimate", "epoch time and memory", SKIP, "one batch per epoch: nothing left to time")
        return
    per_batch = sorted(times)[len(times) // 2]
    n_batches = len(train_data)
    epoch_s = per_batch * n_batches
    memory_mb, memory_what = _peak_memory_mb(device)
    epochs = config["epochs"] or 0
    report.estimate.update({"seconds_per_batch": per_batch, "batches_per_epoch": n_batches,
                            "seconds_per_epoch": epoch_s, "epochs": epochs,
                            "max_training_hours": epoch_s * epochs / 3600, "memory_mb": memory_mb,
                            "memory_kind": memory_what})
    report.add("estimate", "epoch time and memory", PASS,
               f"~{epoch_s:.1f} s/epoch of training ({n_batches} batches x {per_batch:.3f} s, "
               f"evaluation not included); at most {epochs} epochs ~ {epoch_s * epochs / 3600:.2f} h; "
               f"{memory_what} {memory_mb:,.0f} MB")
    if str(config["MODEL_TYPE"]).endswith("SEQUENTIAL"):
        mode = train_mode(config)
        other = "prefix" if mode == "sequence" else "sequence"
        positions = _positions_per_epoch(config, train_data)
        other_s = epoch_s * positions[other] / positions[mode]
        report.estimate["seconds_per_epoch_by_mode"] = {mode: epoch_s, other: other_s}
        report.add("estimate", "train modes", PASS,
                   f"train_mode {mode}: ~{epoch_s:.1f} s/epoch (timed); {other}: ~{other_s:.1f} s/epoch "
                   f"(scaled by positions computed, {positions[mode]:,} vs {positions[other]:,})")
