"""``ss4rec.run``: RecBole's pipeline for SS4Rec or any RecBole model, kept in one run folder.

    >>> import ss4rec
    >>> result = ss4rec.run(model="SASRec", dataset="ml-100k",
    ...                     config_files=["ml-100k-quick"], config_dict={"epochs": 1},
    ...                     output_dir="runs/sasrec-demo")  # doctest: +SKIP
    >>> result["test"]["ndcg@10"]  # doctest: +SKIP

Steps: check config keys; resolve the dataset (bundled ML-100K, or ``data_path/NAME``;
never a download); build RecBole's ``Config`` (blind to ``sys.argv``); the dataset and its
dataloaders (:mod:`ss4rec.data.loaders`: O(N) sequential data, no pickle caches, prefix or
sequence ``train_mode``); the model; :class:`ss4rec.training.trainer.SS4RecTrainer`; fit; evaluate the
best checkpoint on the test split; write ``results.json``. Everything RecBole writes
(logs, tensorboard, checkpoints) lands in ``output_dir``, not the current directory.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import re
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy
import pandas
import recbole
import torch
from recbole.utils import init_seed

from ss4rec.data.loaders import create_dataset, prepare_data
from ss4rec.data.modes import train_mode
from ss4rec.data.sequences import estimate_host_memory
from ss4rec.errors import UserError
from ss4rec.models.losses import window_loss
from ss4rec.pipeline.preflight import check_before_building
from ss4rec.pipeline.settings import BUNDLED_DATASET, build_config
from ss4rec.ssm.mamba import backend_facts
from ss4rec.training import distributed
from ss4rec.training.checkpoint import (
    config_to_plain,
    dataset_fingerprint,
    fingerprint_differences,
    load_checkpoint,
)
from ss4rec.training.curves import plot_curves
from ss4rec.training.devices import device_facts, peak_gpu_memory_mb
from ss4rec.training.runfolder import (
    RunLock,
    check_run_folder,
    clear_earlier_run,
    discard_refused_run,
    is_fresh,
    working_dir,
    write_json_atomic,
)
from ss4rec.training.trainer import SS4RecTrainer


class _PlainFormatter(logging.Formatter):
    """Drops the ANSI colour codes RecBole puts into its messages (log files, pipes)."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def format(self, record):
        return self.ANSI.sub("", super().format(record))


@contextlib.contextmanager
def _run_logging(log_file: Path | None, prefix: str = ""):
    """RecBole logs through the root logger: send it to the run's log file and stderr.

    Colours stay only on a terminal; the log file and redirected output are plain text.
    Without a log file (a DDP rank other than 0) only warnings and errors reach stderr,
    each line starting with ``prefix`` (``rank 1:``).
    """
    root = logging.getLogger()
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.insert(0, logging.FileHandler(log_file, encoding="utf-8"))
    else:
        handlers[0].setLevel(logging.WARNING)
    fmt = (f"%(asctime)s {prefix}%(levelname)s %(message)s".replace("  ", " "), "%H:%M:%S")
    for h in handlers:
        coloured = h.stream is sys.stderr and sys.stderr.isatty()
        h.setFormatter(logging.Formatter(*fmt) if coloured else _PlainFormatter(*fmt))
        root.addHandler(h)
    saved_level = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(saved_level)


def restore(checkpoint, device: str | None = "cpu", config_dict=None):
    """Rebuild a finished run from its checkpoint: same settings, same data split, trained weights.

        >>> run = restore("runs/demo/checkpoints/SS4Rec-best.pth")  # doctest: +SKIP
        >>> scores = run.model.full_sort_predict(batch)  # doctest: +SKIP

    Args:
        checkpoint: a checkpoint written by :func:`run` (``checkpoints/MODEL-best.pth``).
        device: where to put the model (default cpu).
        config_dict: settings to change (e.g. ``{"data_path": ...}`` if the data moved).

    Returns:
        A :class:`RestoredRun` with config, dataset, train/valid/test loaders, model and
        the raw checkpoint dict.
    """


    state = load_checkpoint(checkpoint)
    settings = state.get("config", {}).get("run_settings")
    if not settings:
        raise UserError(f"checkpoint {checkpoint} has no run_settings: it was not written by ss4rec.run")
    merged = dict(settings["config_dict"])
    merged.update(config_dict or {})
    config, model_class = build_config(settings["model"], settings["dataset"], (), merged, device)
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    differences = fingerprint_differences(state.get("dataset"), dataset_fingerprint(config, data))
    if differences:
        raise UserError(f"checkpoint {checkpoint} was trained on other data than {config['data_path']} holds "
                        f"now ({'; '.join(differences)}): point --data-path at the run's own data")
    train_data, valid_data, test_data = prepare_data(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = model_class(config, train_data._dataset).to(config["device"])
    net.load_state_dict(state["state_dict"])
    net.eval()
    return RestoredRun(config, data, train_data, valid_data, test_data, net, state)


@dataclass
class RestoredRun:
    """A trained model with the exact data and settings it was trained with."""

    config: object
    dataset: object
    train_data: object
    valid_data: object
    test_data: object
    model: object
    checkpoint: dict


def versions() -> dict:
    return {
        "ss4rec": importlib.metadata.version("ss4rec"), "python": sys.version.split()[0], "torch": torch.__version__,
        "recbole": recbole.__version__, "numpy": numpy.__version__, "pandas": pandas.__version__,
    }


def _carry_best_checkpoint(resume: Path, best_file: str, logger) -> None:
    """Resuming into another folder: bring the run's best checkpoint along (verified on copy).

    The best-so-far weights live beside the resumed checkpoint; without them a resumed run
    that finds no better epoch would have no best checkpoint to test.
    """

    source = resume.parent / Path(best_file).name
    target = Path(best_file)
    if source.resolve() == target.resolve() or not source.is_file() or target.exists():
        return
    load_checkpoint(source)  # refuse a damaged best checkpoint before relying on it
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    logger.info(f"resume into a new folder: copied the best checkpoint so far {source} -> {target}")


def _finished_run(resume: Path, config, quiet: bool = False) -> dict | None:
    """The results of the run ``resume`` belongs to if it has nothing left to train, else None.

    Finished: its last epoch was the last of ``epochs``, or early stopping had ended it. Such
    a run is left as it is (its ``results.json`` stays), and the caller is told so.
    """

    state = load_checkpoint(resume)
    _check_same_run(state, resume, config)
    done = int(state.get("epoch", -1)) + 1
    stopped_early = int(state.get("cur_step", 0)) > int(config["stopping_step"])
    if done < int(config["epochs"]) and not stopped_early:
        return None  # the trainer compares the whole data fingerprint once the data is loaded
    fingerprint = state.get("dataset") or {}
    inter = Path(config["data_path"]) / f"{config['dataset']}.inter"
    if fingerprint.get("bytes") is not None and inter.is_file() and inter.stat().st_size != fingerprint["bytes"]:
        raise UserError(f"checkpoint {resume} was trained on other data than this run loads (bytes: "
                        f"{fingerprint['bytes']:,} in the checkpoint, {inter.stat().st_size:,} now): its "
                        "results belong to that data; point --data-path at it, or start a new run")
    run_dir = resume.parent.parent  # RUN/checkpoints/MODEL-last.pth
    results = run_dir / "results.json"
    why = "early stopping ended it" if stopped_early else f"all {config['epochs']} epochs are done"
    if not quiet:
        print(f"nothing to do: the run in {run_dir} is finished ({why}); its results stay in {results}. "
              "To train longer, resume with a larger --set epochs=N (or --set stopping_step=N)",
              file=sys.stderr)
    return json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {
        "run_dir": str(run_dir), "test": {}, "epochs_run": done}


def _check_same_run(state: dict, resume: Path, config) -> None:
    """``--resume`` continues one run: refuse another --model or --dataset before anything else.

    (Resuming an unfinished run checks the data fingerprint as well, once the data is loaded:
    :meth:`ss4rec.training.trainer.SS4RecTrainer.resume_checkpoint`.)
    """
    saved = (state.get("config") or {}).get("run_settings") or {}
    model, dataset = state.get("model") or saved.get("model"), saved.get("dataset")
    problems = []
    if model and str(model).lower() != str(config["model"]).lower():
        problems.append(f"model {model!r} there, --model {config['model']!r} now")
    if dataset and dataset != config["dataset"]:
        problems.append(f"dataset {dataset!r} there, --dataset {config['dataset']!r} now")
    if problems:
        raise UserError(f"--resume {resume} belongs to another run ({'; '.join(problems)}): resume with "
                        "that run's --model, --dataset and data, or start a new run with a new --output")


def _log_estimate(logger, data, train_data) -> None:
    """Before the first epoch: preflight's host-memory estimate, and when the ETA comes."""

    flat = getattr(data, "flat_feat", None)
    rows = len(flat) if flat is not None else data.inter_num
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    logger.info(f"estimate: ~{estimate_host_memory(rows) / 2**30:.1f} GB host RAM for {rows:,} "
                f"interactions (peak so far {peak:.1f} GB); {len(train_data)} batches an epoch, "
                "the first progress line gives the epoch's ETA")


def default_output_dir(model: str, dataset: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{model}-{dataset}-{stamp}"


def run(model: str = "SS4Rec", dataset: str = BUNDLED_DATASET, config_files=(), config_dict=None,
        output_dir=None, device: str | None = None, saved: bool = True, resume=None,
        epoch_hook=None, overwrite: bool = False) -> dict:
    """Train and test ``model`` on ``dataset`` through RecBole; return (and save) the results.

    Args:
        model: ``SS4Rec`` or any RecBole model name (``SASRec``, ``GRU4Rec``, ``BERT4Rec``, ...).
        dataset: ``ml-100k`` (bundled, no files needed) or a name under ``data_path``.
        config_files: YAML files (or packaged config names such as ``ml-100k-quick``).
        config_dict: settings overriding the files (highest priority).
        output_dir: the run folder (default ``runs/MODEL-DATASET-TIME``): results.json,
            train.log, checkpoints/ and RecBole's tensorboard logs.
        device: ``cpu``, ``cuda`` or None (RecBole's choice: GPU when available).
        saved: save checkpoints and test the best one (else test the last model).
        resume: a ``checkpoints/MODEL-last.pth`` of an interrupted run: continue it from its
            next epoch (same settings expected; ``output_dir`` defaults to that run's folder).
        epoch_hook: called after every evaluated epoch with ``(epoch_idx, valid_score,
            valid_result)``; returning a reason (a non-empty string) ends training there, as
            early stopping does (``results.json`` ``training.stopped_by`` records it).
        overwrite: replace an earlier run in ``output_dir`` (without it such a folder, or one
            holding other files, is refused: :func:`ss4rec.training.runfolder.check_run_folder`).

    Returns:
        The contents of ``results.json``: model, dataset, best_valid, test, epochs_run,
        train_seconds, seconds_per_epoch, parameters, checkpoint, config, versions, history.
        ``curves.png`` beside it plots the history.
    """

    if resume is not None:
        # The caller's working directory, not the run folder's (the run changes into it).
        resume = Path(resume).expanduser().resolve()
        if not resume.is_file():
            raise UserError(f"--resume {resume}: no such checkpoint file; give the "
                            "RUN/checkpoints/MODEL-last.pth of the run to continue")
    if output_dir is None and resume is not None:
        output_dir = resume.parent.parent  # RUN/checkpoints/MODEL-last.pth
    model_label = getattr(model, "__name__", model)
    out = Path(output_dir if output_dir is not None else default_output_dir(model_label, dataset)).resolve()
    if distributed.rank() == 0:
        existed, fresh = out.exists(), is_fresh(out)
        try:
            return _run(model, dataset, config_files, config_dict, out, device, saved, resume, out,
                        epoch_hook, overwrite)
        except UserError:
            if fresh:  # refused before it began (e.g. while loading the data): leave nothing behind
                discard_refused_run(out, remove_folder=not existed)
            raise
    # A DDP rank other than 0 never touches the run folder (it may be on another machine, or
    # shared): RecBole's own files (tensorboard, its checkpoint folder) go to a scratch folder.
    scratch = Path(tempfile.mkdtemp(prefix=f"ss4rec-rank{distributed.rank()}-"))
    try:
        return _run(model, dataset, config_files, config_dict, out, device, saved, resume, scratch, epoch_hook)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(model, dataset, config_files, config_dict, out: Path, device, saved, resume, work: Path,
         epoch_hook=None, overwrite: bool = False) -> dict:
    """:func:`run` in ``work``: the run folder ``out`` itself, or a DDP rank's scratch folder."""


    model_label = getattr(model, "__name__", model)
    writer = work == out
    # Settings first: a run refused for its settings leaves no folder behind.
    config, model_class = build_config(model, dataset, config_files, config_dict, device, work)
    if resume is not None:
        finished = _finished_run(resume, config, quiet=not writer)
        if finished is not None:
            distributed.shutdown()
            return finished
    data_warnings = check_before_building(config, str(model_label), dataset)
    if writer:
        check_run_folder(out, resume, overwrite)  # an earlier run stays unless asked
    try:
        work.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        raise UserError(f"--output {work}: cannot create the run folder ({exc.strerror}); "
                        "give a writable folder path") from None
    resuming_here = resume is not None and resume.parent.parent == out
    replaced = clear_earlier_run(out) if writer and overwrite and not resuming_here else []

    log_file = work / "train.log" if writer else None
    with RunLock(work), _run_logging(log_file, prefix=f"rank {distributed.rank()}: " * (not writer)), \
            working_dir(work):
        logger = logging.getLogger()
        init_seed(config["seed"], config["reproducibility"])
        logger.info(f"run folder: {out}")
        if replaced:
            logger.info(f"--overwrite: removed the earlier run's {', '.join(replaced)}")
        for warning in data_warnings:
            logger.warning(warning)
        if not config["single_spec"]:
            logger.info(f"distributed: {config['world_size']} processes, backend "
                        f"{torch.distributed.get_backend()}, this is rank {config['local_rank']} "
                        f"on {config['device']}; rank 0 writes the run folder and evaluates")
        data = create_dataset(config)
        logger.info(data)
        fingerprint = dataset_fingerprint(config, data)  # before the split changes data's rows
        train_data, valid_data, test_data = prepare_data(config, data)
        _log_estimate(logger, data, train_data)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        net = model_class(config, train_data._dataset).to(config["device"])
        n_params = sum(p.numel() for p in net.parameters() if p.requires_grad)
        logger.info(f"{config['model']}: {n_params:,} trainable parameters")
        trainer = SS4RecTrainer(config, net)
        if train_mode(config) == "sequence":
            trainer.batch_loss = functools.partial(window_loss, net)
        trainer.saved_model_file = str(Path(config["checkpoint_dir"]) / f"{config['model']}-best.pth")
        trainer.dataset_fingerprint = fingerprint
        if epoch_hook is not None:
            trainer.epoch_hooks.append(epoch_hook)
        if resume is not None:
            if writer:
                _carry_best_checkpoint(resume, trainer.saved_model_file, logger)
            trainer.resume_checkpoint(resume)

        distributed.note_pid(config)  # test hook: off unless asked for
        failed = True
        try:
            best_valid_score, best_valid = trainer.fit(
                train_data, valid_data, saved=saved, show_progress=config["show_progress"]
            )
            train_seconds = trainer.train_seconds()  # every leg
            distributed.dump_parameters(trainer.model, config)  # test hook: off unless asked for
            test = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
            failed = False
        finally:  # W&B: test metrics, then wandb.finish (also after a crash)
            trainer.close(test_result=None if failed else test, failed=failed)
        epochs_run = trainer.epochs_trained()  # every leg, when resumed
        # Every rank holds the whole dataset: record each one's host-memory peak (GB, Linux),
        # and on GPUs each one's peak GPU memory (MiB).
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        peak_gpu = peak_gpu_memory_mb(config["device"])
        peaks = [(peak_rss, peak_gpu)] if config["single_spec"] else distributed.all_gather_objects((peak_rss, peak_gpu))

    result = {
        "model": config["model"],
        "dataset": dataset,
        "best_valid_score": float(best_valid_score),
        "best_valid": {k: float(v) for k, v in (best_valid or {}).items()},
        "test": {k: float(v) for k, v in (test or {}).items()},
        "epochs_run": epochs_run,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(epochs_run, 1),
        "parameters": n_params,
        "peak_host_memory_gb": [round(rss, 3) for rss, _ in peaks],  # per process (DDP: by rank)
        "n_users": data.user_num,
        "n_items": data.item_num,
        "checkpoint": trainer.saved_model_file if saved else None,
        "run_dir": str(out),
        "device": str(config["device"]),
        "device_facts": device_facts(config["device"]),  # GPU name, capability, bf16, CUDA_VISIBLE_DEVICES
        "precision": trainer.precision.to_dict(),  # fp32 | bf16 | fp16, and why
        # SS4Rec: the Mamba backend that ran, why, and mamba-ssm / causal-conv1d / torch / CUDA versions
        "mamba": backend_facts(config["mamba_backend"], config["device"], net) if config["mamba_backend"] else None,
        # SS4Rec: the time scale its S5 read (time_unit, seconds per unit, time_transform)
        "time_scale": getattr(net, "time_scale", None),
        "config": config_to_plain(config),
        "versions": versions(),
        "training": trainer.training_summary(),  # epochs_ran (0-based), resumed_from, steps, LR
        "history": trainer.history,  # per epoch: train loss (mean per target), valid metrics
    }
    if peak_gpu is not None:  # the largest over the ranks, and each rank's
        result["peak_gpu_memory_mb"] = max(gpu for _, gpu in peaks)
        result["peak_gpu_memory_mb_by_rank"] = [round(gpu, 1) for _, gpu in peaks]
    if writer:  # one writer under DDP
        write_json_atomic(out / "results.json", result)
        plot_curves(trainer.history, out / "curves.png", title=f"{config['model']} on {dataset}")
    distributed.shutdown()
    return result
