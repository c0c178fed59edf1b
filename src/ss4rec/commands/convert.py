"""``ss4rec convert SRC OUTDIR [--name NAME]``: a MovieLens release to RecBole atomic files.

    $ ss4rec convert ~/Downloads/ml-1m.zip data/
    wrote data/ml-1m/ml-1m.inter: 1,000,209 ratings, 6,040 users, 3,706 items, ...
    $ ss4rec train --dataset ml-1m --data-path data/

The work is done by :func:`ss4rec.data.movielens.convert_movielens`.
"""

from __future__ import annotations

import argparse
import sys


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a MovieLens folder or .zip (100K, 1M, 10M, 20M, 25M, 32M, latest) to RecBole atomic files",
        description="Convert a GroupLens MovieLens release to RecBole atomic files in OUTDIR/NAME/. "
        "The layout is detected from the files; nothing is written unless the whole input is valid.",
    )
    parser.add_argument("src", metavar="SRC", help="MovieLens folder or .zip as downloaded from GroupLens")
    parser.add_argument("outdir", metavar="OUTDIR", help="data folder; the dataset goes to OUTDIR/NAME/")
    parser.add_argument("--name", default=None,
                        help="dataset name (default: detected, e.g. ml-1m, ml-25m; ml-csv if unknown)")
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ss4rec.data.movielens import _stderr_progress, convert_movielens

    stats = convert_movielens(args.src, args.outdir, name=args.name, progress=_stderr_progress)
    name = stats["name"]
    time_range = stats["time_range"]
    print(f"wrote {args.outdir}/{name}/{name}.inter: {stats['rows']:,} ratings, {stats['users']:,} users, "
          f"{stats['items']:,} items, {time_range['min_utc']} .. {time_range['max_utc']}")
    for path in stats["files"]:
        print(f"  {path}")
    if name == "ml-100k":
        print("note: RecBole always loads its own bundled copy for a dataset named 'ml-100k', "
              "whatever the data path; pass --name (e.g. --name ml-100k-local) to use this one",
              file=sys.stderr)
    return 0
