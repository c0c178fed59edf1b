"""Plain-dict checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

RecBole pickles its ``Config`` object into checkpoints, which torch >= 2.6 refuses to load
by default. Ours hold only tensors and plain Python data (dict, list, str, int, float,
bool, None), so they load anywhere without trusting pickled code:

    >>> ckpt = load_checkpoint("runs/demo/checkpoints/SS4Rec-best.pth")  # doctest: +SKIP
    >>> model.load_state_dict(ckpt["state_dict"])  # doctest: +SKIP

A checkpoint holding a pickled object is refused with a clear error. Each checkpoint
carries a SHA-256 of its content (``checksum``: every tensor's bytes, every value), verified
on load, so a file damaged after it was written (flipped bytes, a bad copy) is refused
instead of resuming with a corrupt optimiser. It also carries the fingerprint of the
dataset it was trained on (:func:`dataset_fingerprint`), which resume, evaluate and
recommend compare with the data they load.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
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


def content_digest(value) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every value.

    Defined on the loaded objects (not on the file's bytes), so it is the same before
    saving and after loading.
    """
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the buffer itself: no copy
    elif isinstance(value, dict):
        digest.update(b"{")
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[" if isinstance(value, list) else b"(")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr((type(value).__name__, value)).encode())


def dataset_fingerprint(config, dataset) -> dict:
    """What identifies the data a model was trained on: its file, size, rows and vocabularies.

    ``path`` may change (data moved, ``--data-path``); the rest must match on resume,
    evaluate and recommend (:func:`fingerprint_differences`).
    """
    path = Path(config["data_path"]) / f"{config['dataset']}.inter"
    vocab = hashlib.sha256()
    for field in (config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]):
        vocab.update("\n".join(map(str, dataset.field2id_token[field])).encode())
        vocab.update(b"\0")
    return {"path": str(path), "bytes": path.stat().st_size if path.is_file() else None,
            "rows": int(dataset.inter_num), "users": int(dataset.user_num), "items": int(dataset.item_num),
            "vocabulary_sha256": vocab.hexdigest()}


def fingerprint_differences(saved: dict | None, current: dict) -> list[str]:
    """``["rows: 99,287 in the checkpoint, 14,949 now", ...]``; empty when the data is the same."""
    if not saved:
        return []  # a checkpoint from before fingerprints: nothing to compare
    differences = []
    for key in ("bytes", "rows", "users", "items", "vocabulary_sha256"):
        if saved.get(key) != current.get(key):
            old, new = saved.get(key), current.get(key)
            if isinstance(old, int) and isinstance(new, int):
                old, new = f"{old:,}", f"{new:,}"
            elif key == "vocabulary_sha256":
                old, new = "one set of user/item ids", "another"
            differences.append(f"{key}: {old} in the checkpoint, {new} now")
    return differences


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, then rename.

    A crash mid-write leaves the previous checkpoint at ``path`` untouched. The content's
    SHA-256 goes in as ``checksum``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, **state}
    state["checksum"] = content_digest({k: v for k, v in state.items() if k != "checksum"})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_write_failure(exc):
            raise UserError(_write_failure_message(path, exc)) from None
        raise
    return path


# Left on the CPU by ``map_location``: the random generators' states (torch and numpy take
# them only from CPU tensors, wherever the run continues) and the optimiser's state, which
# ``Optimizer.load_state_dict`` places itself (moments next to their parameters; Adam's step
# counters stay on the CPU, where reading them costs no host-device sync).
KEEP_ON_CPU = ("rng", "rng_ranks", "dataloader_generator", "optimizer")


# What a failed write looks like: the OS's errors, or torch's zip writer's RuntimeError.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES}


def _os_cause(exc: BaseException | None) -> OSError | None:
    """The OSError of a failed write in ``exc``'s chain (torch's zip writer raises a RuntimeError
    while closing the file, in handling of the OSError of the write itself)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _is_write_failure(exc: BaseException) -> bool:
    if _os_cause(exc) is not None:
        return True
    return isinstance(exc, RuntimeError) and any(
        sign in str(exc) for sign in ("file write failed", "PytorchStreamWriter", "inline_container"))


def _write_failure_message(path: Path, exc: BaseException) -> str:
    """One line: which checkpoint, why (disk full, file-size limit, ...), what is intact, what to do."""
    cause = _os_cause(exc)
    why = cause.strerror if cause is not None and cause.strerror else "the write failed"
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:,.0f} MB free there"
    except OSError:
        free = ""
    last = path.with_name(path.name.replace("-best.pth", "-last.pth"))
    return (f"cannot write checkpoint {path} ({why}{free}): the checkpoints written before it are intact. "
            f"Free disk space (or raise the file-size limit), then continue with --resume {last}"
            + ("" if last.exists() else " once an epoch has been saved, or start again"))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; refuse pickled objects, damaged and
    foreign files, each with its own message.

    The file is read and its checksum verified on the CPU; then every tensor but the random
    generators' and the optimiser's states (:data:`KEEP_ON_CPU`) moves to ``map_location``.
    So a checkpoint loaded for a GPU (or the ``meta`` device) still restores its RNG states,
    and one written on any device loads on any other.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): it was never written completely; "
                        "use the run's other checkpoint (MODEL-best.pth / MODEL-last.pth) or retrain")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a pickled object: bytes that make no sense
            raise _damaged(path, size, exc) from exc
        raise UserError(
            f"checkpoint {path} cannot be loaded safely (weights_only=True): it holds pickled "
            "Python objects, e.g. a checkpoint written by RecBole's own Trainer; only ss4rec "
            "checkpoints (plain dicts) are accepted"
        ) from exc
    except Exception as exc:  # truncated zip, garbage bytes, bad records
        raise _damaged(path, size, exc) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"checkpoint {path} is not an ss4rec checkpoint (no format={CHECKPOINT_FORMAT!r} key)"
        )
    saved_digest = state.get("checksum")
    if saved_digest is not None:
        actual = content_digest({k: v for k, v in state.items() if k != "checksum"})
        if actual != saved_digest:
            raise UserError(
                f"checkpoint {path} is damaged: its content no longer matches the checksum written "
                "with it (changed bytes after saving: disk, copy or transfer). Use an intact copy, or "
                "the run's other checkpoint (MODEL-best.pth / MODEL-last.pth)"
            )
    device = torch.device(map_location)
    if device.type != "cpu":
        state = {k: v if k in KEEP_ON_CPU else _to_device(v, device) for k, v in state.items()}
    return state


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def _damaged(path: Path, size: int, exc: Exception) -> UserError:
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return UserError(f"checkpoint {path} ({size:,} bytes) is truncated or damaged and cannot be read "
                     f"({type(exc).__name__}: {first}); use an intact copy, or the run's other "
                     "checkpoint (MODEL-best.pth / MODEL-last.pth)")


def rng_state(device=None) -> dict:
    """Every global random generator's state, as data ``weights_only`` loading accepts.

    Python's state is a tuple of ints (kept as a list); numpy's key array becomes a tensor,
    since ``weights_only`` refuses numpy arrays. ``device``: the CUDA device this process
    trains on; its generator is saved as ``cuda_device`` (only that one: reading or setting
    every GPU's generator would open a CUDA context on each of them, in every DDP process).

        >>> state = rng_state(); set_rng_state(state)  # doctest: +SKIP
    """
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(_cuda_index(device)).cpu()
    return state


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def set_rng_state(state: dict, device=None) -> None:
    """Restore what :func:`rng_state` captured, from CPU copies of the saved tensors.

    The CUDA generator of ``device`` (the GPU this process trains on) gets the saved one,
    whatever the number of GPUs then and now (a checkpoint from 8 GPUs resumes on 1 and the
    other way round). Older checkpoints hold every GPU's state (``cuda``, by index): the
    entry of this device's index is used when there is one. Without a CUDA device here, the
    saved CUDA states are not needed and are left alone.
    """
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].cpu().numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        return
    index = _cuda_index(device)
    saved = state.get("cuda_device")
    if saved is None and state.get("cuda") and index < len(state["cuda"]):
        saved = state["cuda"][index]  # a checkpoint written before cuda_device
    if saved is not None:
        torch.cuda.set_rng_state(saved.cpu(), index)
