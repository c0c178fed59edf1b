"""Datasets and dataloaders for our runs: RecBole's, minus its pickle caches and [N, L] arrays.

    >>> dataset = create_dataset(config)  # doctest: +SKIP
    >>> train_data, valid_data, test_data = prepare_data(config, dataset)  # doctest: +SKIP

:func:`create_dataset` picks RecBole's dataset class as RecBole does, except that plain
sequential models get :class:`~ss4rec.data.sequences.FlatSequentialDataset`, and it never
loads a cached dataset file (RecBole ``pickle.load``s any file at its cache path, which can
run code). :func:`prepare_data` splits as RecBole's ``data_preparation`` (never loading
saved dataloaders) and, in ``train_mode: sequence``, trains on windows through
:class:`WindowTrainDataLoader`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings

import numpy as np
import torch
from recbole.data.dataloader import TrainDataLoader
from recbole.data.transform import Equal
from recbole.data.utils import create_samplers, get_dataloader
from recbole.sampler import KGSampler
from recbole.utils import ModelType

from ss4rec.data.dataset import SS4RecDataset
from ss4rec.data.modes import train_mode
from ss4rec.data.ordering import exactly_ordered
from ss4rec.data.reading import recbole_reading
from ss4rec.data.sequences import NEG_TARGETS, TARGET_ITEMS, TARGET_MASK, FlatSequentialDataset
from ss4rec.errors import DataError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def unsharded(config):
    """Build dataloaders that see every row, even under DDP (RecBole shards when single_spec is off)."""
    saved = config["single_spec"]
    config["single_spec"] = True
    try:
        yield
    finally:
        config["single_spec"] = saved


_TYPE_TO_CLASS = {
    ModelType.GENERAL: "Dataset", ModelType.CONTEXT: "Dataset", ModelType.TRADITIONAL: "Dataset",
    ModelType.DECISIONTREE: "Dataset", ModelType.KNOWLEDGE: "KnowledgeBasedDataset",
}


# Models that read real time gaps: their timestamps stay exact float64, never normalised.
EXACT_TIME_MODELS = ("SS4Rec", "TiSASRec")


def dataset_class(config):
    """RecBole's choice of dataset class, with FlatSequentialDataset for sequential models."""
    module = importlib.import_module("recbole.data.dataset")
    own = getattr(module, config["model"] + "Dataset", None)  # e.g. SS4RecDataset
    if own is not None:
        return exactly_ordered(own)
    if config["model"] in EXACT_TIME_MODELS:
        return SS4RecDataset
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        return FlatSequentialDataset
    # One exact ordering for every model (ss4rec.data.ordering), RecBole's classes included.
    return exactly_ordered(getattr(module, _TYPE_TO_CLASS[config["MODEL_TYPE"]]))


def _warn_if_cached(path: str, what: str) -> None:
    if os.path.exists(path):
        logger.warning(f"ignored {path}: RecBole would unpickle this {what} cache, which can run "
                       "code; ss4rec never loads one (delete the file if you did not put it there)")


def create_dataset(config):
    """Load and filter the dataset named by ``config``: never from a pickle, never cached."""
    if config["save_dataset"] or config["dataset_save_path"]:
        logger.warning("save_dataset / dataset_save_path are ignored: ss4rec never writes or "
                       "loads pickled datasets (loading one can run code)")
    cls = dataset_class(config)
    _warn_if_cached(config["dataset_save_path"] or os.path.join(
        config["checkpoint_dir"], f'{config["dataset"]}-{cls.__name__}.pth'), "dataset")
    return _load(cls, config)


def exact_time_dataset(config):
    """The dataset of ``config`` loaded and filtered with exact, unnormalised float64 times."""

    return _load(SS4RecDataset, config)


def _load(cls, config):
    with warnings.catch_warnings(), recbole_reading():  # fields read as the data checks read them
        # RecBole 1.2.1's _fill_nan uses pandas' chained fillna(inplace=True); pandas 2.2+
        # warns about it on every run. Under pandas < 3 (our pin) it still works.
        warnings.filterwarnings("ignore", message="A value is trying to be set on a copy",
                                category=FutureWarning)
        try:
            return cls(config)
        except ValueError as exc:
            if "Some feat is empty" not in str(exc):
                raise
            raise DataError(_filtered_away(config)) from None


def _filtered_away(config) -> str:
    """RecBole's "Some feat is empty": the filters left a file of the dataset without rows."""
    filters = {k: config[k] for k in ("user_inter_num_interval", "item_inter_num_interval", "val_interval",
                                      "rm_dup_inter") if config[k] not in (None, "[0,inf)")}
    shown = ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "no filter settings"
    return (f"dataset {config['dataset']!r} ({config['data_path']}): the filters ({shown}) leave no rows in "
            "its .inter file or in a .item/.user file it loads: loosen them, or check that those files "
            "hold rows")


def prepare_data(config, dataset):
    """Train, valid and test dataloaders, as RecBole's ``data_preparation`` (without its caches)."""
    if config["save_dataloaders"] or config["dataloaders_save_path"]:
        logger.warning("save_dataloaders / dataloaders_save_path are ignored: ss4rec never writes "
                       "or loads pickled dataloaders (loading one can run code)")
    _warn_if_cached(config["dataloaders_save_path"] or os.path.join(
        config["checkpoint_dir"], f'{config["dataset"]}-for-{config["model"]}-dataloader.pth'), "dataloader")
    built = dataset.build()
    train_dataset, valid_dataset, test_dataset = built
    _check_split(config, dataset, built)
    sequence = train_mode(config) == "sequence"
    if sequence and not isinstance(dataset, FlatSequentialDataset):
        raise TypeError(f"train_mode: sequence needs a FlatSequentialDataset, not {type(dataset).__name__}")
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    if sequence:
        train_data = WindowTrainDataLoader(config, train_dataset, None, shuffle=config["shuffle"])
    elif config["MODEL_TYPE"] == ModelType.KNOWLEDGE:  # as RecBole: a KG sampler as well
        neg = config["train_neg_sample_args"]
        kg_sampler = KGSampler(dataset, neg["distribution"], neg["alpha"])
        train_data = get_dataloader(config, "train")(config, train_dataset, train_sampler, kg_sampler,
                                                     shuffle=True)
    else:
        train_data = get_dataloader(config, "train")(config, train_dataset, train_sampler,
                                                     shuffle=config["shuffle"])
    # Under DDP the training batches are sharded (RecBole's DistributedSampler, also for
    # WindowTrainDataLoader, a TrainDataLoader), but evaluation is not: rank 0 scores every
    # user, exactly as a single process does (see ss4rec.training.distributed).
    with unsharded(config):
        valid_data = get_dataloader(config, "valid")(config, valid_dataset, valid_sampler, shuffle=False)
        test_data = get_dataloader(config, "test")(config, test_dataset, test_sampler, shuffle=False)
    if sequence:
        logger.info(
            f"train_mode sequence: {train_data.targets:,} training targets in "
            f"{len(train_dataset):,} windows of <= {config['MAX_ITEM_LIST_LENGTH']} inputs; "
            f"{train_data.step} windows a batch (~{config['train_batch_size']} targets), "
            f"{len(train_data)} batches an epoch"
        )
    return train_data, valid_data, test_data


def _check_split(config, dataset, parts) -> None:
    """Refuse a split that leaves the train, valid or test part without interactions, before
    any training (else: an epoch, then a crash or metrics of nothing)."""
    empty = [name for name, part in zip(("train", "valid", "test"), parts) if len(part) == 0]
    if not empty:
        return
    counts = np.bincount(dataset.inter_feat[dataset.uid_field].numpy())[1:]
    raise DataError(
        f"dataset {config['dataset']!r}: the split eval_args.split={config['eval_args']['split']} leaves no "
        f"{' and no '.join(empty)} interactions ({len(dataset):,} interactions, {int((counts > 0).sum()):,} users, "
        f"{int((counts >= 3).sum()):,} with 3 or more): leave-one-out needs users with at least 3 "
        "interactions; loosen the filters, or use more data")


class WindowTrainDataLoader(TrainDataLoader):
    """Batches of training windows whose counted targets total about ``train_batch_size``.

    A batch holds a fixed number of windows (``train_batch_size`` × windows / targets), so
    an epoch has as many optimiser steps as prefix mode. For BPR, each position gets one
    uniform negative item (never the position's own target).
    """

    def __init__(self, config, dataset, sampler, shuffle=False):
        self.targets = dataset.counted_targets()
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        if config["transform"] == "mask_itemseq":
            # RecBole's transform masks prefixes one by one in Python; BERT4Rec masks whole
            # windows itself (ss4rec.models.baselines.cloze_windows) and never reads its fields.
            self.transform = Equal(config)

    def _init_batch_size_and_step(self):
        windows = max(1, len(self._dataset))
        per_batch = max(1, round(self.config["train_batch_size"] * windows / max(1, self.targets)))
        if not self.config["single_spec"]:
            # Under DDP RecBole then gives each rank step // world_size windows: round up to a
            # multiple, so the ranks' batches together are the whole batch, never less.
            world = self.config["world_size"]
            per_batch = -(-per_batch // world) * world
        self.step = per_batch
        self.set_batch_size(per_batch)

    def collate_fn(self, index):
        data = self.transform(self._dataset, self._dataset[np.array(index)])
        if self.neg_sample_args["distribution"] != "none":
            targets = data[TARGET_ITEMS]
            n_items = self._dataset.item_num
            neg = torch.randint(1, n_items - 1, targets.shape)  # [B L] uniform over items != target
            data.interaction[NEG_TARGETS] = neg + (neg >= targets).long() * (targets > 0).long()
        return data


__all__ = ["create_dataset", "exact_time_dataset", "prepare_data", "dataset_class", "WindowTrainDataLoader",
           "TARGET_ITEMS", "TARGET_MASK", "NEG_TARGETS"]
