"""Training modes: how a user's training history is cut into examples (``train_mode``).

* ``prefix`` (default, the paper's protocol): every training interaction after a user's
  first is one example, predicted from the (at most MAX_ITEM_LIST_LENGTH) items before it,
  exactly RecBole's augmentation. Each prefix runs through the whole model: O(N·L) work.
* ``sequence``: each user's training history is cut into windows of MAX_ITEM_LIST_LENGTH
  inputs with the next items as targets, and the model scores every position at once.
  Windows overlap by half, and a window's loss covers only targets that no earlier window
  counted, so every training target counts exactly once per epoch and sees at least L/2
  items. O(N) work; for a causal model the outputs equal prefix mode's wherever a history
  fits in one window.

Validation and test are RecBole's leave-one-out, full ranking, in both modes. This module
reads the setting (its default is in ``properties/data.yaml``, known through ss4rec.config.validation).
"""

from __future__ import annotations

from ss4rec.config.validation import DATA_DEFAULTS, DATA_FILE, TRAIN_MODES
from ss4rec.errors import ConfigError


def train_mode(config) -> str:
    """The run's ``train_mode`` (default ``prefix``); a ConfigError for anything else."""
    value = config["train_mode"] if "train_mode" in config else None
    value = DATA_DEFAULTS["train_mode"] if value is None else value
    if value not in TRAIN_MODES:
        raise ConfigError(f"train_mode={value!r} is not one of {TRAIN_MODES} (defaults in {DATA_FILE})")
    return value
