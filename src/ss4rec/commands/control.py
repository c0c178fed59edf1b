"""``ss4rec positive-control``: write the synthetic log whose next item depends on a gap.

    $ ss4rec positive-control --output data/
    $ ss4rec inspect time-control --data-path data/
    $ ss4rec compare --models SS4Rec,ignore-time,SASRec --dataset time-control --data-path data/ --config ml-100k-quick

The rule is documented in :mod:`ss4rec.data.time_control` (and written to NAME.json).
"""

from __future__ import annotations

import argparse


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "positive-control",
        help="write a synthetic log where the next item provably depends on the time gap",
        description="Write OUTPUT/NAME/NAME.inter: a synthetic log (not real data) whose next item is a fixed "
        "successor of the last item, chosen by the quartile bucket of a gap (--rule; uniform with "
        "probability --noise). Time-aware models can learn it; time-blind ones cannot. OUTPUT/NAME/NAME.json "
        "states the rule.",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="data folder (use it as --data-path)")
    parser.add_argument("--name", default="time-control", help="dataset name (default: time-control)")
    parser.add_argument("--users", type=int, default=600, help="users (default 600)")
    parser.add_argument("--items", type=int, default=60, help="items (default 60)")
    parser.add_argument("--noise", type=float, default=0.1, help="share of uniform next items (default 0.1)")
    parser.add_argument("--rule", choices=["last-gap", "next-gap"], default="last-gap",
                        help="which gap picks the successor: the last gap of the history (default; every "
                        "time-aware model sees it) or the gap to the predicted item (only models reading the "
                        "request time, such as SS4Rec, see it)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset of that name in OUTPUT")
    parser.set_defaults(func=run_control)


def run_control(args: argparse.Namespace) -> int:
    from ss4rec.data.time_control import write_time_control
    from ss4rec.errors import UserError

    try:
        facts = write_time_control(args.output, name=args.name, overwrite=args.overwrite, users=args.users,
                                   items=args.items, noise=args.noise, seed=args.seed, rule=args.rule)
    except ValueError as exc:
        raise UserError(f"positive-control: {exc}") from None
    print(f"wrote {facts['inter_file']}: {facts['interactions']:,} interactions of {args.users:,} users "
          f"(synthetic). Rule: {facts['rule']}")
    print(f"train on it with --dataset {args.name} --data-path {args.output}")
    return 0
