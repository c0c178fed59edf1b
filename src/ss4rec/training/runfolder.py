"""Run folders: one writer at a time, atomic writes, and the working directory of a run.

    >>> with RunLock(Path("runs/demo")):  # doctest: +SKIP
    ...     train()

Two runs started into the same folder would interleave ``train.log`` and silently replace
each other's ``results.json`` and checkpoints. The lock is an ``flock`` on
``RUN/.ss4rec.lock``: the second run fails at once with the first one's pid and start time,
and a killed run (even ``kill -9``) leaves no stale lock, since the kernel drops it with
the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ss4rec.errors import UserError

LOCK_NAME = ".ss4rec.lock"


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


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON via a temp file and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def working_dir(path):
    """Run a block in ``path``: RecBole writes log_tensorboard/ (and others) relative to the cwd."""
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)
