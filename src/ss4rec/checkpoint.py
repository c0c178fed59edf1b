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
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):  # also numpy.float64 (a float subclass weights_only refuses)
        return float(value)
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


def rng_state() -> dict:
    """Every global random generator's state, as data ``weights_only`` loading accepts.

    Python's state is a tuple of ints (kept as a list); numpy's key array becomes a tensor,
    since ``weights_only`` refuses numpy arrays.

        >>> state = rng_state(); set_rng_state(state)  # doctest: +SKIP
    """
    import random

    import numpy as np

    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA only where this machine has CUDA)."""
    import random

    import numpy as np

    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
