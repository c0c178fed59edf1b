"""Run folders: one writer at a time, atomic writes, and the working directory of a run.

    >>> with RunLock(Path("runs/demo")):  # doctest: +SKIP
    ...     train()

Two runs started into the same folder would interleave ``train.log`` and silently replace
each other's ``results.json`` and checkpoints. The lock is an ``flock`` on
``RUN/.ss4rec.lock``: the second run fails at once with the first one's pid and start time,
and a killed run (even ``kill -9``) leaves no stale lock, since the kernel drops it with
the process.

A new run never replaces an earlier one unasked (:func:`check_run_folder`): a folder that
holds a finished or an interrupted run, or other files, is refused with what is there and
the ways on (``--resume``, another ``--output``, or ``--overwrite``, which removes the
earlier run's files first: :func:`clear_earlier_run`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from ss4rec.errors import UserError

LOCK_NAME = ".ss4rec.lock"
# What a run writes into its folder (ss4rec.pipeline.runner, RecBole's tensorboard logs, the
# trainer's guard bundles under checkpoints/); preflight.json is written there beforehand by
# `ss4rec preflight --output` for the run to come.
RUN_OUTPUTS = ("results.json", "train.log", "curves.png", "checkpoints", "log_tensorboard", LOCK_NAME)
BEFORE_A_RUN = ("preflight.json", "plan.txt")  # plan.txt: runpod_entrypoint.sh


def _lock_holder(folder: Path) -> str | None:
    """Who holds ``folder``'s run lock now (its pid line), or None when nobody does."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return None
    try:
        with open(path, "a+", encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                return f.read().strip() or "another process"
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def check_run_folder(folder, resume=None, overwrite: bool = False) -> None:
    """Refuse to start a run in ``folder`` if that would replace anything, unless asked to.

    Fine: a folder that does not exist, is empty, or holds only ``preflight.json``; the
    run's own folder when ``resume`` is one of its checkpoints; anything with ``overwrite``
    (never while another process runs there). Otherwise a UserError says what is there and
    the ways on. A path that is a file is left to the caller's "cannot create" error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    holder = _lock_holder(folder)
    if holder is not None:
        raise UserError(f"run folder {folder} is in use by {holder}: wait for it to finish, or give "
                        "another --output")
    if resume is not None and Path(resume).resolve().parent.parent == folder.resolve():
        return  # continuing the run that lives here
    present = sorted(p.name for p in folder.iterdir() if p.name not in BEFORE_A_RUN)
    if not present or overwrite:
        return
    last = sorted(folder.glob("checkpoints/*-last.pth"))
    if (folder / "results.json").is_file():
        what = "a finished run (results.json"
        what += f", {len(list(folder.glob('checkpoints/*.pth')))} checkpoint(s))"
    elif last or (folder / "train.log").is_file() or (folder / LOCK_NAME).exists():
        what = "an earlier run that did not finish" + (f" (last checkpoint {last[0].name})" if last else "")
    else:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        what = f"{len(present)} other file(s) that are not a run ({shown})"
    ways = [f"--resume {last[0]} to continue it"] if last else []
    ways += ["a new --output folder", "--overwrite to replace it" if "run" in what.split("(")[0]
             else "--overwrite to train into it anyway (its files stay)"]
    raise UserError(f"--output {folder} already holds {what}; nothing was changed. Use "
                    + ", ".join(ways[:-1]) + f" or {ways[-1]}")


def is_fresh(folder) -> bool:
    """Whether ``folder`` holds nothing of a run yet (missing, empty, or only files made for it)."""
    folder = Path(folder)
    return not folder.is_dir() or all(p.name in BEFORE_A_RUN for p in folder.iterdir())


def discard_refused_run(folder, remove_folder: bool = True) -> None:
    """Remove what a run refused before its first checkpoint left in a folder that was fresh.

    A run refused while loading its data (filters that leave nothing, a split without test
    users) has written only its log lock and tensorboard stub: nothing half-written stays.
    Anything a guard saved (``checkpoints/``) stays as evidence.
    """
    folder = Path(folder)
    if not folder.is_dir() or any((folder / "checkpoints").glob("*")):
        return
    for name in ("train.log", LOCK_NAME, "log_tensorboard", "checkpoints"):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    if remove_folder:  # the run created it
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing else is there


def clear_earlier_run(folder) -> list[str]:
    """Remove what an earlier run wrote in ``folder`` (``--overwrite``); other files stay.

    Returns the names removed.
    """
    removed = []
    for name in RUN_OUTPUTS:
        path = Path(folder) / name
        if name == LOCK_NAME or not (path.exists() or path.is_symlink()):
            continue  # the lock file is this run's own by now
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(name)
    return removed


class RunLock:
    """Exclusive use of a run folder for the life of the ``with`` block."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._file = None

    def __enter__(self):
        try:
            self._file = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"run folder {self.path.parent} is not writable ({exc.strerror}): give "
                            "a folder you can write to with --output") from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise UserError(f"run folder {self.path.parent} is in use by {holder}: wait for it to "
                            "finish, or give another --output") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        self._file.flush()
        return self

    def __exit__(self, *exc):
        self._file.truncate(0)
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        return False


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not (path.exists() or path.is_symlink()) and path.parent != path:
        path = path.parent
    return path


def check_writable_folder(path, flag: str) -> Path:
    """``path`` as a folder that can be created or written, checked before any work; nothing
    is created here. A UserError names ``flag`` (``--output``) and the fix."""
    path = Path(path)
    base = _nearest_existing(path)
    if not base.is_dir():
        what = "is a file" if base == path.absolute() else f"lies under the file {base}"
        raise UserError(f"{flag} {path} {what}: give a folder path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {base} is not writable (permission denied): give a folder you can write to")
    return path


def check_writable_file(path, flag: str, suffix: str | None = None) -> Path:
    """The file ``path`` will be written to (``suffix`` added when it has none, as matplotlib
    does), checked before any work: its folder must be writable and it must not be a folder."""
    path = Path(path)
    if suffix and not path.suffix and not path.is_dir():
        path = path.with_name(path.name + suffix)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file path, e.g. {path / ('report' + (suffix or ''))}")
    check_writable_folder(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable (permission denied): give another path")
    return path


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON via a temp file and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a file-size limit, a read-only folder
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): free disk space or give a writable "
                        "folder; nothing was half-written there") from None


@contextlib.contextmanager
def working_dir(path):
    """Run a block in ``path``: RecBole writes log_tensorboard/ (and others) relative to the cwd."""
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)
