"""Benchmark training speed: seconds per epoch, ratio to SASRec and peak memory of every model.

Usage::

    python scripts/bench_train.py                                   # all models, L=50 and 200, 1 thread
    python scripts/bench_train.py --max-batches 6                   # extrapolate from 6 batches
    python scripts/bench_train.py --max-seconds 120                 # whole epochs up to 2 minutes
    python scripts/bench_train.py --train-mode prefix               # the paper's protocol
    python scripts/bench_train.py --models SS4Rec SASRec --lengths 50 --device cuda
    python scripts/bench_train.py --skip-block                      # no block-scaling table

Setup (the same for every model): bundled ML-100K with ``ml-100k-quick``'s data settings,
batch 2048 targets, hidden size 64, CE loss, Adam (lr 1e-3), max sequence length from
``--lengths`` (default 50 and 200). ``--train-mode`` (default ``sequence``, as
``ml-100k-quick``): each model trains in the mode ``ss4rec compare`` would give it -- a model
that cannot train on windows (BERT4Rec) trains in prefix mode, and the table says so.
SS4Rec uses its defaults (2 layers, Mamba d_state 32, expand 2, S5 P 32); S5-only and
S6-only are SS4Rec's ablations; SASRec RecBole's (2 layers, 2 heads, inner 256); GRU4Rec one
layer with embedding and hidden size 64; TiSASRec and BERT4Rec their defaults at width 64.

How it measures:

* ``--repeats`` rounds (default 3): each round runs every (model, length) once, in turn (the
  order reversed every other round), so a slow spell of a shared machine hits every model; the tables report each model's median
  epoch and list every round's CPU seconds, and the verdict gives each round's own ratio
  (a model's epoch moved by up to 20% between runs on the quiet 2-core VM this was written on).
* Each (model, length) trains in its own subprocess, so peak memory does not mix: CPU peak
  is the subprocess's resident-set high-water mark (``ru_maxrss``, data included); CUDA peak
  is ``torch.cuda.max_memory_allocated``.
* The CPU keeps freed memory for reuse (:mod:`ss4rec.training.host_memory`), as the trainer does.
* The timed loop is the trainer's step (the batch loss -- ``calculate_loss`` in prefix mode,
  the window loss in sequence mode --, ``backward``, Adam ``step``) over the run's own train
  loader, so data loading is included. Both wall time and the process's CPU time are
  reported; on a shared machine CPU time is the steadier of the two, and the ratio to
  SASRec (same length, same script run) the number to compare. One batch runs first
  untimed (allocator warm-up, one-off kernel build). Without ``--max-batches`` the whole
  epoch is timed; with it, the first N batches are timed and scaled to the epoch's batch
  count, and the table says "extrapolated from N batches" (likewise with ``--max-seconds``,
  which stops timing after that many seconds).
* Block scaling: forward+backward of one SS4Rec block (S5 then Mamba, hidden 64) at
  batch ``--block-batch`` for lengths 50...800 (median of 3), in one more subprocess.
  Linear scaling means time(800) / time(200) near 4; the target is <= 4.5.

Target, CPU: SS4Rec epoch time <= SASRec epoch time at lengths 50 and 200.
Prints markdown tables (and, with ``--json PATH``, writes the raw rows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("SS4Rec", "SASRec", "GRU4Rec", "S5-only", "S6-only", "TiSASRec", "BERT4Rec")
BLOCK_LENGTHS = (50, 100, 200, 400, 800)
TRAIN_MODES = ("sequence", "prefix")
DATA_CONFIG = "ml-100k-quick"  # its data settings (load_col, split); batch and widths below

# Settings every model shares, and each row's model and own keys (hidden 64 throughout).
COMMON = {"train_batch_size": 2048, "loss_type": "CE", "learning_rate": 0.001, "seed": 2020,
          "show_progress": False, "epochs": 1}
PER_MODEL = {
    "SS4Rec": ("SS4Rec", {"hidden_size": 64}),
    "SASRec": ("SASRec", {"hidden_size": 64}),
    "GRU4Rec": ("GRU4Rec", {"embedding_size": 64, "hidden_size": 64}),
    "S5-only": ("SS4Rec", {"hidden_size": 64, "model_type": "S5-only"}),
    "S6-only": ("SS4Rec", {"hidden_size": 64, "model_type": "S6-only"}),
    "TiSASRec": ("TiSASRec", {"hidden_size": 64}),
    "BERT4Rec": ("BERT4Rec", {"hidden_size": 64}),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--lengths", nargs="+", type=int, default=[50, 200], help="MAX_ITEM_LIST_LENGTH values")
    parser.add_argument("--epochs", type=int, default=1, help="epochs to time (the mean is reported)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of every (model, length) subprocess, interleaved; the median is reported")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="time only N batches per epoch and extrapolate to the epoch")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop timing an epoch after this many seconds (at a batch end) and "
                             "extrapolate: fast models time whole epochs, slow ones a part")
    parser.add_argument("--train-mode", choices=TRAIN_MODES, default="sequence",
                        help="sequence (windows, default) or prefix; a model that cannot train on "
                             "windows trains in prefix mode, as ss4rec compare does")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--block-batch", type=int, default=64, help="batch of the block-scaling table")
    parser.add_argument("--skip-block", action="store_true", help="leave out the block-scaling table")
    parser.add_argument("--json", default=None, help="also write the raw rows to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one subprocess's job
    args = parser.parse_args(argv)
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be >= 1")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


# --------------------------------------------------------------------- workers (subprocess)
def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def model_train_mode(model: str, requested: str) -> str:
    """The train_mode ``ss4rec compare`` gives ``model`` when ``requested`` is asked for."""
    from ss4rec.models.losses import supports_windows
    from ss4rec.pipeline.settings import resolve_model

    if requested == "sequence" and not supports_windows(resolve_model(PER_MODEL[model][0])[1]):
        return "prefix"
    return requested


def train_worker(model: str, length: int, args) -> dict:
    """Time training epochs of one model at one max length; returns one table row."""
    import functools

    import torch
    from recbole.utils import init_seed

    from ss4rec.config.files import resolve_config_file
    from ss4rec.data.loaders import create_dataset, prepare_data
    from ss4rec.models.losses import window_loss
    from ss4rec.pipeline.settings import build_config
    from ss4rec.training.host_memory import keep_freed_memory

    torch.set_num_threads(args.threads)
    if args.device == "cpu":  # as the trainer does on the CPU (ss4rec.training.host_memory)
        keep_freed_memory()
    model_name, own = PER_MODEL[model]
    mode = model_train_mode(model, args.train_mode)
    settings = {**COMMON, **own, "MAX_ITEM_LIST_LENGTH": length, "train_mode": mode}
    config, model_class = build_config(model_name, "ml-100k", config_files=[resolve_config_file(DATA_CONFIG)],
                                       config_dict=settings, device=args.device)
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = prepare_data(config, create_dataset(config))
    net = model_class(config, train_data._dataset).to(config["device"])
    optimizer = torch.optim.Adam(net.parameters(), lr=config["learning_rate"])
    batch_loss = functools.partial(window_loss, net) if mode == "sequence" else net.calculate_loss
    net.train()

    def step(interaction):
        optimizer.zero_grad()
        loss = batch_loss(interaction.to(config["device"]))
        loss.backward()
        optimizer.step()

    step(next(iter(train_data)))  # warm-up, untimed (allocator, one-off kernel build)
    _sync(args.device)
    batches_per_epoch = len(train_data)
    epoch_seconds, epoch_cpu_seconds = [], []
    for _ in range(args.epochs):
        timed = 0
        start, start_cpu = time.perf_counter(), time.process_time()
        for interaction in train_data:
            step(interaction)
            timed += 1
            if args.max_batches is not None and timed >= args.max_batches:
                break
            if args.max_seconds is not None and time.perf_counter() - start >= args.max_seconds:
                break
        _sync(args.device)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        epoch_seconds.append(elapsed * batches_per_epoch / timed)
        epoch_cpu_seconds.append(elapsed_cpu * batches_per_epoch / timed)
    return {
        "model": model,
        "length": length,
        "train_mode": mode,
        "seconds_per_epoch": statistics.mean(epoch_seconds),
        "cpu_seconds_per_epoch": statistics.mean(epoch_cpu_seconds),
        "timed_batches": timed,
        "batches_per_epoch": batches_per_epoch,
        "extrapolated": timed < batches_per_epoch,
        "peak_memory_mb": _peak_memory_mb(args.device),
        "parameters": sum(p.numel() for p in net.parameters()),
        "scan": _mamba_scan(net, args.device),
    }


def _mamba_scan(net, device: str) -> str:
    """Which selective scan the model's Mamba layers ran: cuda, fused, chunked, reference or -."""
    import torch

    from ss4rec.ssm.scan_fused import fused_scan_usable

    layers = [m for m in net.modules() if type(m).__name__ == "Mamba"]
    if not layers:
        return "-"
    layer = layers[0]
    if layer.last_backend == "cuda":
        return "cuda (mamba-ssm)"
    if layer.scan_impl == "auto":
        return "fused" if fused_scan_usable(torch.zeros(1, device=device)) else "chunked"
    return layer.scan_impl


def block_worker(args) -> list[dict]:
    """Forward+backward seconds of one SS4Rec block against sequence length."""
    import torch

    from ss4rec.models.ss4rec import SSBlock

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    block = SSBlock(hidden_size=64, d_P=32, d_state=32, d_conv=4, expand=2, dt_min=0.001,
                    dt_max=0.1, dropout_prob=0.2, model_type="SS4Rec", mamba_backend="auto").to(args.device)
    rows = []
    for length in BLOCK_LENGTHS:
        x = torch.randn(args.block_batch, length, 64, device=args.device, requires_grad=True)  # [B L H]
        dt = torch.rand(args.block_batch, length, device=args.device)  # [B L] gaps
        times = []
        for repeat in range(4):  # first pass is warm-up
            _sync(args.device)
            start = time.perf_counter()
            block(x, dt).sum().backward()
            _sync(args.device)
            if repeat:
                times.append(time.perf_counter() - start)
        rows.append({"length": length, "seconds": statistics.median(times)})
    return rows


# --------------------------------------------------------------------- driver
def _run_worker(job: dict, args) -> object:
    """Run one job in a fresh interpreter; return its JSON result (raise with its stderr)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job),
           "--threads", str(args.threads), "--device", args.device, "--epochs", str(args.epochs),
           "--block-batch", str(args.block_batch), "--train-mode", args.train_mode]
    if args.max_batches is not None:
        cmd += ["--max-batches", str(args.max_batches)]
    if args.max_seconds is not None:
        cmd += ["--max-seconds", str(args.max_seconds)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_table(rows: list[dict]) -> str:
    lines = ["| model | max length | train mode | s / epoch (wall) | CPU s / epoch | CPU s, each round | how | "
             "peak memory (MB) | parameters | Mamba scan |",
             "|---|---:|---|---:|---:|---|---|---:|---:|---|"]
    for r in rows:
        how = (f"extrapolated from {r['timed_batches']} batches (of {r['batches_per_epoch']})"
               if r["extrapolated"] else f"full epoch ({r['batches_per_epoch']} batches)")
        each = ", ".join(f"{x:.1f}" for x in r.get("cpu_runs", [r["cpu_seconds_per_epoch"]]))
        lines.append(f"| {r['model']} | {r['length']} | {r['train_mode']} | {r['seconds_per_epoch']:.1f} | "
                     f"{r['cpu_seconds_per_epoch']:.1f} | {each} | {how} | {r['peak_memory_mb']:.0f} | "
                     f"{r['parameters']:,} | {r['scan']} |")
    return "\n".join(lines)


def median_rows(runs: list[dict]) -> list[dict]:
    """One row per (model, length): the median epoch (CPU and wall separately) over the rounds,
    with every round's CPU seconds in ``cpu_runs``; peak memory is the largest seen."""
    rows = {}
    for run in runs:
        rows.setdefault((run["model"], run["length"]), []).append(run)
    out = []
    for group in rows.values():
        row = {k: v for k, v in group[0].items() if k != "round"}
        row["cpu_seconds_per_epoch"] = statistics.median(r["cpu_seconds_per_epoch"] for r in group)
        row["seconds_per_epoch"] = statistics.median(r["seconds_per_epoch"] for r in group)
        row["peak_memory_mb"] = max(r["peak_memory_mb"] for r in group)
        row["cpu_runs"] = [r["cpu_seconds_per_epoch"] for r in group]
        out.append(row)
    return out


def ratio_table(rows: list[dict]) -> str:
    """Seconds per epoch and the ratio to SASRec at the same length (CPU time, then wall time)."""
    lengths = sorted({r["length"] for r in rows})
    by = {(r["model"], r["length"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    head = "| model | mode | " + " | ".join(f"L={n}: CPU s (x SASRec) | wall s (x SASRec) | peak RSS (GB)"
                                           for n in lengths) + " |"
    lines = [head, "|---|---|" + "---:|---:|---:|" * len(lengths)]
    for model in models:
        modes = sorted({by[(model, n)]["train_mode"] for n in lengths if (model, n) in by})
        cells = []
        for n in lengths:
            r, base = by.get((model, n)), by.get(("SASRec", n))
            if r is None:
                cells.append("- | - | -")
                continue
            cpu, wall = r["cpu_seconds_per_epoch"], r["seconds_per_epoch"]
            cpu_x = f" ({cpu / base['cpu_seconds_per_epoch']:.2f}x)" if base else ""
            wall_x = f" ({wall / base['seconds_per_epoch']:.2f}x)" if base else ""
            cells.append(f"{cpu:.1f}{cpu_x} | {wall:.1f}{wall_x} | {r['peak_memory_mb'] / 1024:.2f}")
        lines.append(f"| {model} | {', '.join(modes)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict], runs: list[dict]) -> str:
    """SS4Rec against SASRec per length: the ratio of the medians, and each round's own ratio."""
    by = {(r["model"], r["length"]): r for r in rows}
    per_round = {(r["model"], r["length"], r["round"]): r["cpu_seconds_per_epoch"] for r in runs}
    out = []
    for length in sorted({r["length"] for r in rows}):
        if ("SS4Rec", length) in by and ("SASRec", length) in by:
            ss, sas = by[("SS4Rec", length)], by[("SASRec", length)]
            cpu = ss["cpu_seconds_per_epoch"] / sas["cpu_seconds_per_epoch"]
            wall = ss["seconds_per_epoch"] / sas["seconds_per_epoch"]
            rounds = sorted({r["round"] for r in runs})
            each = ", ".join(f"{per_round[('SS4Rec', length, i)] / per_round[('SASRec', length, i)]:.2f}"
                             for i in rounds if ("SS4Rec", length, i) in per_round and ("SASRec", length, i) in per_round)
            ok = "yes" if cpu <= 1.0 else "NO"
            out.append(f"- length {length}: SS4Rec {ss['cpu_seconds_per_epoch']:.1f} vs SASRec "
                       f"{sas['cpu_seconds_per_epoch']:.1f} CPU s per epoch, medians of {len(rounds)} rounds "
                       f"({cpu:.2f}x; wall {wall:.2f}x; each round {each}); SS4Rec <= SASRec: {ok}")
    return "\n".join(out)


def block_table(rows: list[dict], batch: int) -> str:
    base = {r["length"]: r["seconds"] for r in rows}
    lines = [f"| length | block fwd+bwd (s), batch {batch} | x time at 200 |", "|---:|---:|---:|"]
    for r in rows:
        ratio = r["seconds"] / base[200] if 200 in base else float("nan")
        lines.append(f"| {r['length']} | {r['seconds']:.4f} | {ratio:.2f} |")
    if 200 in base and 800 in base:
        ratio = base[800] / base[200]
        lines.append(f"\ntime(800) / time(200) = {ratio:.2f} (target <= 4.5: {'yes' if ratio <= 4.5 else 'NO'})")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        job = json.loads(args.worker)
        result = block_worker(args) if job["kind"] == "block" else train_worker(job["model"], job["length"], args)
        print(json.dumps(result))
        return 0

    print(f"# bench_train: device {args.device}, {args.threads} thread(s), train_mode {args.train_mode}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs", flush=True)
    runs = []  # every subprocess's row; rounds interleave the models so a slow spell hits them all
    for round_index in range(args.repeats):
        order = args.models if round_index % 2 == 0 else args.models[::-1]  # no model always first
        for length in args.lengths:
            for model in order:
                start = time.time()
                row = _run_worker({"kind": "train", "model": model, "length": length}, args)
                runs.append({**row, "round": round_index})
                print(f"#   round {round_index + 1}/{args.repeats}: {model} @ {length} ({row['train_mode']}): "
                      f"{row['seconds_per_epoch']:.1f} s/epoch, CPU {row['cpu_seconds_per_epoch']:.1f} s "
                      f"(subprocess {time.time() - start:.0f} s, load {os.getloadavg()[0]:.2f})", flush=True)
    rows = median_rows(runs)
    print("\n" + ratio_table(rows) + "\n\n" + train_table(rows) + "\n\n" + verdict(rows, runs), flush=True)
    block_rows = []
    if not args.skip_block:
        block_rows = _run_worker({"kind": "block"}, args)
        print("\n" + block_table(block_rows, args.block_batch), flush=True)
    print(f"\n# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"train": rows, "runs": runs, "block": block_rows, "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
