"""Time and peak memory of ``ss4rec convert`` on a synthetic ML-32M-sized ratings.csv.

    $ python scripts/bench_convert.py                 # 32,000,204 ratings (ML-32M's count)
    $ python scripts/bench_convert.py --rows 2000000  # a quick look

Generates ``ratings.csv`` + ``movies.csv`` in a temporary folder (same header, id ranges
and ~0.5-star ratings as ML-32M, sorted by user then time like the real file), runs the
conversion in a child process and prints a table: rows, input size, wall time, rows/s and
the child's peak RSS (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``). Not run in CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ML32M_ROWS = 32_000_204
ML32M_USERS = 200_948
ML32M_ITEMS = 87_585


def write_synthetic(folder: Path, rows: int, seed: int = 0, chunk: int = 2_000_000) -> Path:
    """ratings.csv with ``rows`` ratings sorted by (user, timestamp), and a matching movies.csv."""
    rng = np.random.default_rng(seed)
    ratings_path = folder / "ratings.csv"
    users_total = max(1, int(ML32M_USERS * rows / ML32M_ROWS))
    with open(ratings_path, "w", newline="\n") as out:
        out.write("userId,movieId,rating,timestamp\n")
        written = 0
        while written < rows:
            n = min(chunk, rows - written)
            first_user = 1 + written * users_total // rows
            last_user = 1 + (written + n) * users_total // rows
            user = np.sort(rng.integers(first_user, max(last_user, first_user + 1), n))
            frame = pd.DataFrame({
                "userId": user,
                "movieId": 1 + 3 * rng.integers(0, ML32M_ITEMS, n),  # sparse ids like the real file
                "rating": rng.integers(1, 11, n) / 2,
                "timestamp": np.sort(rng.integers(789_652_009, 1_697_164_147, n)),
            })
            frame.to_csv(out, header=False, index=False, lineterminator="\n")
            written += n
    titles = [f'"Movie {i}, The ({1900 + i % 120})"' for i in range(1, ML32M_ITEMS * 3, 3)]
    with open(folder / "movies.csv", "w", newline="\n") as out:
        out.write("movieId,title,genres\n")
        for i, title in zip(range(1, ML32M_ITEMS * 3, 3), titles):
            out.write(f"{i},{title},Drama|Comedy\n")
    return ratings_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=ML32M_ROWS)
    parser.add_argument("--workdir", default=None, help="where to generate (default: a temp dir, removed after)")
    parser.add_argument("--launcher", default=f"{shlex.quote(sys.executable)} -m ss4rec",
                        help="command that runs the ss4rec CLI (default: this Python's -m ss4rec)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        started = time.perf_counter()
        ratings = write_synthetic(src, args.rows)
        generate_s = time.perf_counter() - started
        size_mb = ratings.stat().st_size / 1e6
        print(f"generated {args.rows:,} ratings ({size_mb:,.0f} MB) in {generate_s:.0f} s", file=sys.stderr)

        command = shlex.split(args.launcher) + ["convert", str(src), str(tmp / "out"), "--name", "bench"]
        started = time.perf_counter()
        result = subprocess.run(command)
        wall_s = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"conversion failed with exit code {result.returncode}: {shlex.join(command)}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        out_mb = (tmp / "out" / "bench" / "bench.inter").stat().st_size / 1e6

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"pandas {pd.__version__}")
    print("| rows | ratings.csv | .inter | wall time | rows/s | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rows:,} | {size_mb:,.0f} MB | {out_mb:,.0f} MB | {wall_s:,.1f} s | "
          f"{args.rows / wall_s:,.0f} | {peak_mb:,.0f} MiB |")


if __name__ == "__main__":
    main()
