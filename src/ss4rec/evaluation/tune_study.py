"""The study of a tune, shared by its workers: storage, identity, budget and who is alive.

:mod:`ss4rec.evaluation.tune` runs the search; this module keeps the one Optuna study that
every worker (processes of ``--workers``, machines on one ``--storage``) reads and writes:

* **storage**: an SQLite file in the tune folder by default, any RDB URL, or a journal
  file (``journal:PATH``) on a filesystem several machines share;
* **identity**: the model, data, settings and space a study was started with are stored
  with it; a worker with others is refused (it would mix two searches);
* **budget**: trials or trial-seconds, counted over every worker and rerun (:class:`Tally`);
  a trial asked for after the budget filled up (two workers at once) is marked surplus;
* **liveness**: a running trial records its worker (machine, pid namespace, pid) and a
  heartbeat; :class:`StaleWatch` takes a trial for dead when its worker is gone from this
  machine or its heartbeat stops, timed on the watcher's own clock (machines' clocks need
  not agree). :func:`fail_stale_trials` marks it failed and queues its settings again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from ss4rec.errors import UserError

DEFAULT_TRIALS = 20
HEARTBEAT_S = 30  # a running trial writes alive_at this often
STALE_BEATS = 4  # a trial silent for this many heartbeats is taken for dead
# What a rerun or another worker may change without being another study: where the data and
# checkpoints sit on this machine.
LOCAL_KEYS = ("data_path", "checkpoint_dir")


@dataclass(frozen=True)
class Budget:
    """Trials, trial-seconds, or both (whichever ends first)."""

    trials: int | None
    seconds: float | None

    @classmethod
    def of(cls, trials=None, timeout=None) -> Budget:
        if trials is None and timeout is None:
            trials = DEFAULT_TRIALS
        if trials is not None and (isinstance(trials, bool) or int(trials) != trials or trials < 1):
            raise UserError(f"--trials {trials}: give a whole number of trials >= 1")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise UserError(f"--timeout {timeout}: give the seconds of trials in all, > 0")
        return cls(None if trials is None else int(trials), None if timeout is None else float(timeout))

    def describe(self) -> str:
        parts = []
        if self.trials is not None:
            parts.append(f"{self.trials} trials")
        if self.seconds is not None:
            parts.append(f"{self.seconds:,.0f} s of trials in all")
        return " or ".join(parts) + (", whichever ends first" if len(parts) == 2 else "")


@dataclass
class TuneSpec:
    """What makes a study this study: the model, the data, every trial's settings and the space."""

    model: str
    dataset: str
    settings: dict  # every trial's settings before the sampled ones
    space: dict
    metric: str
    direction: str  # maximize | minimize

    def identity(self) -> dict:
        """The JSON-able form stored with the study (local paths left out)."""
        settings = {k: v for k, v in self.settings.items() if k not in LOCAL_KEYS}
        return json.loads(json.dumps({"model": self.model, "dataset": self.dataset, "settings": settings,
                                      "space": self.space, "metric": self.metric,
                                      "direction": self.direction}, default=str))



# ---- storage and study ----

def storage_url(storage, out_dir: Path) -> str:
    """The storage to use: ``storage``, else an SQLite file in ``out_dir``."""
    return storage or f"sqlite:///{out_dir / 'study.db'}"


def check_storage_url(url: str) -> None:
    """A UserError unless ``url`` has the form of a storage (checked before anything is written)."""
    if not (url.startswith("journal:") and len(url) > len("journal:")) and "://" not in url:
        raise UserError(f"--storage {url!r}: give an RDB URL (sqlite:///tune.db, postgresql://user@host/db, "
                        "mysql://...) or a journal file on a shared filesystem (journal:/shared/tune.log)")


def open_storage(url: str):
    """An Optuna storage for ``url``: an RDB URL (``...://``) or ``journal:PATH``."""
    check_storage_url(url)
    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:"):]).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        # Several workers on one SQLite file wait for its write lock instead of failing at once.
        engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as exc:  # a driver missing, a server unreachable, a bad URL
        raise UserError(f"--storage {url}: cannot open it ({type(exc).__name__}: {exc})") from None


def _pruner(name: str, settings: dict):
    if name == "median":
        # Two complete trials before any pruning; the first evaluated epoch never prunes
        # (one epoch says little about a slow starter).
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        epochs = settings.get("epochs")
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=int(epochs) if epochs else "auto")
    return optuna.pruners.NopPruner()


def _startup_trials(budget: Budget) -> int:
    """Random trials before TPE models the results: a third of a trial budget, 3 to 10."""
    return 10 if budget.trials is None else max(3, min(10, budget.trials // 3))


def sampler_for(seed: int, trials_so_far: int, budget: Budget):
    """TPE, seeded by the run's seed and the study's trial count: a one-worker tune proposes
    the same sequence when rerun, and a resumed one does not repeat its first proposals."""
    state = int(np.random.SeedSequence([int(seed), int(trials_so_far)]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=state, n_startup_trials=_startup_trials(budget), constant_liar=True)


def open_study(url: str, name: str, spec: TuneSpec, pruner: str):
    """Create or load the study; refuse one that was started for another model, data or space."""
    storage = open_storage(url)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=spec.direction,
                                    pruner=_pruner(pruner, spec.settings), load_if_exists=True)
    except Exception as exc:
        raise UserError(f"--storage {url}: cannot open study {name!r} ({type(exc).__name__}: {exc})") from None
    mine = spec.identity()
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", mine)
    elif stored != mine:
        diffs = [k for k in mine if stored.get(k) != mine[k]]
        if "settings" in diffs:
            keys = sorted(k for k in set(mine["settings"]) | set(stored.get("settings", {}))
                          if mine["settings"].get(k) != stored.get("settings", {}).get(k))
            diffs[diffs.index("settings")] = f"settings ({', '.join(keys)})"
        raise UserError(f"study {name!r} in {url} was started with other {'; '.join(diffs)}: rerun with the "
                        "same --model/--dataset/--config/--set/--space to continue it, or give another "
                        "--output (or --study-name) for a new study")
    return study


# ---- workers: who runs what, who is alive ----

def process_home() -> str:
    """This process's machine and pid namespace: where a pid means this process."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with contextlib.suppress(OSError):
            parts.append(os.readlink(path) if path.endswith("/pid") else Path(path).read_text().strip())
    return "/".join(parts)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process runs no trial while it looks: one of its pid's earlier life
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class Heartbeat:
    """Writes the trial's ``alive_at`` every ``interval`` seconds while the trial runs."""

    def __init__(self, trial, interval: float):
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a storage hiccup: the next beat tries again
                self.trial.set_user_attr("alive_at", time.time())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


class StaleWatch:
    """Which running trials' workers died: gone from this machine, or silent too long.

    Silence is timed on this process's clock (how long a trial's ``alive_at`` has not
    changed since this process first saw it), so machines' clocks need not agree.
    """

    def __init__(self, heartbeat: float):
        self.heartbeat = heartbeat
        self._seen: dict[int, tuple] = {}  # trial number -> (alive_at seen, when first seen so)

    def death(self, trial, now: float) -> str | None:
        """Why ``trial``'s worker is taken for dead, or None while it may be alive."""
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("home") == process_home() and "pid" in worker and not _pid_alive(int(worker["pid"])):
            return f"its worker (pid {worker['pid']} on this machine) is gone"
        beat = trial.user_attrs.get("alive_at")
        seen = self._seen.get(trial.number)
        if seen is None or seen[0] != beat:
            self._seen[trial.number] = (beat, now)
            return None
        silent = now - seen[1]
        if silent > STALE_BEATS * self.heartbeat:
            where = f" on {worker['host']}" if worker.get("host") else ""
            return f"no heartbeat from its worker{where} for {silent:.0f} s"
        return None


def fail_stale_trials(study, watch: StaleWatch, log=None) -> list[int]:
    """Mark the running trials whose worker died as failed and queue their settings again."""
    failed = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = watch.death(trial, now)
        if why is None:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker got there first
            continue
        failed.append(trial.number)
        retry = trial.params and trial.user_attrs.get("retry_of") is None
        if retry:  # once: settings that kill their worker twice are not tried a third time
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        if log:
            log(f"[tune] trial {trial.number} was interrupted ({why}): marked failed"
                f"{', its settings run again as a new trial' if retry else ''}", flush=True)
    return failed


# ---- the budget ----

def counts(trial) -> bool:
    """Whether a trial uses the budget: finished, pruned, or failed for its settings (not
    interrupted, not a surplus ask)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def trial_seconds(trial, now: float) -> float:
    if trial.datetime_start is None:
        return 0.0
    end = trial.datetime_complete.timestamp() if trial.datetime_complete else now
    return max(0.0, end - trial.datetime_start.timestamp())


@dataclass
class Tally:
    counted: int
    running: int
    seconds_done: float  # trial-seconds of counted trials
    seconds_all: float  # ... and of running ones so far
    mean_seconds: float | None

    @classmethod
    def of(cls, trials) -> Tally:
        now = time.time()
        counted = [t for t in trials if counts(t)]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        done = sum(trial_seconds(t, now) for t in counted)
        return cls(len(counted), len(running), done, done + sum(trial_seconds(t, now) for t in running),
                   done / len(counted) if counted else None)

    def done(self, budget: Budget) -> bool:
        return ((budget.trials is not None and self.counted >= budget.trials)
                or (budget.seconds is not None and self.seconds_done >= budget.seconds))

    def full(self, budget: Budget) -> bool:
        """Nothing more to start: what runs now completes the budget."""
        return ((budget.trials is not None and self.counted + self.running >= budget.trials)
                or (budget.seconds is not None and self.seconds_all >= budget.seconds))

    def etatrial_seconds(self, budget: Budget) -> float | None:
        parallel = max(1, self.running + 1)
        left = []
        if budget.trials is not None and self.mean_seconds is not None:
            left.append((budget.trials - self.counted) * self.mean_seconds / parallel)
        if budget.seconds is not None:
            left.append((budget.seconds - self.seconds_done) / parallel)
        return max(0.0, min(left)) if left else None

    def progress(self, budget: Budget) -> str:
        parts = []
        if budget.trials is not None:
            parts.append(f"{self.counted}/{budget.trials}")
        if budget.seconds is not None:
            parts.append(f"{self.seconds_done:,.0f}/{budget.seconds:,.0f} s")
        return ", ".join(parts)


def is_surplus(study, trial, budget: Budget) -> bool:
    """Whether ``trial`` came after the budget filled up (two workers asking at once)."""
    if budget.trials is None:
        return False
    before = [t for t in study.get_trials(deepcopy=False)
              if t.number < trial.number and (counts(t) or t.state == TrialState.RUNNING)]
    return len(before) >= budget.trials


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


