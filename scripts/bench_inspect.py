"""Time of ``ss4rec inspect``'s cheap report (read + facts + figure) on MovieLens-shaped logs.

    $ python scripts/bench_inspect.py --rows 1000000 10000000 --workdir /tmp/bench-inspect

The logs are scripts/bench_data.py's synthetic ones (written once into WORKDIR, reused).
Prints one line per size: seconds to read the file, to compute the report, to draw the
figure, and the peak RSS so far.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import write_atomic  # noqa: E402

from ss4rec.data.time_profile import read_time_log  # noqa: E402
from ss4rec.evaluation.inspection import gap_figure, inspect_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-inspect"))
    args = parser.parse_args()
    for rows in args.rows:
        path = write_atomic(args.workdir, f"synthetic-{rows}", rows, args.items)
        t0 = time.perf_counter()
        log = read_time_log(path)
        t1 = time.perf_counter()
        report = inspect_report(log)
        t2 = time.perf_counter()
        gap_figure(log, report).savefig(args.workdir / f"gaps-{rows}.png", dpi=110)
        t3 = time.perf_counter()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{len(log):>11,} rows {report['users']:>8,} users: read {t1 - t0:6.1f} s, report {t2 - t1:5.1f} s, "
              f"figure {t3 - t2:5.1f} s; peak RSS {peak_mb:,.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
