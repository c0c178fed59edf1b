"""Time and peak memory of the data-drift part of ``ss4rec drift`` on large synthetic files.

    $ python scripts/bench_drift.py                      # 20M past + 12M future rows
    $ python scripts/bench_drift.py --past-rows 2000000 --future-rows 1200000   # quick look

Writes ML-32M-like ``.inter`` files (``user_id:token item_id:token rating:float
timestamp:float``; 200,000 users, 87,585 items with Zipf-like popularity, half-star
ratings, rows sorted by time; the future's popularity ranking partly reshuffled so there
is drift to find) into a temporary folder, then runs
:func:`ss4rec.drift.data_drift.compute_data_drift` in a child process and prints a
Markdown table: rows, wall time, rows/s and the child's peak RSS
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``, including the Python/numpy/pandas imports).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

N_USERS = 200_000
N_ITEMS = 87_585
CHUNK = 1_000_000
HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write_inter(path: Path, rows: int, t_start: float, t_end: float, item_order: np.ndarray, seed: int) -> None:
    """``rows`` interactions spread evenly over [t_start, t_end), written in time order."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, N_ITEMS + 1)
    popularity = 1.0 / ranks ** 0.9
    popularity /= popularity.sum()
    with open(path, "w", encoding="utf-8") as out:
        out.write(HEADER)
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            lo = t_start + (t_end - t_start) * start / rows
            hi = t_start + (t_end - t_start) * (start + n) / rows
            frame = pd.DataFrame({
                "u": rng.integers(1, N_USERS + 1, n),
                "i": item_order[rng.choice(N_ITEMS, n, p=popularity)],
                "r": rng.integers(1, 11, n) / 2,
                "t": np.sort(rng.integers(int(lo), int(hi), n)),
            })
            frame.to_csv(out, sep="\t", header=False, index=False, lineterminator="\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--past-rows", type=int, default=20_000_000)
    parser.add_argument("--future-rows", type=int, default=12_000_000)
    parser.add_argument("--window", default="quarter")
    parser.add_argument("--workdir", help="where to write the files (default: a temporary folder, removed after)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        past, future = folder / "synth-past.inter", folder / "synth-future.inter"
        rng = np.random.default_rng(0)
        item_ids = rng.permutation(N_ITEMS) + 1
        shuffled = item_ids.copy()
        head = slice(0, 2_000)  # the 2,000 most popular items swap places in the future
        shuffled[head] = rng.permutation(shuffled[head])
        started = time.time()
        write_inter(past, args.past_rows, 8.0e8, 1.43e9, item_ids, seed=1)  # 1995 .. 2015
        write_inter(future, args.future_rows, 1.43e9, 1.70e9, shuffled, seed=2)  # 2015 .. 2023
        generate_s = time.time() - started
        print(f"generated {args.past_rows:,} + {args.future_rows:,} rows "
              f"({(past.stat().st_size + future.stat().st_size) / 1e6:,.0f} MB) in {generate_s:.1f} s", flush=True)

        child = (
            "import json, sys, time\n"
            "from ss4rec.drift.data_drift import compute_data_drift\n"
            "t = time.time()\n"
            f"r = compute_data_drift({str(past)!r}, {str(future)!r}, window={args.window!r})\n"
            "print(json.dumps({'seconds': time.time() - t, 'windows': len(r['windows']),\n"
            "  'overall': r['overall']['drifting'], 'gap_method': r['gap_method']}))\n"
        )
        started = time.time()
        done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
        wall = time.time() - started
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result = eval(done.stdout.strip().splitlines()[-1].replace("true", "True").replace("false", "False"))
        total = args.past_rows + args.future_rows
        print(f"\nwindow: {args.window} ({result['windows']} future windows); gaps: {result['gap_method']}; "
              f"overall drift on: {', '.join(result['overall']) or 'nothing'}\n")
        print("| past rows | future rows | wall time (child) | drift computation | rows/s | peak RSS |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(f"| {args.past_rows:,} | {args.future_rows:,} | {wall:.1f} s | {result['seconds']:.1f} s | "
              f"{total / result['seconds']:,.0f} | {peak_mib:,.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
