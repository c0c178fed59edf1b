"""Train several models under identical data settings and tabulate their test metrics.

    >>> from ss4rec.evaluation.compare import compare
    >>> rows = compare("SS4Rec,SASRec,GRU4Rec,S6-only", dataset="ml-100k",
    ...                config_files=["ml-100k-quick"], epochs=10,
    ...                output_dir="runs/cmp")  # doctest: +SKIP
    >>> [(r["model"], r["status"], r["ndcg@10"]) for r in rows]  # doctest: +SKIP

Every model trains in its own subprocess (``python -m ss4rec train``), so a crash or an
out-of-memory kill in one cannot take the others down, and peak memory is measured per
model: the subprocess's peak RSS on CPU (``os.wait4``), ``torch.cuda.max_memory_allocated``
from its ``results.json`` on CUDA.

Identical settings: one merged config (``COMPARE_DEFAULTS`` < config files < ``config_dict``
< ``epochs``) goes to every model, minus the keys that belong to *another* compared model
only (``hidden_size`` from a config means nothing to NeuMF). Model-specific settings come
from each model's own defaults. ``S5-only``, ``S6-only`` and ``ignore-time`` are SS4Rec
with ``model_type`` set.

Seeds (``seeds=3`` or ``[2020, 2021]``): every model trains once per seed (seed-major, so
a complete table for the first seed comes first), in ``MODEL/seed-N``. After training, each
run's best checkpoint is evaluated in a subprocess (``ss4rec evaluate --time-probe``):
per-user ranks for the paired bootstrap CIs, and the time diagnostics (:mod:`ss4rec.evaluation.probe`,
:mod:`ss4rec.evaluation.study`). Running the same comparison again into the same folder reuses every
run that finished with identical settings, so an interrupted study continues.

Output (``output_dir``, rewritten after every run, so a long study shows its progress):
``comparison.csv`` (one row per run), ``comparison.md`` (mean ± std over seeds with CI
columns, the time diagnostics, then every run), ``summary.json``, the plots
(:mod:`ss4rec.evaluation.compare_plots`), and one folder per run holding its ``settings.yaml``,
``train.out`` (the subprocess's output), ``results.json``, checkpoints and ``evaluate/``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ss4rec.config.files import check_keys, known_defaults, known_keys, load_config_file, model_config_file
from ss4rec.config.safe_yaml import load_yaml
from ss4rec.config.validation import check_values
from ss4rec.data.modes import train_mode
from ss4rec.errors import ConfigError, UserError
from ss4rec.evaluation.compare_plots import plot_summary
from ss4rec.evaluation.published import published_rows, published_section
from ss4rec.evaluation.study import best_epoch, markdown_summary, summarise
from ss4rec.models.losses import supports_windows
from ss4rec.pipeline.preflight import check_settings
from ss4rec.pipeline.settings import build_config, dataset_location, resolve_model

# Settings every compared model shares unless the config files say otherwise: the
# leave-one-out, time-ordered, full-ranking protocol and the cut-offs of the table.
COMPARE_DEFAULTS = {
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
    "metrics": ["Hit", "NDCG", "MRR"],
    "topk": [1, 5, 10, 20],
    "valid_metric": "NDCG@10",
    "show_progress": False,
}

# SS4Rec ablations, run as SS4Rec with ``model_type`` set (see ss4rec.models.ss4rec.MODEL_TYPES).
ABLATIONS = ("S5-only", "S6-only", "ignore-time")

METRIC_ORDER = ("hit", "ndcg", "mrr")
COST_COLUMNS = ("seconds_per_epoch", "epochs_run", "best_epoch", "train_seconds", "peak_memory_mb",
                "memory_kind", "parameters")
FIRST_SEED = 2020  # RecBole's default seed; --seeds N runs 2020 .. 2020 + N - 1


@dataclass
class ModelSpec:
    """One entry of ``--models``: its label in the table, the model to train, extra settings."""

    label: str
    model: str
    overrides: dict = field(default_factory=dict)


def parse_models(text) -> list[ModelSpec]:
    """``"SS4Rec,SASRec,S6-only"`` (or a list) -> model specs; ablations become SS4Rec + model_type.

    An entry may carry settings of its own: ``BERT4Rec:epochs=10`` (``NAME:KEY=VALUE:...``,
    values read as YAML), e.g. an epoch cap for a model too slow to converge; the label
    shows them (``BERT4Rec (epochs=10)``). Names and settings are checked by :func:`check_specs`
    before anything trains.
    """
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError("--models is empty: give a comma-separated list, e.g. --models SS4Rec,SASRec")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"--models names {', '.join(duplicates)} more than once; each model runs once")
    specs = []
    for entry in names:
        name, *pairs = [p.strip() for p in entry.split(":")]
        own = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--models entry {entry!r}: settings go as NAME:KEY=VALUE, e.g. BERT4Rec:epochs=10")
            own[key.strip()] = load_yaml(value, f"--models {entry}")
        label = name if not own else f"{name} ({', '.join(f'{k}={v}' for k, v in own.items())})"
        ablation = next((a for a in ABLATIONS if a.lower() == name.lower()), None)
        if ablation:
            specs.append(ModelSpec(label.replace(name, ablation, 1), "SS4Rec", {"model_type": ablation, **own}))
        else:
            specs.append(ModelSpec(label, name, own))
    return specs


def parse_seeds(value) -> list[int] | None:
    """``3`` -> [2020, 2021, 2022]; ``"1,7"`` or ``[1, 7]`` -> [1, 7]; None -> None (one run each)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise UserError(f"--seeds {value!r}: give a count (--seeds 3) or a comma-separated list "
                            "of integer seeds (--seeds 2020,2021,2022)") from None
        value = numbers[0] if len(numbers) == 1 else numbers
    if isinstance(value, int):
        if not 1 <= value <= 100:
            raise UserError(f"--seeds {value}: a count of seeds from 1 to 100 (or a list: --seeds 7,8)")
        return list(range(FIRST_SEED, FIRST_SEED + value))
    seeds = [int(v) for v in value]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {seeds}: give distinct seeds")
    return seeds


def shared_settings(config_files=(), config_dict=None, epochs=None) -> dict:
    """The one merged config every model gets (before per-model filtering)."""

    merged = dict(COMPARE_DEFAULTS)
    for f in config_files or ():
        merged.update(load_config_file(f))
    merged.update(config_dict or {})
    if epochs is not None:
        if int(epochs) < 1:
            raise UserError(f"--epochs must be at least 1, not {epochs}")
        merged["epochs"] = int(epochs)
    # Refuse a bad shared value now, not once per model (ss4rec.config.validation; every run
    # checks again, with its model's own defaults).

    check_values(merged, "the shared settings", known_defaults(""))
    return merged


def check_specs(specs, shared: dict, dataset: str, device=None) -> None:
    """Refuse an unknown model name or a bad per-model setting now, not after the models before
    it have trained: each model's whole config is built and its settings checked as its run
    will (:func:`ss4rec.pipeline.preflight.check_settings`; the data is checked by each run)."""
    for spec in specs:
        name, _ = resolve_model(spec.model)
        source = f"--models {spec.label}"
        check_keys(spec.overrides, name, source=source)
        check_values(spec.overrides, source, known_defaults(name))
        try:
            config, _ = build_config(spec.model, dataset, (), settings_for(spec, shared, specs), device)
            check_settings(config, spec.label, dataset)
        except UserError as exc:
            raise type(exc)(f"--models {spec.label}: {exc}") from None


def check_reference(reference: str | None, specs) -> str:
    """The model the paired CIs compare against: ``reference`` if it is compared, the default
    SS4Rec when it is, else the first model; an explicit name that is not compared is refused."""
    labels = [s.label for s in specs]
    if reference is None:
        return "SS4Rec" if "SS4Rec" in labels else labels[0]
    match = next((label for label in labels if label.lower() == str(reference).lower()), None)
    if match is None:
        raise UserError(f"--reference {reference!r} is not among --models ({', '.join(labels)}): use one of "
                        "those, or leave --reference out (SS4Rec when compared, else the first model)")
    return match


def _own_keys(model: str) -> set[str]:
    """Keys of a model's own defaults file (empty for unknown names)."""

    path = model_config_file(model)
    return set(load_config_file(path)) if path is not None else set()


def settings_for(spec: ModelSpec, shared: dict, specs) -> dict:
    """``shared`` without other models' own keys, plus ``spec``'s overrides.

    A model that cannot train in ``train_mode: sequence`` (NeuMF, NARM, ...) trains in
    prefix mode when the shared settings ask for sequence mode; the table shows each run's mode.
    """

    general = known_keys("")  # RecBole's and ss4rec's keys, no model's
    own = _own_keys(spec.model)
    others = set().union(*(_own_keys(s.model) for s in specs if s.model != spec.model))
    foreign = {k for k in shared if k in others and k not in own and k not in general}
    settings = {k: v for k, v in shared.items() if k not in foreign}
    settings.update(spec.overrides)
    if settings.get("train_mode") == "sequence" and not _trains_windows(spec.model):
        settings["train_mode"] = "prefix"
    return settings


def _trains_windows(model: str) -> bool:
    """Whether ``model`` can train in sequence mode (True for unknown names: their run says why)."""

    try:
        return supports_windows(resolve_model(model)[1])
    except ConfigError:
        return True


def _failure_cause(log_file: Path, returncode: int) -> str:
    """The one-line cause of a failed subprocess: its ``error:`` line, else its last words."""
    lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines() if log_file.exists() else []
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory?)" if -returncode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    last = next((line for line in reversed(lines) if line.strip()), "no output")
    return f"exit code {returncode}: {last.strip()}"


def _run_subprocess(command, log_file: Path, timeout_s=None):
    """Run ``command`` with its output in ``log_file``. Returns (returncode, peak RSS in MiB, timed_out).

    ``os.wait4`` reports the resource use of exactly this child (RUSAGE_CHILDREN would
    be the maximum over every child so far).
    """
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    start = time.monotonic()
    timed_out = False
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # its whole session: RecBole's workers too
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
    except BaseException:
        # Its own session does not get the terminal's Ctrl-C: stop it with us.
        os.killpg(proc.pid, signal.SIGKILL)
        os.wait4(proc.pid, 0)
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return proc.returncode, usage.ru_maxrss / 1024, timed_out  # ru_maxrss: KiB on Linux


def data_digest(dataset: str, data_path=None) -> str:
    """SHA-256 of the dataset's atomic files (NAME.inter, .item, .user): what a finished run was
    trained and tested on. A run is reused only while its data still has this digest."""
    folder = dataset_location(dataset, data_path)
    digest = hashlib.sha256()
    for path in sorted(folder.glob(f"{dataset}.*")):
        if path.suffix in (".inter", ".item", ".user") and path.is_file():
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def run_model(spec: ModelSpec, settings: dict, dataset: str, out_dir: Path, device=None,
              timeout_s=None, seed=None, log=None, train: bool = True, data_sha256: str | None = None) -> dict:
    """Train one model (one seed) in a subprocess, then evaluate its best checkpoint.

    Returns a table row: status ``ok`` or ``failed`` with ``error``. A run folder that
    already holds a finished run with these exact settings is reused, not retrained. With
    ``train=False`` nothing is trained: a run not finished before is ``missing``.
    """

    model_dir = out_dir / _folder_name(spec.label)
    if seed is not None:
        model_dir = model_dir / f"seed-{seed}"
        settings = {**settings, "seed": seed}
    settings_file = model_dir / "settings.yaml"
    text = yaml.safe_dump(settings, sort_keys=False)
    results_file, usage_file = model_dir / "results.json", model_dir / "usage.json"
    row = {"model": spec.label, "seed": seed if seed is not None else settings.get("seed", ""),
           "status": "failed", "run_dir": str(model_dir), "error": ""}
    # Reused only when provably the same: these settings and the same data bytes.
    reuse = (results_file.exists() and usage_file.exists() and settings_file.exists()
             and settings_file.read_text(encoding="utf-8") == text
             and _usage(usage_file).get("data_sha256") == (data_sha256 or data_digest(dataset, settings.get("data_path"))))
    if not reuse and not train:
        row.update(status="missing", error="not run yet (or run with other settings or data)")
        return row
    if reuse:
        peak_rss_mb = _usage(usage_file)["peak_rss_mb"]
        if log:
            log(f"[compare] {spec.label}{'' if seed is None else f' seed {seed}'}: finished before "
                f"with these settings and data, reused ({model_dir})", flush=True)
    else:
        model_dir.mkdir(parents=True, exist_ok=True)  # only a run that trains writes a folder
        settings_file.write_text(text, encoding="utf-8")
        for stale in (results_file, usage_file):
            if stale.exists():
                stale.unlink()  # a stale file must not pass for this run's result
        command = [sys.executable, "-m", "ss4rec", "train", "--model", spec.model, "--dataset", dataset,
                   "--config", str(settings_file), "--output", str(model_dir),
                   "--overwrite"]  # compare owns MODEL/: a run with other settings replaces the old
        if device:
            command += ["--device", device]
        returncode, peak_rss_mb, timed_out = _run_subprocess(command, model_dir / "train.out", timeout_s)
        if timed_out:
            row["error"] = f"timed out after {timeout_s:.0f} s"
            return row
        if returncode != 0 or not results_file.exists():
            row["error"] = _failure_cause(model_dir / "train.out", returncode)
            return row

    results = json.loads(results_file.read_text(encoding="utf-8"))
    row.update(result_row(results, peak_rss_mb))
    if not reuse or not (model_dir / "evaluate" / "user_ranks.csv").exists():
        row["evaluate_error"] = _evaluate_run(results, settings, model_dir, device)
    if not reuse:
        # Written last: its presence says "trained and evaluated with settings.yaml".
        usage_file.write_text(json.dumps({"peak_rss_mb": peak_rss_mb, "data_sha256": data_sha256
                                          or data_digest(dataset, settings.get("data_path"))}), encoding="utf-8")
    return row


def result_row(results: dict, peak_rss_mb: float) -> dict:
    """A finished run's table fields, from its ``results.json`` (and the measured peak RSS,
    used when no GPU peak was recorded)."""
    row = dict(results["test"])
    row.update(status="ok", seconds_per_epoch=results["seconds_per_epoch"],
               epochs_run=results["epochs_run"], best_epoch=best_epoch(results),
               train_mode=train_mode(results.get("config", {})),
               train_seconds=results["train_seconds"], parameters=results["parameters"])
    if "peak_gpu_memory_mb" in results:
        row.update(peak_memory_mb=results["peak_gpu_memory_mb"], memory_kind="cuda")
    else:
        row.update(peak_memory_mb=peak_rss_mb, memory_kind="rss")
    return row


def _usage(path: Path) -> dict:
    """A run's usage.json ({} when unreadable: the run is then not reused)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _evaluate_run(results: dict, settings: dict, model_dir: Path, device) -> str:
    """Per-user ranks (and the time probe, when the time field is loaded) of the best checkpoint.

    Returns "" on success, else the cause: the training result stands either way.
    """
    command = [sys.executable, "-m", "ss4rec", "evaluate", "--checkpoint", results["checkpoint"],
               "--output", str(model_dir / "evaluate")]
    load_col = settings.get("load_col")
    time_field = results.get("config", {}).get("TIME_FIELD", "timestamp")
    if load_col is None or time_field in (load_col.get("inter") or []):
        command.append("--time-probe")
    if device:
        command += ["--device", device]
    returncode, _, _ = _run_subprocess(command, model_dir / "evaluate.out")
    return "" if returncode == 0 else _failure_cause(model_dir / "evaluate.out", returncode)




def _folder_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def metric_columns(topk) -> list[str]:
    return [f"{m}@{k}" for m in METRIC_ORDER for k in topk]


def compare(models, dataset: str = "ml-100k", config_files=(), config_dict=None, epochs=None,
            output_dir="runs/compare", device=None, timeout_s=None, log=print, seeds=None,
            reference: str | None = None, train: bool = True) -> list[dict]:
    """Train every model of ``models`` under the same settings; write the comparison table.

    Args:
        models: ``"SS4Rec,SASRec,..."`` or a list of names (RecBole models, SS4Rec, ablations).
        dataset, config_files, config_dict: as for :func:`ss4rec.run`, shared by all models.
        epochs: overrides ``epochs`` for every model.
        output_dir: where the table and one folder per model go.
        device: ``cpu``, ``cuda`` or None (RecBole's choice).
        timeout_s: per-run wall-clock limit; a run past it is killed and marked failed.
        log: where progress lines go (``print``; ``None`` for silence).
        seeds: None (one run per model, the configs' seed), a count, or a list of seeds.
        reference: the model the paired CIs compare against (default SS4Rec when compared, else the
            first); a name not among ``models`` is refused.
        train: False to only tabulate the runs already finished in ``output_dir`` (e.g. while
            other compare processes still train into it); the others are listed as missing.

    Returns:
        One row per run: ``model``, ``seed``, ``status`` (``ok``/``failed``), metrics, costs, ``error``.
    """
    specs = parse_models(models)
    seed_list = parse_seeds(seeds)
    shared = shared_settings(config_files, config_dict, epochs)  # refused settings: no folder
    check_specs(specs, shared, dataset, device)  # every model's settings, before the first one trains
    reference = check_reference(reference, specs)
    if timeout_s is not None and not timeout_s > 0:
        raise UserError(f"--timeout-minutes {timeout_s / 60:g}: use a positive number of minutes, or leave it out")
    digest = data_digest(dataset, shared.get("data_path"))  # the data every run here is trained on
    out_dir = Path(output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [(spec, seed) for seed in (seed_list or [None]) for spec in specs]
    rows = []
    for i, (spec, seed) in enumerate(runs, 1):
        name = spec.label if seed is None else f"{spec.label} seed {seed}"
        if log and train:
            log(f"[compare] run {i}/{len(runs)}: {name}: training", flush=True)
        row = run_model(spec, settings_for(spec, shared, specs), dataset, out_dir, device, timeout_s, seed,
                        log if train else None, train, data_sha256=digest)
        rows.append(row)
        if log and train:
            detail = f"ndcg@10 {row.get('ndcg@10', float('nan')):.4f}" if row["status"] == "ok" else row["error"]
            if row.get("evaluate_error"):
                detail += f"; evaluate failed: {row['evaluate_error']}"
            log(f"[compare] run {i}/{len(runs)}: {name}: {row['status']} ({detail})", flush=True)
        if train or i == len(runs):  # training: after every run, so a long study shows progress
            write_tables(rows, out_dir, shared, dataset, reference)
    return rows


def write_tables(rows, out_dir, shared: dict, dataset: str, reference: str = "SS4Rec") -> dict:
    """``comparison.csv`` (a row per run), ``summary.json``, the plots and ``comparison.md``.

    Returns the summary (:func:`ss4rec.evaluation.study.summarise`).
    """


    out_dir = Path(out_dir)
    topk = list(shared.get("topk", [10]))
    columns = ["model", "seed", "status", "train_mode", *metric_columns(topk), *COST_COLUMNS, "run_dir", "error"]
    with open(out_dir / "comparison.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    summary = summarise(rows, topk, reference)
    summary["plots"] = plot_summary(summary, out_dir)
    summary["published"] = published_rows(summary, dataset)  # the paper's numbers, ratio ours/published
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    text = [markdown_table(rows, shared, dataset)]
    if any(r["status"] == "ok" for r in rows):
        plots = "".join(f"![{name}]({Path(path).name})\n" for name, path in summary["plots"].items())
        published = published_section(summary, dataset)
        text = [text[0].split("\n\n")[0], "", "## Summary over seeds", "", markdown_summary(summary, topk),
                plots, *([published] if published else []), "## Every run", "", text[0].split("\n\n", 1)[1]]
    (out_dir / "comparison.md").write_text("\n".join(text), encoding="utf-8")
    return summary


def markdown_table(rows, shared: dict, dataset: str) -> str:
    """The comparison as a Markdown table, failures listed with their causes below it."""
    metrics = metric_columns(shared.get("topk", [10]))
    header = ["model", "seed", *[m.replace("hit", "HR").replace("ndcg", "NDCG").replace("mrr", "MRR") for m in metrics],
              "s/epoch", "epochs", "best epoch", "peak MiB", "params"]
    lines = [
        f"Dataset `{dataset}`; MAX_ITEM_LIST_LENGTH {shared.get('MAX_ITEM_LIST_LENGTH', 'default')}, "
        f"epochs {shared.get('epochs', 'default')}, train_batch_size {shared.get('train_batch_size', 'default')}, "
        f"valid metric {shared.get('valid_metric')}; test split, full ranking.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append("| " + " | ".join([row["model"], str(row.get("seed", "")), row["status"],
                                            *[""] * (len(header) - 3)]) + " |")
            continue
        memory = f"{row['peak_memory_mb']:.0f} ({row['memory_kind']})"
        cells = [row["model"], str(row.get("seed", "")), *[f"{row.get(m, float('nan')):.4f}" for m in metrics],
                 f"{row['seconds_per_epoch']:.1f}", str(row["epochs_run"]), str(row.get("best_epoch") or ""),
                 memory, f"{row['parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed:", ""] + [
            f"- {r['model']}{'' if r.get('seed') in (None, '') else ' seed ' + str(r['seed'])}: {r['error']}"
            for r in failed]
    return "\n".join(lines) + "\n"
