"""A RecBole sequential dataset in O(N) memory: histories are cut per batch, never stored.

RecBole's ``SequentialDataset.data_augmentation`` stores every training prefix as an
``[N, L]`` row of every loaded field (a Python loop over N), and ``leave_one_out`` copies it
all again (a Python loop over N): ~130 GB of host RAM for ML-20M at L=200.
:class:`FlatSequentialDataset` yields the same examples from one copy of the interactions:

* ``flat_feat``: the interactions sorted by (user, time), as RecBole sorts them (by exact
  time: :mod:`ss4rec.data.ordering`);
* ``inter_feat``: one row per example, holding the scalar fields of its target (as
  RecBole's augmented rows do), the history length and ``FLAT_POS``, the target's row in
  ``flat_feat``; its history is the ``item_length`` rows before it;
* ``__getitem__`` builds a batch's ``[B, L]`` list fields (``item_id_list``,
  ``timestamp_list``, ...) from ``flat_feat`` with one vectorised gather.

Leave-one-out (``eval_args.split: LS``) is vectorised and gives RecBole's splits in
RecBole's order. In ``train_mode: sequence`` (:mod:`ss4rec.data.modes`) the training split
holds windows instead of prefixes: a window row's ``FLAT_POS`` is its last target, its
history the window's inputs, and batches also carry ``TARGET_ITEMS`` / ``TARGET_MASK``
(``[B, L]``: the next item at each position, and which positions this window counts).

Loading reads the atomic file with pandas' C parser instead of RecBole's
``engine="python"`` (about 7 CPU-µs a row), with the same types and the same header rules.
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from ss4rec.data.ordering import ExactTimeOrder
from ss4rec.data.modes import train_mode
from ss4rec.data.reading import read_atomic_csv
from ss4rec.errors import ConfigError

FLAT_POS = "_flat_pos"  # [N] a row's target position in flat_feat
COUNT_FROM = "_count_from"  # [W] first window position whose target the window counts
TARGET_ITEMS = "target_item_list"  # [B L] the item after each input position
TARGET_MASK = "target_mask"  # [B L] positions whose targets count in this batch
NEG_TARGETS = "neg_target_list"  # [B L] one uniform negative per position (BPR)

LEAVE_ONE_OUT = {"valid_and_test": 2, "valid_only": 1, "test_only": 1}


def user_runs(uids: np.ndarray):
    """Start index and length of each run of equal ids in a sorted ``[N]`` array."""
    if len(uids) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
    return starts, np.diff(np.r_[starts, len(uids)])


def window_rows(first_target: np.ndarray, n_targets: np.ndarray, max_len: int):
    """Windows over each user's training targets (flat positions first_target .. +n_targets-1).

    Window k of a user starts at input ``k·h`` (h = max(1, L // 2)) and has at most L inputs;
    the first counts all its targets, later ones only the targets after the previous
    window's last (positions ``>= L - h``), so each target counts once and sees >= L/2 items.

    Returns ``(last_target, length, count_from)``, each ``[W]``: the flat position of a
    window's last target, its number of inputs, and its first counted position.
    """
    step = max(1, max_len // 2)
    n_targets = n_targets.astype(np.int64)
    per_user = 1 + np.maximum(0, -(-(n_targets - max_len) // step))  # ceil((T - L) / h), >= 0
    per_user = np.where(n_targets > 0, per_user, 0)
    user = np.repeat(np.arange(len(n_targets)), per_user)  # [W]
    k = np.arange(len(user)) - np.repeat(np.cumsum(per_user) - per_user, per_user)  # [W] index in user
    start = k * step  # [W] first input, relative to the user's first input
    length = np.minimum(max_len, n_targets[user] - start)
    last_target = first_target[user] - 1 + start + length  # inputs start one before the first target
    count_from = np.where(k == 0, 0, max_len - step)
    return last_target, length, count_from


def count_windows(targets_per_user: np.ndarray, max_len: int) -> int:
    """How many windows ``train_mode: sequence`` cuts from users with these target counts."""
    first = np.zeros(len(targets_per_user), dtype=np.int64)
    return len(window_rows(first, np.asarray(targets_per_user), max_len)[0])


# Host memory of loading and preparing a log of N rows, whatever MAX_ITEM_LIST_LENGTH and
# train_mode: peak RSS 0.71 GB at 2M rows and 5.17 GB at 32M (prefix mode, the larger;
# scripts/bench_data.py on MovieLens-shaped logs, docs/benchmarks.md), i.e. ~0.41 GB + 149 B
# a row; rounded up here.
HOST_MEMORY_BASE_BYTES = 0.5 * 2**30
HOST_MEMORY_BYTES_PER_ROW = 170


def estimate_host_memory(rows: int) -> float:
    """Estimated peak host memory (bytes) of preparing ``rows`` interactions."""
    return HOST_MEMORY_BASE_BYTES + rows * HOST_MEMORY_BYTES_PER_ROW


class FlatSequentialDataset(ExactTimeOrder, SequentialDataset):
    """:class:`recbole.data.dataset.SequentialDataset` with the same examples in O(N) memory."""

    flat_feat: Interaction | None = None
    train_targets: np.ndarray | None = None  # rows of flat_feat that are training targets (build)

    # ---- loading: pandas' C parser, RecBole's types ----

    def _load_feat(self, filepath, source):
        load_col, unload_col = self._get_load_and_unload_col(source)
        if load_col == set():
            return None
        sep, encoding = self.config["field_separator"], self.config["encoding"]
        with open(filepath, encoding=encoding) as f:
            header = f.readline().rstrip("\r\n").split(sep)
        fields = []  # (field, type, column header)
        for column in header:
            field, _, type_name = column.partition(":")
            if (load_col is not None and field not in load_col) or (unload_col is not None and field in unload_col):
                continue
            fields.append((field, type_name, column))
        if any(type_name.endswith("seq") for _, type_name, _ in fields):
            return super()._load_feat(filepath, source)  # sequence-valued columns: RecBole's parser
        for field, type_name, _ in fields:
            try:
                ftype = FeatureType(type_name)
            except ValueError:
                raise ValueError(f"Type {type_name} from field {field} is not supported.") from None
            if isinstance(source, FeatureSource) or source != "link":
                self.field2source[field] = source
                self.field2type[field] = ftype
                self.field2seqlen[field] = 1
                if ftype == FeatureType.FLOAT:
                    self.field2bucketnum[field] = 2
        if not fields:
            self.logger.warning(f"No columns has been loaded from [{source}]")
            return None
        dtype = {column: np.float64 if type_name == "float" else str for _, type_name, column in fields}
        df = read_atomic_csv(filepath, sep=sep, usecols=list(dtype), dtype=dtype, encoding=encoding,
                             engine="c")  # fields read literally, as the data checks read them
        df = df[[column for _, _, column in fields]]
        df.columns = [field for field, _, _ in fields]
        return df

    # ---- examples: one row per target, histories by reference ----

    def data_augmentation(self):
        """RecBole's examples (one per interaction after a user's first), without [N, L] arrays."""
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)  # stable, as RecBole's
        uids = self.inter_feat[self.uid_field].numpy()
        starts, counts = user_runs(uids)
        user_start = np.repeat(starts, counts)  # [N]
        targets = np.flatnonzero(np.arange(len(uids)) != user_start)  # [N - U]
        lengths = np.minimum(targets - user_start[targets], self.max_item_list_len)
        self.flat_feat = self.inter_feat
        examples = self.inter_feat[targets]
        examples.update(Interaction({
            self.item_list_length_field: torch.from_numpy(lengths.astype(np.int64)),
            FLAT_POS: torch.from_numpy(targets.astype(np.int64)),
        }))
        self.inter_feat = examples

    def __getitem__(self, index, join=True):
        rows = super().__getitem__(index, join)
        if self.flat_feat is None or FLAT_POS not in rows.interaction:
            return rows
        data = dict(rows.interaction)
        pos = data.pop(FLAT_POS)  # [B]
        count_from = data.pop(COUNT_FROM, None)  # [B] windows only
        lengths = data[self.item_list_length_field]  # [B]
        offsets = torch.arange(self.max_item_list_len)  # [L]
        real = offsets < lengths.unsqueeze(1)  # [B L]
        index = torch.where(real, (pos - lengths).unsqueeze(1) + offsets, 0)  # [B L] flat rows
        for field in self.flat_feat.interaction:
            if field != self.uid_field:
                values = self.flat_feat[field][index]
                values[~real] = 0
                data[field + self.config["LIST_SUFFIX"]] = values
        if count_from is not None:
            targets = self.flat_feat[self.iid_field][index + 1]
            mask = real & (offsets >= count_from.unsqueeze(1))
            data[TARGET_ITEMS] = torch.where(real, targets, 0)
            data[TARGET_MASK] = mask
        return Interaction(data)

    def inter_matrix(self, form="coo", value_field=None):
        """This split's interactions plus each user's first one, as RecBole's sequential matrix."""
        pos = self.inter_feat[FLAT_POS]
        first = pos[self.inter_feat[self.item_list_length_field] == 1] - 1
        rows = self.flat_feat[torch.cat([pos, first]).numpy()]
        return self._create_sparse_matrix(rows, self.uid_field, self.iid_field, form, value_field)

    # ---- splits: RecBole's leave-one-out, vectorised; windows in sequence mode ----

    def build(self):
        mode = train_mode(self.config)
        split = self.config["eval_args"]["split"] or {}
        leave_one_out = split.get("LS") if isinstance(split, dict) else None
        if self.config["benchmark_filename"] is not None or leave_one_out not in LEAVE_ONE_OUT:
            if mode == "sequence":
                raise ConfigError(
                    f"train_mode: sequence needs leave-one-out splits (eval_args.split: {{LS: "
                    f"valid_and_test}}), not {split}: use train_mode: prefix for other splits"
                )
            return super().build()
        if self.config["eval_args"]["order"] != "TO":
            raise ValueError("The ordering args for sequential recommendation has to be 'TO'")
        self._change_feat_format()
        train, valid, test = self._leave_one_out(LEAVE_ONE_OUT[leave_one_out])
        # Every split shares this (copy() is shallow): the time scale is set by training gaps.
        self.train_targets = self.inter_feat[FLAT_POS].numpy()[train]
        if leave_one_out == "valid_only":
            valid, test = test, valid
        self._drop_unused_col()
        if mode == "sequence":
            return [self.copy(self._windows(train)), self.copy(self.inter_feat[valid]),
                    self.copy(self.inter_feat[test])]
        return [self.copy(self.inter_feat[index]) for index in (train, valid, test)]

    def _leave_one_out(self, leave_one_num: int):
        """Example indices of (train, valid, test) exactly as RecBole's ``leave_one_out``.

        RecBole sorts the examples by time (stably), groups them by user in order of each
        user's first appearance and leaves each user's last ``leave_one_num`` examples out
        (fewer for users with fewer examples). Examples are sorted by (user, time) here, so a
        user's examples are one run.
        """
        uids = self.inter_feat[self.uid_field].numpy()
        starts, counts = user_runs(uids)
        time_rank = np.empty(len(uids), dtype=np.int64)
        time_rank[np.argsort(self.inter_feat[self.time_field].numpy(), kind="stable")] = np.arange(len(uids))
        user_order = np.minimum.reduceat(time_rank, starts) if len(starts) else starts  # [U]
        kept = np.minimum(leave_one_num, counts - 1)  # [U] examples left out per user
        index_in_user = np.arange(len(uids)) - np.repeat(starts, counts)
        from_end = np.repeat(counts, counts) - index_in_user  # 1 for a user's last example
        kept_rows = np.repeat(kept, counts)
        rows_by_user = np.argsort(np.repeat(user_order, counts), kind="stable")  # RecBole's group order
        train = rows_by_user[from_end[rows_by_user] > kept_rows[rows_by_user]]
        test = rows_by_user[(from_end[rows_by_user] == 1) & (kept_rows[rows_by_user] >= 1)]
        valid = rows_by_user[(from_end[rows_by_user] == 2) & (kept_rows[rows_by_user] == 2)]
        return train, valid, test

    def _windows(self, train_rows: np.ndarray) -> Interaction:
        """Window rows over the training examples ``train_rows`` (see :func:`window_rows`)."""
        pos = np.sort(self.inter_feat[FLAT_POS].numpy()[train_rows])  # training targets, by user
        users = self.flat_feat[self.uid_field].numpy()[pos]
        starts, counts = user_runs(users)
        last, length, count_from = window_rows(pos[starts], counts, self.max_item_list_len)
        windows = self.flat_feat[last]  # scalar fields of each window's last target
        windows.update(Interaction({
            self.item_list_length_field: torch.from_numpy(length),
            FLAT_POS: torch.from_numpy(last),
            COUNT_FROM: torch.from_numpy(count_from),
        }))
        return windows

    def counted_targets(self) -> int:
        """Targets a pass over this split trains on (windows count only their new positions)."""
        if COUNT_FROM not in self.inter_feat.interaction:
            return len(self.inter_feat)
        counted = self.inter_feat[self.item_list_length_field] - self.inter_feat[COUNT_FROM]
        return int(counted.sum())

