"""Time and peak memory of ``ss4rec convert`` on synthetic inputs of the real files' size.

    $ python scripts/bench_convert.py                    # 32,000,204 ratings (ML-32M's count)
    $ python scripts/bench_convert.py --rows 2000000     # a quick look
    $ python scripts/bench_convert.py --format kuairec   # 12,530,806 rows (KuaiRec's big matrix)

``movielens``: ``ratings.csv`` + ``movies.csv`` (same header, id ranges and ~0.5-star
ratings as ML-32M, sorted by user then time like the real file). ``kuairec``:
``big_matrix.csv`` with KuaiRec 2.0's eight columns, 7,176 users x 10,728 videos, float
timestamps with milliseconds. Both are generated in a temporary folder; the conversion runs
in a child process and the script prints a table: rows, input size, wall time, rows/s and
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
KUAIREC_BIG_ROWS = 12_530_806
KUAIREC_BIG_USERS = 7_176
KUAIREC_BIG_ITEMS = 10_728


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


def write_kuairec(folder: Path, rows: int, seed: int = 0, chunk: int = 1_000_000) -> Path:
    """big_matrix.csv with ``rows`` rows shaped like KuaiRec 2.0's (sorted by user then time)."""
    rng = np.random.default_rng(seed)
    path = folder / "big_matrix.csv"
    with open(path, "w", newline="\n") as out:
        out.write("user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio\n")
        written = 0
        while written < rows:
            n = min(chunk, rows - written)
            first_user = written * KUAIREC_BIG_USERS // rows
            last_user = (written + n) * KUAIREC_BIG_USERS // rows
            stamp = np.round(np.sort(rng.uniform(1_593_878_903, 1_599_000_000, n)), 3)
            play, duration = rng.integers(100, 60_000, n), rng.integers(3_000, 60_000, n)
            when = pd.to_datetime(stamp, unit="s")
            frame = pd.DataFrame({
                "user_id": np.sort(rng.integers(first_user, max(last_user, first_user + 1), n)),
                "video_id": rng.integers(0, KUAIREC_BIG_ITEMS, n),
                "play_duration": play, "video_duration": duration,
                "time": when.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3], "date": when.strftime("%Y%m%d"),
                "timestamp": stamp, "watch_ratio": play / duration,
            })
            frame.to_csv(out, header=False, index=False, lineterminator="\n")
            written += n
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=("movielens", "kuairec"), default="movielens")
    parser.add_argument("--rows", type=int, default=None,
                        help=f"rows to generate (default: {ML32M_ROWS:,} for movielens, {KUAIREC_BIG_ROWS:,} for kuairec)")
    parser.add_argument("--workdir", default=None, help="where to generate (default: a temp dir, removed after)")
    parser.add_argument("--launcher", default=f"{shlex.quote(sys.executable)} -m ss4rec",
                        help="command that runs the ss4rec CLI (default: this Python's -m ss4rec)")
    args = parser.parse_args()
    if args.rows is None:
        args.rows = ML32M_ROWS if args.format == "movielens" else KUAIREC_BIG_ROWS

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        started = time.perf_counter()
        ratings = write_synthetic(src, args.rows) if args.format == "movielens" else write_kuairec(src, args.rows)
        generate_s = time.perf_counter() - started
        size_mb = ratings.stat().st_size / 1e6
        print(f"generated {args.rows:,} rows ({size_mb:,.0f} MB) in {generate_s:.0f} s", file=sys.stderr)

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
    print(f"| rows | {ratings.name} | .inter | wall time | rows/s | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.rows:,} | {size_mb:,.0f} MB | {out_mb:,.0f} MB | {wall_s:,.1f} s | "
          f"{args.rows / wall_s:,.0f} | {peak_mb:,.0f} MiB |")


if __name__ == "__main__":
    main()
