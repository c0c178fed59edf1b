"""Plain-dict checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

RecBole pickles its ``Config`` object into checkpoints, which torch >= 2.6 refuses to load
by default. Ours hold only tensors and plain Python data (dict, list, str, int, float,
bool, None), so they load anywhere without trusting pickled code:

    >>> ckpt = load_checkpoint("runs/demo/checkpoints/SS4Rec-best.pth")  # doctest: +SKIP
    >>> model.load_state_dict(ckpt["state_dict"])  # doctest: +SKIP

A checkpoint holding a pickled object is refused with a clear error.
"""

from __future__ import annotations

import enum
import os
import tempfile
from pathlib import Path

import torch

from ss4rec.errors import UserError

CHECKPOINT_FORMAT = "ss4rec-checkpoint-v1"


def to_plain(value):
    """Recursively turn config values into data ``torch.load(weights_only=True)`` accepts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return str(value)  # torch.device, paths, classes: their readable name


def config_to_plain(config) -> dict:
    """A RecBole ``Config`` (or dict) as a plain dict of plain data."""
    data = getattr(config, "final_config_dict", config)
    return {k: to_plain(v) for k, v in data.items()}


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, then rename.

    A crash mid-write leaves the previous checkpoint at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; refuse pickled objects and foreign files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for pickled objects
        raise UserError(
            f"checkpoint {path} cannot be loaded safely (weights_only=True): "
            f"{str(exc).splitlines()[0]}. It holds pickled Python objects, e.g. a checkpoint "
            "written by RecBole's own Trainer; only ss4rec checkpoints (plain dicts) are accepted"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"checkpoint {path} is not an ss4rec checkpoint (no format={CHECKPOINT_FORMAT!r} key)"
        )
    return state
