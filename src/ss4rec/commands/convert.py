"""``ss4rec convert SRC OUTDIR [--name NAME]``: a public dataset download to RecBole atomic files.

    $ ss4rec convert ~/Downloads/ml-1m.zip data/
    wrote data/ml-1m/ml-1m.inter: 1,000,209 ratings, 6,040 users, 3,706 items, ...
    $ ss4rec train --dataset ml-1m --data-path data/ --config paper-ml-1m
    $ ss4rec convert ~/Downloads/KuaiRec.zip data/ --name kuairec-small
    $ ss4rec convert https://files.grouplens.org/datasets/movielens/ml-1m.zip data/ \
          --md5 c4d9eecfca2ab87c1945afe126590906      # download (cached, verified), then convert

The format is read from the files (:func:`ss4rec.data.formats.detect_format`); the work is
done by the format's module in :mod:`ss4rec.data` (``movielens``, ``kuairec``, ``amazon``,
``recbole_atomic``). A URL as SRC is first fetched by :func:`ss4rec.data.download.fetch`
(progress on stderr, resumable, cached under ``--cache-dir`` / ``$SS4REC_CACHE``, checked
against ``--sha256`` / ``--md5`` when given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert MovieLens, KuaiRec 2.0, Amazon reviews or RecBole atomic files (file, folder, zip "
             "or URL) to RecBole atomic files",
        description="Convert a dataset download to RecBole atomic files in OUTDIR/NAME/: MovieLens (100K to "
        "32M), KuaiRec 2.0 (big_matrix.csv, small_matrix.csv), Amazon reviews (2014/2018 JSON lines, "
        "ratings-only CSVs, 2023 JSONL and CSV; gzip or not) or RecBole atomic files (checked and copied). "
        "The format is detected from the files; nothing is written unless the whole input is valid.",
    )
    parser.add_argument("src", metavar="SRC",
                        help="the download as it comes (file, .gz, folder or .zip), or its http(s) URL")
    parser.add_argument("outdir", metavar="OUTDIR", help="data folder; the dataset goes to OUTDIR/NAME/")
    parser.add_argument("--name", default=None,
                        help="dataset name (default: from the files, e.g. ml-1m, kuairec-big, amazon-sports); "
                             "for a KuaiRec zip or folder a name with 'small' or 'big' picks the matrix")
    parser.add_argument("--min-watch-ratio", type=float, default=None, metavar="X",
                        help="KuaiRec only: keep rows with watch_ratio >= X (default: every row)")
    parser.add_argument("--sha256", default=None, help="expected SHA-256 of a downloaded SRC")
    parser.add_argument("--md5", default=None, help="expected MD5 of a downloaded SRC (GroupLens publishes these)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="download cache for a URL SRC (default: $SS4REC_CACHE or ~/.cache/ss4rec/downloads)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset OUTDIR/NAME (by default it is refused and kept)")
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ss4rec.data.download import is_url, resolve
    from ss4rec.data.formats import CONVERTERS, detect_format
    from ss4rec.data.interactions import describe_dropped, stderr_progress
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
    kind = detect_format(src)
    options = {}
    if args.min_watch_ratio is not None:
        if kind != "kuairec":
            raise UserError(f"--min-watch-ratio applies to KuaiRec only; {args.src} is {kind} data: drop it")
        options["min_watch_ratio"] = args.min_watch_ratio
    stats = CONVERTERS[kind](src, args.outdir, name=args.name, progress=stderr_progress,
                             overwrite=args.overwrite, **options)

    name = stats["name"]
    what = "ratings" if kind == "movielens" else "interactions"
    time_range = stats["time_range"]
    span = f", {time_range['min_utc']} .. {time_range['max_utc']}" if time_range.get("min_utc") else ""
    print(f"wrote {args.outdir}/{name}/{name}.inter: {stats['rows']:,} {what}, {stats['users']:,} users, "
          f"{stats['items']:,} items{span}")
    for path in stats["files"]:
        print(f"  {path}")
    dropped = describe_dropped(stats)
    if dropped:
        print(f"note: left out {dropped} (how rows become interactions: README, Data)", file=sys.stderr)
    if stats.get("exact_duplicates_kept"):
        print(f"note: {stats['exact_duplicates_kept']:,} rows repeat an earlier (user, item, timestamp); "
              "passed through unchanged", file=sys.stderr)
    if stats.get("timestamps_look_like"):
        print(f"note: the timestamps look like {stats['timestamps_look_like']}", file=sys.stderr)
    if name == "ml-100k":
        print("note: RecBole always loads its own bundled copy for a dataset named 'ml-100k', "
              "whatever the data path; pass --name (e.g. --name ml-100k-local) to use this one",
              file=sys.stderr)
    return 0
