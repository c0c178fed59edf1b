"""Data preparation and training throughput of train_mode prefix vs sequence, side by side.

Generates MovieLens-shaped *synthetic* logs (heavy-tailed user activity with at least 20
and on average ~144 ratings, Zipf-popular items, bursty increasing timestamps), then
measures, each in its own process:

* ``prep``: loading plus preparation (dataset, splits, dataloaders) -- wall and CPU
  seconds, CPU-µs per row, peak RSS;
* ``scan``: the data checks' format scan of the ``.inter`` file (``--modes -``);
* ``train``: a training epoch of each mode end to end (the loader building batches,
  forward, backward, Adam): seconds and targets/s; ``--batches N`` times only the first N
  batches and scales to the epoch (the table marks it ``whole_epoch: False``).

    python scripts/bench_data.py prep --rows 2000000 --max-len 200
    python scripts/bench_data.py scan --rows 4000000 --modes -
    python scripts/bench_data.py all --rows 200000 --max-len 50 --batches 5   # both, one table each
    python scripts/bench_data.py train --rows 1000000 --items 3400 --max-len 200 --modes sequence
    python scripts/bench_data.py train --dataset ml-100k --max-len 50 --batch-size 2048  # bundled real data

Prints a markdown table; ``--json FILE`` also writes the rows. Threads are explicit
(``--threads``, default 1): torch's default oversubscribes a small shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# ---- synthetic MovieLens-shaped logs ----

def synthetic_log(rows: int, items: int, seed: int = 0):
    """(user, item, timestamp) arrays of about ``rows`` interactions, sorted by user then time."""
    rng = np.random.default_rng(seed)
    # Users: 20 + a heavy (Pareto, shape 2) tail: mean ~144 and median ~70 ratings, as ML-20M.
    tail = rng.pareto(2.0, size=max(1, rows // 144) * 2)
    tail = tail / tail.mean() * 124
    counts = np.minimum(20 + tail, 10_000).astype(np.int64)
    counts = counts[: np.searchsorted(np.cumsum(counts), rows) + 1]
    counts[-1] -= max(0, counts.sum() - rows)
    counts = counts[counts >= 20] if len(counts) > 1 else counts
    users = np.repeat(np.arange(1, len(counts) + 1), counts)
    # Items: Zipf-like popularity (exponent ~1), ids shuffled.
    weights = 1.0 / np.arange(1, items + 1)
    item_ids = rng.permutation(items) + 1
    picked = item_ids[rng.choice(items, size=len(users), p=weights / weights.sum())]
    # Time: each user starts somewhere in 3 years; bursts of seconds-to-minutes gaps
    # (many 0 s, as in MovieLens) between sessions days apart.
    start = rng.uniform(9.0e8, 9.0e8 + 3 * 365 * 86400, size=len(counts))
    in_session = rng.random(len(users)) < 0.8
    gaps = np.where(in_session, rng.exponential(40.0, len(users)) * (rng.random(len(users)) < 0.6),
                    rng.exponential(5 * 86400.0, len(users)))
    first = np.r_[0, np.cumsum(counts)[:-1]]
    gaps[first] = 0
    cum = np.cumsum(gaps)
    times = np.floor(np.repeat(start, counts) + cum - np.repeat(cum[first], counts))
    return users, picked, times


def write_atomic(folder: Path, name: str, rows: int, items: int, seed: int = 0) -> Path:
    """``folder/name/name.inter`` in RecBole's atomic format (tab-separated, typed header)."""
    target = folder / name / f"{name}.inter"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    users, picked, times = synthetic_log(rows, items, seed)
    ratings = np.random.default_rng(seed + 1).integers(1, 6, size=len(users))
    tmp = target.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for lo in range(0, len(users), 1_000_000):
            hi = lo + 1_000_000
            block = np.column_stack([users[lo:hi], picked[lo:hi], ratings[lo:hi], times[lo:hi].astype(np.int64)])
            np.savetxt(f, block, fmt="%d", delimiter="\t")
    os.replace(tmp, target)
    return target


# ---- one measurement, in this process ----

def _settings(args, mode: str) -> dict:
    settings = {"MAX_ITEM_LIST_LENGTH": args.max_len, "train_mode": mode,
                "train_batch_size": args.batch_size, "show_progress": False,
                "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
                "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}}
    if args.data_path:
        settings["data_path"] = args.data_path
    return settings


def _recbole_dataset(config):
    """RecBole 1.2.1's own sequential data path ([N, L] prefixes, python-engine loading), for reference."""
    from recbole.data.dataset import Dataset, SequentialDataset

    from ss4rec.data.loaders import dataset_class

    class RecBoleReference(dataset_class(config)):
        _load_feat = Dataset._load_feat
        data_augmentation = SequentialDataset.data_augmentation
        build = SequentialDataset.build
        __getitem__ = Dataset.__getitem__

    return RecBoleReference(config)


def _prepare(args, mode: str):
    import ss4rec  # noqa: F401  (registers SS4Rec with RecBole)
    from ss4rec.data.loaders import create_dataset, prepare_data
    from ss4rec.pipeline.settings import build_config

    recbole = mode == "recbole"  # RecBole's own prefix examples
    config, model_class = build_config(args.model, args.dataset, [],
                                       _settings(args, "prefix" if recbole else mode), device="cpu")
    dataset = _recbole_dataset(config) if recbole else create_dataset(config)
    return config, model_class, dataset, prepare_data(config, dataset)


def measure_prep(args, mode: str) -> dict:
    start, cpu = time.time(), time.process_time()
    config, _, dataset, (train, valid, test) = _prepare(args, mode)
    wall, cpu = time.time() - start, time.process_time() - cpu
    rows = len(dataset.flat_feat) if getattr(dataset, "flat_feat", None) is not None else dataset.inter_num + dataset.user_num - 1
    return {"what": "prep", "model": args.model, "mode": mode, "rows": rows, "max_len": args.max_len,
            "wall_s": wall, "cpu_s": cpu, "cpu_us_per_row": cpu / rows * 1e6,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "train_batches": len(train), "valid_users": len(valid._dataset)}


def measure_train(args, mode: str) -> dict:
    """Training end to end (the loader building batches, model, Adam): a whole epoch, or its
    first ``--batches`` batches (then the epoch time is scaled up from them, and marked so)."""
    import functools

    import torch

    from ss4rec.data.sequences import TARGET_MASK
    from ss4rec.models.losses import window_loss

    torch.manual_seed(0)
    config, model_class, _, (train, _, _) = _prepare(args, mode)
    model = model_class(config, train._dataset)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = functools.partial(window_loss, model) if mode == "sequence" else model.calculate_loss
    epoch_targets = train.targets if mode == "sequence" else len(train._dataset)
    limit = args.batches or len(train)
    done = targets = 0
    t0, c0 = time.time(), time.process_time()
    for batch in train:
        loss = loss_fn(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += 1
        targets += int(batch[TARGET_MASK].sum()) if mode == "sequence" else len(batch)
        if done >= limit:
            break
    wall, cpu = time.time() - t0, time.process_time() - c0
    scale = epoch_targets / targets
    return {"what": "train", "model": args.model, "mode": mode, "max_len": args.max_len,
            "batches": done, "epoch_batches": len(train), "epoch_targets": epoch_targets,
            "wall_s": wall, "cpu_s": cpu, "targets_per_s": targets / wall,
            "epoch_s": wall * scale, "epoch_cpu_s": cpu * scale,
            "whole_epoch": done == len(train), "threads": torch.get_num_threads()}


def measure_scan(args, mode: str) -> dict:
    """The format scan of the data checks (ss4rec.data.reading.scan_atomic_file): one streamed
    pass checking encoding, control characters, the header and every line's field count."""
    from ss4rec.data.reading import scan_atomic_file

    path = Path(args.data_path) / args.dataset / f"{args.dataset}.inter"
    start, cpu = time.time(), time.process_time()
    _, rows = scan_atomic_file(path)
    wall, cpu = time.time() - start, time.process_time() - cpu
    return {"what": "scan", "mode": "-", "rows": rows, "mib": path.stat().st_size / 2**20, "wall_s": wall,
            "cpu_s": cpu, "cpu_us_per_row": cpu / rows * 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10}


MEASURES = {"prep": measure_prep, "train": measure_train, "scan": measure_scan}


# ---- driver: one subprocess per (measure, mode) ----

def _child(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    row = MEASURES[args.what](args, args.modes)
    print("RESULT " + json.dumps(row), flush=True)
    return 0


def _table(rows) -> str:
    if not rows:
        return "(no results)"
    keys = [k for k in rows[0] if k not in ("what",)]
    for r in rows[1:]:
        keys += [k for k in r if k not in keys and k != "what"]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=[*sorted(MEASURES), "all"],
                        help="prep, scan, train, or all (prep then train)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic log size (ignored with --dataset)")
    parser.add_argument("--items", type=int, default=27_000, help="synthetic catalogue size")
    parser.add_argument("--dataset", default=None, help="a real dataset instead (ml-100k is bundled)")
    parser.add_argument("--data-path", default=None, help="folder for synthetic logs (default: a temp dir)")
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--model", default="SS4Rec")
    parser.add_argument("--modes", default="prefix,sequence",
                        help="prefix, sequence, and (prep only) recbole: RecBole's own data path, for reference")
    parser.add_argument("--batch-size", type=int, default=1024, help="train_batch_size (targets)")
    parser.add_argument("--batches", type=int, default=0,
                        help="train: time only the first N batches and scale to an epoch (default: the whole epoch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    if args.dataset is None:
        folder = Path(args.data_path or tempfile.mkdtemp(prefix="ss4rec-bench-"))
        name = f"synth-{args.rows}-{args.items}"
        t0 = time.time()
        path = write_atomic(folder, name, args.rows, args.items)
        print(f"data: {path} ({path.stat().st_size / 2**20:.0f} MiB, synthetic, written/found in "
              f"{time.time() - t0:.0f} s)", flush=True)
        args.dataset, args.data_path = name, str(folder)
    rows = []
    jobs = [(what, mode) for what in (["prep", "train"] if args.what == "all" else [args.what])
            for mode in args.modes.split(",") if not (what == "train" and mode == "recbole")]
    for what, mode in jobs:
        command = [sys.executable, __file__, what, "--child", "--modes", mode, "--dataset", args.dataset,
                   "--max-len", str(args.max_len), "--model", args.model, "--batch-size", str(args.batch_size),
                   "--batches", str(args.batches), "--threads", str(args.threads)]
        if args.data_path:
            command += ["--data-path", args.data_path]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        results = [line[len("RESULT "):] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not results:
            print(f"{what} {mode}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(results[-1]))
        print(f"{what} {mode}: done", flush=True)
    print(f"\n{args.what}, {args.model}, {args.dataset}, L={args.max_len}, {args.threads} thread(s), "
          f"load {os.getloadavg()[0]:.2f}\n")
    for what in sorted({row["what"] for row in rows}):
        group = [row for row in rows if row["what"] == what]
        print(f"\n{what}\n\n{_table(group)}")
        by_mode = {row["mode"]: row for row in group}
        if what == "train" and {"prefix", "sequence"} <= set(by_mode):
            print(f"\nprefix / sequence epoch time: "
                  f"{by_mode['prefix']['epoch_s'] / by_mode['sequence']['epoch_s']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
