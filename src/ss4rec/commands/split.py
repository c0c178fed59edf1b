"""``ss4rec split``: cut a ``.inter`` file into past and future by time.

    $ ss4rec split --inter data/ml-32m/ml-32m.inter --until-of data/ml-20m/ml-20m.inter --output splits/
    $ ss4rec split --inter data/ml-1m/ml-1m.inter --future-fraction 0.1 --output splits/
    $ ss4rec split --inter data/ml-1m/ml-1m.inter --at 2002-01-01 --output splits/
    $ ss4rec train --dataset ml-1m-past --data-path splits/

The work is done by :func:`ss4rec.data.split.split_by_time`.
"""

from __future__ import annotations

import argparse


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "split",
        help="split a .inter file into past and future by time",
        description="Write OUTPUT/NAME-past/NAME-past.inter and OUTPUT/NAME-future/NAME-future.inter "
        "(ties at the cut go to the past), copies of NAME.item/.user found next to the input, and "
        "OUTPUT/NAME-split.json with counts, time ranges and the users/items only in the future.",
    )
    parser.add_argument("--inter", required=True, metavar="FILE", help="RecBole .inter file with a timestamp:float field")
    cut = parser.add_mutually_exclusive_group(required=True)
    cut.add_argument("--at", metavar="DATE", help="cut time: ISO date/datetime (UTC unless an offset is given) or epoch seconds")
    cut.add_argument("--future-fraction", type=float, metavar="F", help="the latest F share of interactions goes to the future")
    cut.add_argument("--until-of", metavar="OTHER.inter", help="cut at the last timestamp of OTHER.inter")
    parser.add_argument("--output", required=True, metavar="DIR", help="data folder for the two datasets")
    parser.set_defaults(func=run_split)


def run_split(args: argparse.Namespace) -> int:
    from ss4rec.data.split import format_report, split_by_time

    report = split_by_time(args.inter, args.output, at=args.at,
                           future_fraction=args.future_fraction, until_of=args.until_of)
    print(format_report(report))
    return 0
