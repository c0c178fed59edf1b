"""Equal-budget hyperparameter search with Optuna, resumable, on one machine or many.

    >>> from ss4rec.evaluation.tune import tune
    >>> summary = tune("SASRec", dataset="ml-100k", config_files=["ml-100k-quick"], trials=8,
    ...                output_dir="runs/tune-sasrec")  # doctest: +SKIP
    >>> summary["best"]["value"], summary["best"]["params"]  # doctest: +SKIP

**The search.** Every trial trains the model once (:func:`ss4rec.run`, in this process) with
the shared settings (``compare``'s: the leave-one-out, time-ordered, full-ranking protocol,
then ``config_files`` and ``config_dict``) and one point of the model's search space
(:mod:`ss4rec.config.space`). Optuna's TPE sampler proposes the points, seeded: a rerun of a
one-worker tune proposes the same sequence. The valid metric of every evaluated epoch is
reported to the pruner (median by default, or Hyperband) through the trainer's epoch hook; a
pruned trial stops there as early stopping would, and is an ordinary run folder like any other
(``DIR/trial-0007/`` with its ``results.json``). The value of a trial is its best valid metric.

**The budget** is the same for every model: ``trials`` (pruned trials and trials that failed
count; interrupted ones do not) or ``timeout`` seconds of trials in all (every worker, every
rerun), whichever ends first; ``epochs`` in the settings caps each trial.

**Storage and resume** (:mod:`ss4rec.evaluation.tune_study`). The study lives in
``DIR/study.db`` (SQLite) unless ``storage`` names
another Optuna storage: an RDB URL (``postgresql://...``, ``mysql://...``, ``sqlite:///...``)
or a journal file (``journal:/shared/tune.log``, for a filesystem several machines share).
Running the same command again continues the study: finished trials are kept, never rerun. A
trial whose worker died (killed, out of memory, a lost pod) is found by its worker's identity
(same machine, process gone) or by its heartbeat (none for ``4 x heartbeat`` seconds), marked
failed, and its settings run again as a new trial. Several processes (``workers``, or the same
command on several machines with one ``storage``) share one study; each trial number runs once,
and together they stop at the budget.

**At the end** (in ``DIR``): ``best.yaml`` (the best trial's complete settings: ``ss4rec train
--model M --dataset D --config DIR/best.yaml`` reproduces it), ``trials.csv`` / ``trials.md``
(params, valid metric, epochs, pruned at, seconds), ``tune.json`` (budget, counts, best) and
Optuna's matplotlib plots: ``history.png``, ``importances.png``, ``top_param.png`` (the valid
metric against the most important parameter) and ``learning_curves.png``. ``retrain_seeds``
retrains the best settings with that many seeds through :func:`ss4rec.evaluation.compare.compare`
(``DIR/retrain/``: test metrics as mean ± std and the bootstrap CIs of ``compare``), and
:func:`compare_tuned` tabulates several tuned models side by side with the budget each got.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import optuna
import yaml
from matplotlib import pyplot as plt
from optuna.trial import TrialState

from ss4rec.config.files import check_keys
from ss4rec.config.space import load_space
from ss4rec.errors import UserError
from ss4rec.evaluation.compare import (
    ModelSpec,
    compare,
    parse_seeds,
    run_model,
    settings_for,
    shared_settings,
    write_tables,
)
from ss4rec.evaluation.study import best_epoch
from ss4rec.evaluation.tune_study import (
    HEARTBEAT_S,
    Budget,
    Heartbeat,
    StaleWatch,
    Tally,
    TuneSpec,
    best_trial,
    check_storage_url,
    counts,
    fail_stale_trials,
    is_surplus,
    open_study,
    process_home,
    sampler_for,
    storage_url,
    trial_seconds,
)
from ss4rec.pipeline.runner import run
from ss4rec.pipeline.settings import dataset_location, resolve_model
from ss4rec.training.runfolder import write_json_atomic
from ss4rec.training.threads import usable_cpus

PRUNERS = ("median", "hyperband", "none")
WAIT_POLL_S = 2.0  # how often a worker with nothing to start looks again
FAILURE_STREAK = 3  # a worker stops after this many failed trials in a row (the cause is shown)
SUMMARY_FILE = "tune.json"


def prepare(model: str, dataset: str, config_files=(), config_dict=None, space=None) -> TuneSpec:
    """Resolve and check everything a tune needs before anything is written or trained."""
    model_name, _ = resolve_model(model)
    settings = shared_settings(config_files, config_dict)
    check_keys(settings, model_name, source="the tune's settings")
    dataset_location(dataset, settings.get("data_path"))  # a missing dataset: refused now
    space_dict = load_space(model_name, space)
    metric = str(settings.get("valid_metric", "NDCG@10"))
    direction = "maximize" if settings.get("valid_metric_bigger", True) else "minimize"
    return TuneSpec(model_name, dataset, settings, space_dict, metric, direction)


# ---- one trial ----

def _suggest(trial, key: str, dist: dict):
    if dist["type"] == "categorical":
        return trial.suggest_categorical(key, dist["choices"])
    if dist["type"] == "int":
        return trial.suggest_int(key, dist["low"], dist["high"], log=dist["log"], step=dist.get("step", 1))
    return trial.suggest_float(key, dist["low"], dist["high"], log=dist["log"], step=dist.get("step"))


@contextlib.contextmanager
def _output_to(path: Path):
    """A trial's stdout and stderr (RecBole's log lines, warnings) go to its own file."""
    with open(path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield f


def suggest_params(trial, spec: TuneSpec) -> dict:
    """The trial's point of the space (an enqueued trial's own values)."""
    return {key: _suggest(trial, key, dist) for key, dist in spec.space.items()}


def run_trial(study, trial, params: dict, spec: TuneSpec, out_dir: Path, device=None, pruner: str = "median",
              heartbeat: float = HEARTBEAT_S) -> dict:
    """Train one trial (``params`` over the shared settings) in this process and tell the study
    how it went. Returns its outcome."""
    run_dir = out_dir / f"trial-{trial.number:04d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("worker", {"home": process_home(), "host": socket.gethostname(), "pid": os.getpid()})
    trial.set_user_attr("alive_at", time.time())
    trial.set_user_attr("run_dir", str(run_dir))
    settings = {**spec.settings, **params}

    def report_epoch(epoch_idx, valid_score, valid_result):
        trial.report(float(valid_score), epoch_idx)
        return f"pruned by the tuner's {pruner} pruner" if trial.should_prune() else None

    outcome = {"number": trial.number, "params": params, "run_dir": str(run_dir)}
    start = time.monotonic()
    try:
        with Heartbeat(trial, heartbeat), _output_to(run_dir / "trial.out") as out:
            try:
                result = run(spec.model, spec.dataset, config_dict=settings, output_dir=run_dir, device=device,
                             epoch_hook=report_epoch, overwrite=True)  # the trial folder is the tune's own
            except Exception:
                traceback.print_exc(file=out)
                raise
    except Exception as exc:  # a setting that fails is a result of the search, not its end
        error = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("error", error)
        trial.set_user_attr("seconds", time.monotonic() - start)
        study.tell(trial, state=TrialState.FAIL)
        return {**outcome, "state": "failed", "error": error, "seconds": time.monotonic() - start}
    stopped = (result.get("training") or {}).get("stopped_by")
    epochs = settings.get("epochs")
    trial.set_user_attr("epochs_run", result["epochs_run"])
    trial.set_user_attr("best_epoch", best_epoch(result))
    trial.set_user_attr("train_seconds", result["train_seconds"])
    trial.set_user_attr("seconds", time.monotonic() - start)
    outcome.update(value=result["best_valid_score"], epochs_run=result["epochs_run"], epochs=epochs,
                   best_epoch=best_epoch(result), seconds=time.monotonic() - start)
    if stopped:
        trial.set_user_attr("pruned_at_epoch", stopped["epoch"] + 1)
        study.tell(trial, state=TrialState.PRUNED)
        return {**outcome, "state": "pruned", "pruned_at_epoch": stopped["epoch"] + 1}
    study.tell(trial, result["best_valid_score"])
    return {**outcome, "state": "complete"}


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def progress_line(outcome: dict, spec: TuneSpec, study, budget: Budget) -> str:
    """One line per finished trial: number, params, result, the best so far, the budget's ETA."""
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in outcome["params"].items())
    if outcome["state"] == "failed":
        result = f"failed: {outcome['error']}"
    else:
        of = f"/{outcome['epochs']}" if outcome.get("epochs") else ""
        value = f"{spec.metric} {outcome['value']:.4f}"
        result = (f"pruned at epoch {outcome['pruned_at_epoch']}{of} ({value})" if outcome["state"] == "pruned"
                  else f"{value} (best epoch {outcome['best_epoch']}{of})")
    tally = Tally.of(study.get_trials(deepcopy=False))
    best = best_trial(study)
    eta = tally.etatrial_seconds(budget)
    return (f"[tune] trial {outcome['number']} ({tally.progress(budget)}): {params} -> {result}, "
            f"{_minutes(outcome['seconds'])}"
            + (f" | best {best.value:.4f} (trial {best.number})" if best is not None else "")
            + (f" | budget ETA {_minutes(eta)}" if eta is not None and not tally.done(budget) else ""))


# ---- a worker's loop ----

def search(study, spec: TuneSpec, budget: Budget, out_dir: Path, device=None, pruner: str = "median",
           seed: int = 0, heartbeat: float = HEARTBEAT_S, log=print) -> None:
    """Run trials in this process until the study's budget is used (by all its workers)."""
    failures = []
    watch = StaleWatch(heartbeat)
    waiting = False
    while True:
        fail_stale_trials(study, watch, log)
        tally = Tally.of(study.get_trials(deepcopy=False))
        if tally.done(budget):
            return
        if tally.full(budget):  # the rest is running elsewhere: wait, in case a worker dies
            if log and not waiting:
                log(f"[tune] {tally.running} trial(s) of other workers complete the budget: waiting for them",
                    flush=True)
            waiting = True
            time.sleep(min(WAIT_POLL_S, heartbeat))
            continue
        waiting = False
        study.sampler = sampler_for(seed, len(study.get_trials(deepcopy=False)), budget)
        trial = study.ask()
        try:
            params = suggest_params(trial, spec)
            if is_surplus(study, trial, budget):
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
                if trial.user_attrs.get("retry_of") is not None:
                    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.user_attrs["retry_of"]})
                continue
            outcome = run_trial(study, trial, params, spec, out_dir, device, pruner, heartbeat)
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                study.tell(trial, state=TrialState.FAIL)
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            if log:
                log(f"[tune] trial {trial.number} interrupted: marked failed; rerun the same command to "
                    "continue (its settings run again)", flush=True)
            raise
        except BaseException:  # our own fault, not the trial's: leave no trial running behind
            with contextlib.suppress(Exception):
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        if log:
            log(progress_line(outcome, spec, study, budget), flush=True)
        failures = failures + [outcome["error"]] if outcome["state"] == "failed" else []
        if len(failures) >= FAILURE_STREAK:
            raise UserError(f"{FAILURE_STREAK} trials in a row failed (last: {failures[-1]}); see "
                            f"{outcome['run_dir']}/trial.out, fix the cause and rerun the same command")


def _worker_command(index: int, spec_files: tuple[Path, Path], spec: TuneSpec, budget: Budget, url: str,
                    name: str, out_dir: Path, device, pruner: str, seed: int, heartbeat: float) -> list[str]:
    settings_file, space_file = spec_files
    command = [sys.executable, "-m", "ss4rec", "tune", "--model", spec.model, "--dataset", spec.dataset,
               "--config", str(settings_file), "--space", str(space_file), "--storage", url,
               "--study-name", name, "--output", str(out_dir), "--pruner", pruner,
               "--seed", str(seed + index), "--heartbeat", str(heartbeat), "--search-only"]
    if budget.trials is not None:
        command += ["--trials", str(budget.trials)]
    if budget.seconds is not None:
        command += ["--timeout", str(budget.seconds)]
    if device:
        command += ["--device", device]
    return command


def run_workers(workers: int, commands: list[list[str]], log=print) -> list[int]:
    """Start one process per command (they share the study) and wait for all; their exit codes."""
    env = dict(os.environ)
    if not env.get("OMP_NUM_THREADS"):  # K workers share the CPUs instead of each taking all
        env["OMP_NUM_THREADS"] = str(max(1, usable_cpus() // workers))
    procs = [subprocess.Popen(command, env=env) for command in commands]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # they got the terminal's Ctrl-C too: let them mark their trials
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=60)
        raise
    for i, code in enumerate(codes):
        if code != 0 and log:
            log(f"[tune] worker {i} exited with code {code}", flush=True)
    return codes


# ---- the report ----

def _state_name(trial) -> str:
    if trial.state == TrialState.FAIL:
        return "failed" if "error" in trial.user_attrs else "interrupted"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
            TrialState.WAITING: "waiting"}[trial.state]


def trial_rows(study, spec: TuneSpec) -> list[dict]:
    """One row per trial of the study (surplus asks left out)."""
    now = time.time()
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") or t.state == TrialState.WAITING:
            continue
        attrs = t.user_attrs
        row = {"trial": t.number, "state": _state_name(t),
               **{k: t.params.get(k, "") for k in spec.space},
               spec.metric: "" if t.value is None else t.value,
               "epochs_run": attrs.get("epochs_run", ""), "best_epoch": attrs.get("best_epoch", ""),
               "pruned_at_epoch": attrs.get("pruned_at_epoch", ""), "seconds": round(trial_seconds(t, now), 1),
               "host": (attrs.get("worker") or {}).get("host", ""), "run_dir": attrs.get("run_dir", ""),
               "note": attrs.get("error") or (f"retry of trial {attrs['retry_of']}" if "retry_of" in attrs else "")}
        rows.append(row)
    return rows


def _budget_line(spec: TuneSpec, budget: Budget, summary: dict) -> str:
    c = summary["counts"]
    epochs = spec.settings.get("epochs")
    return (f"Budget: {budget.describe()}"
            + (f", each at most {epochs} epochs" if epochs else "")
            + f"; used {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed"
            + (f", {c['interrupted']} interrupted (rerun)" if c["interrupted"] else "")
            + f"; {summary['trial_seconds']:,.0f} trial-seconds, {summary['wall_seconds']:,.0f} s from the first "
            f"trial's start to the last one's end.")


def _markdown(rows: list[dict], spec: TuneSpec, budget: Budget, summary: dict) -> str:
    best = (summary.get("best") or {}).get("number")
    columns = ["trial", "state", *spec.space, spec.metric, "epochs", "pruned at", "seconds", "note"]
    lines = [f"# Tuning {spec.model} on `{spec.dataset}`", "",
             f"Valid metric {spec.metric} ({spec.direction}); sampler TPE (seed {summary['seed']}), "
             f"pruner {summary['pruner']}. {_budget_line(spec, budget, summary)}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        value = r[spec.metric]
        cells = [f"**{r['trial']}** (best)" if r["trial"] == best else str(r["trial"]), r["state"],
                 *[_fmt(r[k]) for k in spec.space], "" if value == "" else f"{value:.4f}",
                 str(r["epochs_run"]), str(r["pruned_at_epoch"]), f"{r['seconds']:.0f}", r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("plots"):
        lines += [""] + [f"![{name}]({Path(path).name})" for name, path in summary["plots"].items()]
    if summary.get("plots_skipped"):
        lines += ["", "Plots not drawn: " + "; ".join(f"{k}: {v}" for k, v in summary["plots_skipped"].items())]
    return "\n".join(lines) + "\n"


def write_best_yaml(path: Path, spec: TuneSpec, best, summary: dict) -> None:
    settings = {**spec.settings, **best.params}
    header = (f"# Best settings of `ss4rec tune` for {spec.model} on {spec.dataset}: trial {best.number}, "
              f"valid {spec.metric} {best.value:.4f}\n"
              f"# ({summary['counts']['complete']} complete, {summary['counts']['pruned']} pruned and "
              f"{summary['counts']['failed']} failed trials). Train with these settings:\n"
              f"#   ss4rec train --model {spec.model} --dataset {spec.dataset} --config {path}\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def write_plots(study, spec: TuneSpec, out_dir: Path) -> tuple[dict, dict]:
    """Optuna's matplotlib plots as PNGs: ({name: path}, {name: why not drawn})."""
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    drawn, skipped = {}, {}
    plots = {"history": lambda: ovm.plot_optimization_history(study, target_name=spec.metric),
             "learning_curves": lambda: ovm.plot_intermediate_values(study)}
    top = None
    if len(complete) >= 2:
        try:
            importances = optuna.importance.get_param_importances(study)
            top = next(iter(importances), None)
        except (ValueError, RuntimeError) as exc:
            skipped["importances"] = str(exc)
        if top is not None:
            plots["importances"] = lambda: ovm.plot_param_importances(study, target_name=spec.metric)
            plots["top_param"] = lambda: ovm.plot_slice(study, params=[top], target_name=spec.metric)
    else:
        skipped["importances"] = "fewer than 2 complete trials"
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw()
            figure = np.ravel(axes)[0].figure if isinstance(axes, np.ndarray) else axes.figure
            if name == "top_param":
                figure.suptitle(f"{spec.metric} against {top}, the most important parameter")
            if name == "learning_curves":  # Optuna's steps are our 0-based epoch indices
                axes.set_xlabel("epoch index (0-based)")
                axes.set_ylabel(f"valid {spec.metric}")
            figure.set_size_inches(8, 4.5)
            figure.tight_layout()
            path = out_dir / f"{name}.png"
            figure.savefig(path, dpi=110)
            plt.close(figure)
            drawn[name] = str(path)
        except (ValueError, RuntimeError, IndexError) as exc:
            skipped[name] = str(exc)
    return drawn, skipped


def write_report(study, spec: TuneSpec, budget: Budget, out_dir: Path, url: str, name: str,
                 pruner: str, seed: int, extra: dict | None = None) -> dict:
    """``trials.csv``, ``trials.md``, ``best.yaml``, the plots and ``tune.json``; returns the summary."""
    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(study, spec)
    now = time.time()
    states = [r["state"] for r in rows]
    counted = [t for t in trials if counts(t)]
    starts = [t.datetime_start.timestamp() for t in counted if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in counted if t.datetime_complete]
    summary = {
        "model": spec.model, "dataset": spec.dataset, "study": name, "storage": url, "metric": spec.metric,
        "direction": spec.direction, "budget": {"trials": budget.trials, "seconds": budget.seconds,
                                                "epochs_per_trial": spec.settings.get("epochs")},
        "pruner": pruner, "seed": seed, "space": spec.space,
        "counts": {s: states.count(s) for s in ("complete", "pruned", "failed", "interrupted", "running")},
        "trial_seconds": sum(trial_seconds(t, now) for t in counted),
        "wall_seconds": (max(ends) - min(starts)) if starts and ends else 0.0,
        "output": str(out_dir), "trials_table": str(out_dir / "trials.md"), **(extra or {}),
    }
    best = best_trial(study)
    if best is not None:
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "epochs_run": best.user_attrs.get("epochs_run"),
                           "best_epoch": best.user_attrs.get("best_epoch"),
                           "run_dir": best.user_attrs.get("run_dir")}
        write_best_yaml(out_dir / "best.yaml", spec, best, summary)
        summary["best_yaml"] = str(out_dir / "best.yaml")
    summary["plots"], summary["plots_skipped"] = write_plots(study, spec, out_dir)
    columns = list(rows[0]) if rows else ["trial", "state"]
    with open(out_dir / "trials.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "trials.md").write_text(_markdown(rows, spec, budget, summary), encoding="utf-8")
    previous = _read_summary(out_dir)
    if previous and previous.get("retrain"):
        summary["retrain"] = previous["retrain"]  # kept until a new retrain replaces it
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    return summary


def _read_summary(out_dir: Path) -> dict | None:
    path = Path(out_dir) / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ---- retraining the best settings with seeds ----

def retrain(out_dir: Path, summary: dict, seeds, device=None, log=print) -> dict:
    """The best settings with ``seeds`` (a count or a list) through ``compare``: ``DIR/retrain/``."""
    seed_list = parse_seeds(seeds)
    rows = compare(summary["model"], dataset=summary["dataset"], config_files=[summary["best_yaml"]],
                   output_dir=out_dir / "retrain", device=device, log=log, seeds=seed_list,
                   reference=summary["model"])
    stats = json.loads((out_dir / "retrain" / "summary.json").read_text(encoding="utf-8"))["models"][0]
    result = {"seeds": seed_list, "comparison": str(out_dir / "retrain" / "comparison.md"),
              "runs_ok": sum(r["status"] == "ok" for r in rows),
              "test": {k: v for k, v in stats.items() if "@" in k and isinstance(v, list) and len(v) == 2
                       and not k.endswith("_ci")},
              "ndcg@10_ci": stats.get("ndcg@10_ci")}
    summary["retrain"] = result
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    return result


# ---- the entry point ----

def _check_folder(out_dir: Path, study) -> None:
    """A new study must not write into the trial folders of another one."""
    if study.get_trials(deepcopy=False):
        return
    old = sorted(p.name for p in out_dir.glob("trial-*"))
    if old:
        raise UserError(f"--output {out_dir} holds trial folders ({old[0]}, ...) of another study but the "
                        "storage has none: give an empty --output, or the --storage that study used")


def _write_spec_files(out_dir: Path, spec: TuneSpec) -> tuple[Path, Path]:
    """The settings and space every worker reads (also a record of what was searched)."""
    settings_file, space_file = out_dir / "settings.yaml", out_dir / "space.yaml"
    for path, data in ((settings_file, spec.settings), (space_file, spec.space)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        os.replace(tmp, path)
    return settings_file, space_file


def tune(model: str = "SS4Rec", dataset: str = "ml-100k", config_files=(), config_dict=None, space=None,
         trials: int | None = None, timeout: float | None = None, output_dir="runs/tune", storage=None,
         study_name: str | None = None, workers: int = 1, pruner: str = "median", seed: int = 0,
         device: str | None = None, heartbeat: float = HEARTBEAT_S, retrain_seeds=None, log=print,
         report: bool = True) -> dict:
    """Search ``model``'s space on ``dataset`` within a budget; write the study's report.

    Args:
        model, dataset, config_files, config_dict: as for :func:`ss4rec.run`; the settings every
            trial shares (``compare``'s protocol defaults first).
        space: a search-space YAML file (default: the model's packaged one).
        trials, timeout: the budget: trials, or seconds of trials in all (default 20 trials).
        output_dir: the tune folder (trial folders, ``study.db``, the report).
        storage: an Optuna storage URL (``sqlite:///...``, ``postgresql://...``) or
            ``journal:PATH``; default ``sqlite:///OUTPUT/study.db``.
        study_name: the study in ``storage`` (default ``MODEL-DATASET``).
        workers: processes on this machine, each running trials of the one study.
        pruner: ``median`` (default), ``hyperband`` or ``none``.
        seed: the sampler's seed (workers get seed, seed + 1, ...).
        device: ``cpu``, ``cuda`` or None.
        heartbeat: seconds between a running trial's signs of life in the storage.
        retrain_seeds: retrain the best settings with this many seeds (or these seeds).
        log: where progress lines go (``print``; None for silence).
        report: False for a worker that only runs trials (the one that started it reports).

    Returns:
        The summary written to ``OUTPUT/tune.json`` (empty when ``report`` is False).
    """
    budget = Budget.of(trials, timeout)
    if pruner not in PRUNERS:
        raise UserError(f"--pruner {pruner!r}: use one of {', '.join(PRUNERS)}")
    if int(workers) < 1:
        raise UserError(f"--workers {workers}: give a number of processes >= 1")
    if not heartbeat > 0:
        raise UserError(f"--heartbeat {heartbeat}: give the seconds between heartbeats, > 0")
    spec = prepare(model, dataset, config_files, config_dict, space)  # refused: nothing written
    if storage is not None:
        check_storage_url(storage)
    out_dir = Path(output_dir).resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {out_dir}: cannot create it ({exc.strerror})") from None
    url = storage_url(storage, out_dir)
    name = study_name or f"{spec.model}-{spec.dataset}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our one line per trial instead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = open_study(url, name, spec, pruner)
        if report:
            _check_folder(out_dir, study)
        tally = Tally.of(study.get_trials(deepcopy=False))
        if log and report:
            kept = f"; {tally.counted} trials finished before are kept" if tally.counted else ""
            log(f"[tune] {spec.model} on {spec.dataset}: {budget.describe()}, "
                f"{spec.settings.get('epochs', 'default')} epochs each at most, over "
                f"{', '.join(spec.space)}; valid {spec.metric}; study {name!r} in {url}"
                f"{kept}; {workers} worker{'s' if workers > 1 else ''}", flush=True)
        if workers > 1:
            files = _write_spec_files(out_dir, spec)
            commands = [_worker_command(i, files, spec, budget, url, name, out_dir, device, pruner, seed, heartbeat)
                        for i in range(int(workers))]
            codes = run_workers(int(workers), commands, log)
        else:
            search(study, spec, budget, out_dir, device, pruner, seed, heartbeat, log)
        if not report:
            return {}
        extra = {"workers": int(workers)}
        if workers > 1:
            extra["workers_failed"] = sum(code != 0 for code in codes)
        summary = write_report(study, spec, budget, out_dir, url, name, pruner, seed, extra)
    if log:
        best = summary.get("best")
        log(f"[tune] {_budget_line(spec, budget, summary)}", flush=True)
        log(f"[tune] best: trial {best['number']}, {spec.metric} {best['value']:.4f}: "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
            + f"; settings in {summary['best_yaml']}" if best else "[tune] no trial completed: no best.yaml",
            flush=True)
        log(f"[tune] table: {summary['trials_table']}; plots: {', '.join(summary['plots']) or 'none'}", flush=True)
    if retrain_seeds and summary.get("best"):
        retrain(out_dir, summary, retrain_seeds, device, log)
    return summary


# ---- several tuned models side by side ----

def compare_tuned(tune_dirs, seeds=None, output_dir="runs/compare-tuned", device=None, timeout_s=None,
                  reference: str | None = None, log=print, train: bool = True) -> list[dict]:
    """Each tuned model at its ``best.yaml``, with seeds, in one comparison table with its budget.

    The runs live in each tune's ``retrain/`` folder (the ones ``retrain_seeds`` trained are
    reused); the table, plots and CIs are ``compare``'s, written to ``output_dir`` with a
    "Tuning budget" section. ``seeds``: a count or list; default: each tune's retrain seeds
    (else one run at the configured seed).
    """
    dirs = [Path(d).resolve() for d in (tune_dirs.split(",") if isinstance(tune_dirs, str) else tune_dirs)
            if str(d).strip()]
    if not dirs:
        raise UserError("--tuned is empty: give tune folders, e.g. --tuned runs/tune-ss4rec,runs/tune-sasrec")
    tuned = []
    for d in dirs:
        summary = _read_summary(d)
        if summary is None or not summary.get("best_yaml"):
            raise UserError(f"--tuned {d}: no finished tune there (no {SUMMARY_FILE} with a best.yaml); "
                            "run `ss4rec tune ... --output` into it first")
        tuned.append((d, summary))
    datasets = sorted({s["dataset"] for _, s in tuned})
    if len(datasets) > 1:
        raise UserError(f"--tuned: the tunes used different datasets ({', '.join(datasets)}); compare tunes of one dataset")
    names = [s["model"] for _, s in tuned]
    labels = [m if names.count(m) == 1 else f"{m} ({d.name})" for (d, s), m in zip(tuned, names)]
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plans = []
    for (d, s), label in zip(tuned, labels):
        seed_list = parse_seeds(seeds) if seeds is not None else ((s.get("retrain") or {}).get("seeds") or [None])
        spec = ModelSpec(s["model"], s["model"])  # the folder name compare's retrain used
        settings = settings_for(spec, shared_settings([s["best_yaml"]]), [spec])
        plans += [(label, spec, settings, d, seed) for seed in seed_list]
    rows = []
    for i, (label, spec, settings, d, seed) in enumerate(plans, 1):
        if log and train:
            log(f"[compare] run {i}/{len(plans)}: {label}{'' if seed is None else f' seed {seed}'} "
                "at its tuned settings", flush=True)
        row = run_model(spec, settings, datasets[0], d / "retrain", device, timeout_s, seed,
                        log if train else None, train)
        row["model"] = label
        rows.append(row)
    common = _common_settings([p[2] for p in plans])
    reference = reference if reference in labels else labels[0]
    summary = write_tables(rows, out, common, datasets[0], reference)
    budgets = _budget_section(tuned, labels)
    with open(out / "comparison.md", "a", encoding="utf-8") as f:
        f.write("\n## Tuning budget\n\n" + budgets["markdown"])
    summary["tuning"] = budgets["models"]
    write_json_atomic(out / "summary.json", summary)
    return rows


def _common_settings(all_settings: list[dict]) -> dict:
    """Settings every model shares; a tuned key that differs reads "tuned per model"."""
    first = all_settings[0]
    common = {}
    for key, value in first.items():
        same = all(s.get(key) == value for s in all_settings)
        common[key] = value if same else "tuned per model"
    return common


def _budget_section(tuned, labels) -> dict:
    header = ["model", "budget", "epochs per trial", "complete", "pruned", "failed", "trial-seconds",
              "best valid", "tuned settings", "tune folder"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    models = []
    for (d, s), label in zip(tuned, labels):
        b, c, best = s["budget"], s["counts"], s["best"]
        budget = " or ".join(x for x in (f"{b['trials']} trials" if b.get("trials") else "",
                                         f"{b['seconds']:,.0f} s" if b.get("seconds") else "") if x)
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        lines.append("| " + " | ".join([label, budget, str(b.get("epochs_per_trial") or "default"),
                                        str(c["complete"]), str(c["pruned"]), str(c["failed"]),
                                        f"{s['trial_seconds']:,.0f}", f"{s['metric']} {best['value']:.4f}",
                                        params, str(d)]) + " |")
        models.append({"model": label, "tune_dir": str(d), "budget": b, "counts": c,
                       "trial_seconds": s["trial_seconds"], "best": best})
    text = ("Each model ran at the best settings of its own search; the search budget each got:\n\n"
            + "\n".join(lines) + "\n")
    return {"markdown": text, "models": models}

