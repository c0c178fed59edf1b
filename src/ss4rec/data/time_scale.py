"""Facts of a dataset's time axis that set SS4Rec's time scale (``time_unit: auto | normalized``).

    >>> auto_unit(np.array([0.0, 30.0, 60.0, 7200.0]))
    60.0

* ``auto``: one unit is the median *positive* gap between consecutive training interactions
  of a user, so a typical gap is one unit and its S5 step ``Δ = 1 · exp(log_step)`` starts
  inside ``dt_min..dt_max``. Zero gaps (same-second interactions) are left out of the
  median: they carry no scale.
* ``normalized``: one unit is the span of all loaded timestamps (last minus first), which is
  what min-max normalising the time field does to gaps (the official code on ML-100K).

Both are read from the data the run builds, so a restored run (evaluate, resume) gets the
same unit again.
"""

from __future__ import annotations

import numpy as np

from ss4rec.data.sequences import FLAT_POS


def training_gaps(dataset) -> np.ndarray:
    """Seconds from each training target's previous interaction to it, ``[N_train]`` float64.

    ``dataset`` is a split (or the whole) :class:`ss4rec.data.sequences.FlatSequentialDataset`
    with exact times (:class:`ss4rec.data.dataset.SS4RecDataset`); its training targets are
    the ones :meth:`~ss4rec.data.sequences.FlatSequentialDataset.build` chose, in either
    ``train_mode``. A target is never a user's first interaction, so the row before it is
    the same user's.
    """
    rows = getattr(dataset, "train_targets", None)
    if rows is None:  # a prefix-mode split of RecBole's own build: its examples are the targets
        rows = dataset.inter_feat[FLAT_POS].numpy()
    times = dataset.flat_feat[dataset.time_field].numpy().astype(np.float64)
    return times[rows] - times[rows - 1]


def time_span(dataset) -> float:
    """Seconds from the first to the last loaded interaction (every user, every split)."""
    times = dataset.flat_feat[dataset.time_field].numpy()
    return float(times.max() - times.min()) if len(times) else 0.0


def auto_unit(gaps: np.ndarray) -> float:
    """The median positive gap in seconds (1.0 when no gap is positive)."""
    positive = np.asarray(gaps, dtype=np.float64)
    positive = positive[positive > 0]
    return float(np.median(positive)) if len(positive) else 1.0
