"""``ss4rec.run``: RecBole's pipeline for SS4Rec or any RecBole model, kept in one run folder.

    >>> import ss4rec
    >>> result = ss4rec.run(model="SASRec", dataset="ml-100k",
    ...                     config_files=["ml-100k-quick"], config_dict={"epochs": 1},
    ...                     output_dir="runs/sasrec-demo")  # doctest: +SKIP
    >>> result["test"]["ndcg@10"]  # doctest: +SKIP

Steps: check config keys; resolve the dataset (bundled ML-100K, or ``data_path/NAME``;
never a download); build RecBole's ``Config`` (blind to ``sys.argv``); the dataset and its
dataloaders (:mod:`ss4rec.data.loaders`: O(N) sequential data, no pickle caches, prefix or
sequence ``train_mode``); the model; :class:`ss4rec.trainer.SS4RecTrainer`; fit; evaluate the
best checkpoint on the test split; write ``results.json``. Everything RecBole writes
(logs, tensorboard, checkpoints) lands in ``output_dir``, not the current directory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ss4rec.checkpoint import to_plain
from ss4rec.config import check_keys, load_config_file, model_config_file
from ss4rec.errors import ConfigError, DataError, UserError
from ss4rec.runfolder import working_dir, write_json_atomic  # noqa: F401  (also ss4rec.pipeline's API)

BUNDLED_DATASET = "ml-100k"
OWN_MODEL_NAMES = ("SS4Rec", "TiSASRec")  # see own_models()

def _run_defaults() -> dict:
    """Settings every run gets unless the user overrides them (lowest priority).

    Progress bars only on a terminal; elsewhere the trainer logs progress lines.
    """
    return {"show_progress": sys.stderr.isatty()}


def resolve_model(name):
    """A model name -> (canonical name, class). SS4Rec and TiSASRec are ours; others are
    RecBole's (SASRec and GRU4Rec as :mod:`ss4rec.baselines`' subclasses, which can also
    train in ``train_mode: sequence``).

    A model class is used as it is, named by its ``__name__`` (RecBole loads the defaults
    YAML of that name: a subclass named like its RecBole base inherits the base's defaults).
    """
    from recbole.utils import get_model

    if not isinstance(name, str):
        return name.__name__, name
    from ss4rec.baselines import MODELS

    ours = own_models()
    for canonical in [*ours, *recbole_model_names()]:
        if canonical.lower() == name.lower():
            return canonical, ours.get(canonical) or MODELS.get(canonical) or get_model(canonical)
    close = [m for m in [*ours, *recbole_model_names()] if m.lower().startswith(name.lower()[:3])]
    hint = f" (similar: {', '.join(close[:5])})" if close else ""
    raise ConfigError(f"unknown model {name!r}{hint}; use SS4Rec, TiSASRec or a RecBole model name such as SASRec")


def own_models() -> dict:
    """The models this package defines: name -> class (their defaults are in properties/)."""
    from ss4rec.model import SS4Rec
    from ss4rec.tisasrec import TiSASRec

    return {"SS4Rec": SS4Rec, "TiSASRec": TiSASRec}


def recbole_model_names() -> list[str]:
    """Names of RecBole's models (from its per-model YAML files)."""
    from ss4rec.config import _recbole_dir

    return sorted(p.stem for p in (_recbole_dir() / "properties" / "model").glob("*.yaml"))


def dataset_location(dataset: str, data_path) -> Path:
    """Folder holding ``dataset``'s atomic files; a clear DataError if there is none."""
    if data_path is None and dataset == BUNDLED_DATASET:
        from ss4rec.config import _recbole_dir

        return _recbole_dir() / "dataset_example" / BUNDLED_DATASET
    root = Path(data_path if data_path is not None else "dataset").resolve()
    folder = root / dataset
    if not any(folder.glob(f"{dataset}*.inter")):
        raise DataError(
            f"dataset {dataset!r} not found: expected {folder / (dataset + '.inter')}. "
            f"Convert the GroupLens files with `ss4rec convert PATH/TO/{dataset}.zip {root}` "
            f"(or pass --data-path to the folder holding {dataset}/{dataset}.inter); "
            f"'{BUNDLED_DATASET}' is bundled and needs no files"
        )
    return folder


@contextlib.contextmanager
def _isolated_argv():
    # RecBole's Config turns every --key=value in sys.argv into a config key (our CLI
    # flags, pytest's flags). Build it with an argv that holds only the program name.
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


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


def _negative_sampling(merged: dict, model_defaults: dict, user: dict) -> dict:
    """``train_neg_sample_args`` to match ``loss_type`` unless the user set it.

    RecBole refuses CE with negative sampling on (its default) and trains BPR without
    negatives into a crash: derive the setting from the loss instead of asking for it.
    """
    if "train_neg_sample_args" in user:
        return {}
    loss_type = merged.get("loss_type", model_defaults.get("loss_type"))
    if loss_type == "CE":
        return {"train_neg_sample_args": None}
    if loss_type == "BPR":
        return {"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}
    return {}


def build_config(model: str = "SS4Rec", dataset: str = BUNDLED_DATASET, config_files=(),
                 config_dict=None, device: str | None = None, output_dir=None):
    """Merge and check settings, then build RecBole's ``Config``. Returns (config, model_class).

    Priority (low to high): run defaults, the model's YAML, ``config_files`` in order,
    ``config_dict``.
    """
    import torch

    from ss4rec.distributed import DistributedConfig as Config  # RecBole's, plus CPU/torchrun DDP

    from ss4rec.config import known_defaults
    from ss4rec.validation import check_values

    model_name, model_class = resolve_model(model)
    defaults_file = model_config_file(model_name)
    model_defaults = load_config_file(defaults_file) if defaults_file else {}
    defaults = known_defaults(model_name)
    user = {}
    for f in config_files or ():
        data = load_config_file(f)
        check_keys(data, model_name, source=str(f))
        check_values(data, str(f), defaults)
        user.update(data)
    if config_dict:
        check_keys(config_dict, model_name, source="config_dict")
        check_values(config_dict, "config_dict", defaults)
        user.update(config_dict)
    # RecBole only reads its own models' YAML; ours go in as external settings.
    merged = {**_run_defaults(), **(model_defaults if model_name in OWN_MODEL_NAMES else {}), **user}
    merged.update(_negative_sampling(merged, model_defaults, user))

    data_path = merged.pop("data_path", None)
    folder = dataset_location(dataset, data_path)
    if "load_col" not in merged and dataset != BUNDLED_DATASET:
        # RecBole's default for datasets without a bundled YAML loads only user and item
        # ids: no timestamp, so no time order and no SS4Rec. Load every column instead.
        merged["load_col"] = None
    merged["data_path"] = str(folder.parent)
    if output_dir is not None:
        merged["checkpoint_dir"] = str(Path(output_dir).resolve() / "checkpoints")

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for, but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use --device cpu "
            "or install a CUDA build of torch on a GPU machine"
        )
    if device not in (None, "cpu", "cuda"):
        raise UserError(f"device must be cpu or cuda, not {device!r}")
    if device == "cpu":
        merged["use_gpu"] = False
    check_train_mode(model_name, model_class, merged)

    saved_cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    with _isolated_argv():
        config = Config(model=model_class, dataset=dataset, config_dict=merged)
    # RecBole's _init_device overwrites CUDA_VISIBLE_DEVICES with gpu_id: undo that.
    if saved_cvd is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = saved_cvd
    if device == "cpu" or not merged.get("use_gpu", True):
        config["device"] = torch.device("cpu")
    # RecBole forces ml-100k to its bundled copy whatever data_path says; honour ours.
    config["data_path"] = str(folder)
    # What rebuilds this exact run later (evaluate, recommend, drift): saved in checkpoints.
    config["run_settings"] = {"model": model_name, "dataset": dataset, "device": device,
                              "config_dict": to_plain(merged)}
    return config, model_class


def check_train_mode(model_name: str, model_class, settings: dict) -> None:
    """A ConfigError unless ``model_class`` can train in the chosen ``train_mode``."""
    from ss4rec.data.modes import train_mode
    from ss4rec.losses import supports_windows

    if train_mode(settings) == "sequence" and not supports_windows(model_class):
        raise ConfigError(
            f"{model_name} cannot train in train_mode: sequence (it does not score every "
            "position; SS4Rec, TiSASRec, SASRec and GRU4Rec can): set train_mode: prefix"
        )


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
    from recbole.utils import init_seed

    from ss4rec.checkpoint import dataset_fingerprint, fingerprint_differences, load_checkpoint
    from ss4rec.data.loaders import create_dataset, prepare_data

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
    import numpy
    import pandas
    import recbole
    import torch

    import ss4rec

    return {
        "ss4rec": ss4rec.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "recbole": recbole.__version__, "numpy": numpy.__version__, "pandas": pandas.__version__,
    }


def _carry_best_checkpoint(resume: Path, best_file: str, logger) -> None:
    """Resuming into another folder: bring the run's best checkpoint along (verified on copy).

    The best-so-far weights live beside the resumed checkpoint; without them a resumed run
    that finds no better epoch would have no best checkpoint to test.
    """
    from ss4rec.checkpoint import load_checkpoint

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
    from ss4rec.checkpoint import load_checkpoint

    state = load_checkpoint(resume)
    done = int(state.get("epoch", -1)) + 1
    stopped_early = int(state.get("cur_step", 0)) > int(config["stopping_step"])
    if done < int(config["epochs"]) and not stopped_early:
        return None
    run_dir = resume.parent.parent  # RUN/checkpoints/MODEL-last.pth
    results = run_dir / "results.json"
    why = "early stopping ended it" if stopped_early else f"all {config['epochs']} epochs are done"
    if not quiet:
        print(f"nothing to do: the run in {run_dir} is finished ({why}); its results stay in {results}. "
              "To train longer, resume with a larger --set epochs=N (or --set stopping_step=N)",
              file=sys.stderr)
    return json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {
        "run_dir": str(run_dir), "test": {}, "epochs_run": done}


def _log_estimate(logger, data, train_data) -> None:
    """Before the first epoch: preflight's host-memory estimate, and when the ETA comes."""
    from ss4rec.data.sequences import estimate_host_memory

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
        output_dir=None, device: str | None = None, saved: bool = True, resume=None) -> dict:
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

    Returns:
        The contents of ``results.json``: model, dataset, best_valid, test, epochs_run,
        train_seconds, seconds_per_epoch, parameters, checkpoint, config, versions, history.
        ``curves.png`` beside it plots the history.
    """
    from ss4rec import distributed

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
        return _run(model, dataset, config_files, config_dict, out, device, saved, resume, out)
    # A DDP rank other than 0 never touches the run folder (it may be on another machine, or
    # shared): RecBole's own files (tensorboard, its checkpoint folder) go to a scratch folder.
    scratch = Path(tempfile.mkdtemp(prefix=f"ss4rec-rank{distributed.rank()}-"))
    try:
        return _run(model, dataset, config_files, config_dict, out, device, saved, resume, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(model, dataset, config_files, config_dict, out: Path, device, saved, resume, work: Path) -> dict:
    """:func:`run` in ``work``: the run folder ``out`` itself, or a DDP rank's scratch folder."""
    import torch
    from recbole.utils import init_seed

    from ss4rec import distributed
    from ss4rec.checkpoint import config_to_plain, dataset_fingerprint
    from ss4rec.data.loaders import create_dataset, prepare_data
    from ss4rec.data.modes import train_mode
    from ss4rec.losses import window_loss
    from ss4rec.preflight import check_before_building
    from ss4rec.runfolder import RunLock
    from ss4rec.trainer import SS4RecTrainer

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
    try:
        work.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        raise UserError(f"--output {work}: cannot create the run folder ({exc.strerror}); "
                        "give a writable folder path") from None

    log_file = work / "train.log" if writer else None
    with RunLock(work), _run_logging(log_file, prefix=f"rank {distributed.rank()}: " * (not writer)), \
            working_dir(work):
        logger = logging.getLogger()
        init_seed(config["seed"], config["reproducibility"])
        logger.info(f"run folder: {out}")
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
        # Every rank holds the whole dataset: record each one's host-memory peak (GB, Linux).
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        peak_rss_ranks = [peak_rss] if config["single_spec"] else distributed.all_gather_objects(peak_rss)

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
        "peak_host_memory_gb": [round(x, 3) for x in peak_rss_ranks],  # per process (DDP: by rank)
        "n_users": data.user_num,
        "n_items": data.item_num,
        "checkpoint": trainer.saved_model_file if saved else None,
        "run_dir": str(out),
        "device": str(config["device"]),
        "config": config_to_plain(config),
        "versions": versions(),
        "training": trainer.training_summary(),  # epochs_ran (0-based), resumed_from, steps, LR
        "history": trainer.history,  # per epoch: train loss (mean per target), valid metrics
    }
    if torch.cuda.is_available() and str(config["device"]).startswith("cuda"):
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if writer:  # one writer under DDP
        from ss4rec.report import plot_curves

        write_json_atomic(out / "results.json", result)
        plot_curves(trainer.history, out / "curves.png", title=f"{config['model']} on {dataset}")
    distributed.shutdown()
    return result
