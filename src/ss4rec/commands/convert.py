"""``ss4rec convert SRC OUTDIR [--name NAME]``: a MovieLens release to RecBole atomic files.

    $ ss4rec convert ~/Downloads/ml-1m.zip data/
    wrote data/ml-1m/ml-1m.inter: 1,000,209 ratings, 6,040 users, 3,706 items, ...
    $ ss4rec train --dataset ml-1m --data-path data/
    $ ss4rec convert https://files.grouplens.org/datasets/movielens/ml-1m.zip data/ \
          --md5 c4d9eecfca2ab87c1945afe126590906      # download (cached, verified), then convert

The work is done by :func:`ss4rec.data.movielens.convert_movielens`; a URL as SRC is first
fetched by :func:`ss4rec.data.download.fetch` (progress on stderr, resumable, cached under
``--cache-dir`` / ``$SS4REC_CACHE``, checked against ``--sha256`` / ``--md5`` when given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a MovieLens folder or .zip (100K, 1M, 10M, 20M, 25M, 32M, latest) to RecBole atomic files",
        description="Convert a GroupLens MovieLens release to RecBole atomic files in OUTDIR/NAME/. "
        "The layout is detected from the files; nothing is written unless the whole input is valid.",
    )
    parser.add_argument("src", metavar="SRC",
                        help="MovieLens folder or .zip as downloaded from GroupLens, or its http(s) URL")
    parser.add_argument("outdir", metavar="OUTDIR", help="data folder; the dataset goes to OUTDIR/NAME/")
    parser.add_argument("--name", default=None,
                        help="dataset name (default: detected, e.g. ml-1m, ml-25m; ml-csv if unknown)")
    parser.add_argument("--sha256", default=None, help="expected SHA-256 of a downloaded SRC")
    parser.add_argument("--md5", default=None, help="expected MD5 of a downloaded SRC (GroupLens publishes these)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="download cache for a URL SRC (default: $SS4REC_CACHE or ~/.cache/ss4rec/downloads)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset OUTDIR/NAME (by default it is refused and kept)")
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ss4rec.data.download import is_url, resolve
    from ss4rec.data.movielens import _stderr_progress, convert_movielens
    from ss4rec.errors import UserError

    if not is_url(args.src) and (args.sha256 or args.md5):
        raise UserError("--sha256/--md5 check a downloaded file: give SRC as an http(s) URL, "
                        "or drop the checksum for a local path")
    if args.name and not args.overwrite:  # before any download or conversion work
        from ss4rec.data.atomic import existing_dataset_files, refusal_to_replace

        existing = existing_dataset_files(Path(args.outdir) / args.name, args.name)
        if existing:
            raise UserError(refusal_to_replace(Path(args.outdir) / args.name, existing))
    src = resolve(args.src, cache_dir=args.cache_dir, sha256=args.sha256, md5=args.md5)
    stats = convert_movielens(src, args.outdir, name=args.name, progress=_stderr_progress,
                              overwrite=args.overwrite)
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
