"""A run's settings: from model name, dataset, config files and overrides to RecBole's ``Config``.

Used by every command that builds a run (``train``, ``preflight``, ``compare``, ``evaluate``,
``recommend``, ``drift``): it resolves the model (ours or RecBole's), finds the dataset (the
bundled ML-100K or ``data_path/NAME``, never a download), merges the settings (run defaults,
the model's YAML, ``config_files``, ``config_dict``), checks every key and value
(:mod:`ss4rec.config`), derives negative sampling from the loss, checks the ``train_mode``,
and builds the ``Config`` blind to ``sys.argv``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import get_model

from ss4rec.config.files import _recbole_dir, check_keys, known_defaults, load_config_file, model_config_file
from ss4rec.config.shapes import combination_problem
from ss4rec.config.validation import check_values
from ss4rec.data.modes import train_mode
from ss4rec.errors import ConfigError, DataError, UserError
from ss4rec.models.baselines import MODELS
from ss4rec.models.losses import supports_windows
from ss4rec.models.ss4rec import SS4Rec
from ss4rec.models.tisasrec import TiSASRec
from ss4rec.training.checkpoint import to_plain
from ss4rec.training.distributed import DistributedConfig

BUNDLED_DATASET = "ml-100k"
OWN_MODEL_NAMES = ("SS4Rec", "TiSASRec")  # see own_models()

def _run_defaults() -> dict:
    """Settings every run gets unless the user overrides them (lowest priority).

    Progress bars only on a terminal; elsewhere the trainer logs progress lines.
    """
    return {"show_progress": sys.stderr.isatty()}


def resolve_model(name):
    """A model name -> (canonical name, class). SS4Rec and TiSASRec are ours; others are
    RecBole's (SASRec, GRU4Rec and BERT4Rec as :mod:`ss4rec.models.baselines`' subclasses, which
    can also train in ``train_mode: sequence``).

    A model class is used as it is, named by its ``__name__`` (RecBole loads the defaults
    YAML of that name: a subclass named like its RecBole base inherits the base's defaults).
    """

    if not isinstance(name, str):
        return name.__name__, name

    ours = own_models()
    for canonical in [*ours, *recbole_model_names()]:
        if canonical.lower() == name.lower():
            return canonical, ours.get(canonical) or MODELS.get(canonical) or get_model(canonical)
    close = [m for m in [*ours, *recbole_model_names()] if m.lower().startswith(name.lower()[:3])]
    hint = f" (similar: {', '.join(close[:5])})" if close else ""
    raise ConfigError(f"unknown model {name!r}{hint}; use SS4Rec, TiSASRec or a RecBole model name such as SASRec")


def own_models() -> dict:
    """The models this package defines: name -> class (their defaults are in properties/)."""

    return {"SS4Rec": SS4Rec, "TiSASRec": TiSASRec}


def recbole_model_names() -> list[str]:
    """Names of RecBole's models (from its per-model YAML files)."""

    return sorted(p.stem for p in (_recbole_dir() / "properties" / "model").glob("*.yaml"))


def dataset_location(dataset: str, data_path) -> Path:
    """Folder holding ``dataset``'s atomic files; a clear DataError if there is none."""
    if data_path is None and dataset == BUNDLED_DATASET:
        return _recbole_dir() / "dataset_example" / BUNDLED_DATASET
    root = Path(data_path if data_path is not None else "dataset").resolve()
    folder = root / dataset
    if not any(folder.glob(f"{dataset}*.inter")):
        raise DataError(
            f"dataset {dataset!r} not found: expected {folder / (dataset + '.inter')}. "
            f"Convert its download with `ss4rec convert PATH/TO/DOWNLOAD {root} --name {dataset}` (a MovieLens "
            "or KuaiRec zip, an Amazon reviews or ratings file, RecBole atomic files; README, Data), "
            f"or pass --data-path to the folder holding {dataset}/{dataset}.inter; "
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


def _check_arguments(model, dataset, config_files, config_dict) -> tuple[list, dict]:
    """The Python API's arguments as the CLI would give them; a ConfigError for the wrong types.

    ``config_files="tiny"`` is one file (not the list of its letters).
    """
    if not (isinstance(model, str) or (isinstance(model, type) and issubclass(model, AbstractRecommender))):
        raise ConfigError(f"model={model!r}: use a model name such as 'SS4Rec' or 'SASRec', or a RecBole "
                          "model class")
    if not isinstance(dataset, str) or not dataset:
        raise ConfigError(f"dataset={dataset!r}: use a dataset name such as 'ml-100k'")
    if isinstance(config_files, (str, os.PathLike)):
        config_files = [config_files]
    config_files = list(config_files or ())
    bad = [f for f in config_files if not isinstance(f, (str, os.PathLike))]
    if bad:
        raise ConfigError(f"config_files={config_files!r}: use file paths or packaged config names, e.g. ['tiny']")
    if config_dict is not None and not isinstance(config_dict, dict):
        raise ConfigError(f"config_dict={config_dict!r}: use a dict of settings, e.g. {{'epochs': 5}}")
    if config_dict and any(not isinstance(k, str) for k in config_dict):
        raise ConfigError(f"config_dict keys must be setting names (strings), not {list(config_dict)!r}")
    return config_files, config_dict


def build_config(model: str = "SS4Rec", dataset: str = BUNDLED_DATASET, config_files=(),
                 config_dict=None, device: str | None = None, output_dir=None):
    """Merge and check settings, then build RecBole's ``Config``. Returns (config, model_class).

    Priority (low to high): run defaults, the model's YAML, ``config_files`` in order,
    ``config_dict``.
    """



    config_files, config_dict = _check_arguments(model, dataset, config_files, config_dict)
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

    with _isolated_argv():  # its device step leaves CUDA_VISIBLE_DEVICES as the user set it
        try:
            config = DistributedConfig(model=model_class, dataset=dataset, config_dict=merged)
        except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as exc:
            if isinstance(exc, UserError):
                raise
            raise ConfigError(recbole_rejection(exc)) from None
    problem = combination_problem(config)  # keys that must agree (valid_metric vs metrics x topk, ...)
    if problem:
        raise ConfigError(problem)
    if device == "cpu" or not merged.get("use_gpu", True):
        config["device"] = torch.device("cpu")
    # RecBole forces ml-100k to its bundled copy whatever data_path says; honour ours.
    config["data_path"] = str(folder)
    # What rebuilds this exact run later (evaluate, recommend, drift): saved in checkpoints.
    config["run_settings"] = {"model": model_name, "dataset": dataset, "device": device,
                              "config_dict": to_plain(merged)}
    return config, model_class


def recbole_rejection(exc: Exception) -> str:
    """One line for an error RecBole's ``Config`` raised about settings we passed on."""
    text = " ".join(str(exc).split()).strip("'\"")
    if "loss_type is CE" in text:
        return (f"{text} Fix: --set train_neg_sample_args=~ (CE scores every item), "
                "or --set loss_type=BPR")
    return f"RecBole rejects the config: {text}"


def check_train_mode(model_name: str, model_class, settings: dict) -> None:
    """A ConfigError unless ``model_class`` can train in the chosen ``train_mode``."""

    if train_mode(settings) == "sequence" and not supports_windows(model_class):
        raise ConfigError(
            f"{model_name} cannot train in train_mode: sequence (it has no loss over whole "
            "windows; SS4Rec, TiSASRec, SASRec, GRU4Rec and BERT4Rec can): set train_mode: prefix"
        )
