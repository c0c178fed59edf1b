"""Benchmark DDP on CPU: seconds per training epoch with 1 and with 2 processes (gloo).

Usage::

    python scripts/bench_ddp.py                          # ml-100k-quick, 2 epochs, 1 and 2 ranks
    python scripts/bench_ddp.py --ranks 1 2 4 --epochs 3 --set MAX_ITEM_LIST_LENGTH=200

Each row is one real ``ss4rec train --device cpu --nproc N`` run (one torch thread per
process) in a subprocess, on the bundled ML-100K with the packaged ``ml-100k-quick`` config
(SS4Rec, sequence mode, L=50, batch 2048 targets, split over the ranks). Columns:

* epoch (wall): mean of RecBole's "epoch K training [time: ...]" over the epochs (rank 0's
  clock; the ranks wait for each other at every gradient all-reduce);
* run (wall) and run (CPU): the whole command, user + system time of every process
  (start-up, data loading in every rank, training, rank 0's evaluations);
* peak RSS: each rank's resident-set high-water mark (``results.json``'s
  ``peak_host_memory_gb``); every rank holds the whole dataset.

Prints a markdown table and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCH_TIME = re.compile(r"epoch \d+ training \[time: ([\d.]+)s")


def run_once(ranks: int, epochs: int, config: str, sets: list[str], folder: Path) -> dict:
    out = folder / f"ranks-{ranks}"
    command = [sys.executable, "-m", "ss4rec", "train", "--config", config, "--device", "cpu",
               "--threads", "1", "--nproc", str(ranks), "--output", str(out),
               "--set", f"epochs={epochs}", "--set", "stopping_step=100"]
    for pair in sets:
        command += ["--set", pair]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"ranks={ranks} failed:\n{proc.stderr[-3000:]}")
    epochs_s = [float(t) for t in EPOCH_TIME.findall((out / "train.log").read_text())]
    result = json.loads((out / "results.json").read_text())
    return {
        "ranks": ranks,
        "epoch_wall": sum(epochs_s) / len(epochs_s),
        "run_wall": wall,
        "run_cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_gb": result["peak_host_memory_gb"],  # per rank, as each process measured it
        "batches_per_epoch": result["training"]["optimizer_steps"] // max(result["epochs_run"], 1),
        "ndcg@10": result["test"].get("ndcg@10"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--config", default="ml-100k-quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as folder:
        for ranks in args.ranks:
            rows.append(run_once(ranks, args.epochs, args.config, args.set, Path(folder)))
            print(f"  done: {ranks} rank(s)", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("| processes | batches / epoch (each rank) | epoch (wall) | run (wall) | run (CPU, all processes) "
          "| peak RSS by rank | test NDCG@10 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ranks']} | {r['batches_per_epoch']} | {r['epoch_wall']:.1f} s | {r['run_wall']:.1f} s "
              f"| {r['run_cpu']:.1f} s | {' / '.join(f'{x:.2f}' for x in r['peak_rss_gb'])} GB "
              f"| {r['ndcg@10']:.4f} |")


if __name__ == "__main__":
    main()
