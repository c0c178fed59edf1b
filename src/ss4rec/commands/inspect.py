"""``ss4rec inspect``: does a dataset's time axis carry signal? A report before any GPU hour.

    $ ss4rec inspect ml-100k                                   # the bundled copy
    $ ss4rec inspect ml-1m --data-path data/ --output runs/inspect-ml-1m
    $ ss4rec inspect data/ml-1m/ml-1m.inter --session-gap 3600
    $ ss4rec inspect time-control --data-path data/ --signal  # + trained order / gap tests

DATA is an ``.inter`` file or a dataset name (``ml-100k`` is bundled; others live in
``DATA_PATH/NAME/NAME.inter``, as for ``ss4rec train``). Prints the report and writes
``OUTPUT/inspect.json``, ``OUTPUT/inspect.md`` and ``OUTPUT/gap_distribution.png``
(default OUTPUT: ``runs/inspect-NAME``; a folder holding an earlier report is refused unless
``--overwrite``). The report (:mod:`ss4rec.evaluation.inspection`, facts from
:mod:`ss4rec.data.time_profile`; seconds at ML-1M size, vectorised):

* identical-timestamp shares: consecutive pairs of a user, each user's last two, the
  leave-one-out test target and valid target vs the interaction before each;
* the gaps in the time probe's buckets (< 1 min, < 1 h, < 1 day, < 30 days, more), for all
  consecutive pairs and for the test targets; sessions (``--session-gap``, default 30 min);
* the span, users, items, interactions;
* the ``time_unit: auto`` unit a run would use (the median positive training gap, the
  model's own computation) and ``normalized`` (the span);
* the S5 state kept across a typical gap, 1 hour and 1 day under every time_unit × transform;
* one "what this means" line.

``--signal`` also trains small fast models (``ml-100k-quick``, sequence mode, one thread,
early stopping) and answers "order carries signal" (SASRec on the real order vs each user's
training history shuffled) and "gaps carry signal" (SS4Rec on the real gaps vs the gaps
permuted within each user's training part; and vs ``ignore-time``), each with a paired 95%
CI over users: :mod:`ss4rec.evaluation.signal_tests` says exactly what each variant keeps.
Five training runs: minutes on ML-100K with one CPU thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="report a dataset's time axis (same-second shares, gaps, auto unit); --signal trains tests",
        description=__doc__.split("\n\n")[0], epilog="See the README, section 'Inspect a dataset's time axis'.")
    parser.add_argument("data", metavar="DATA", help="an .inter file, or a dataset name (ml-100k is bundled)")
    parser.add_argument("--data-path", default=None, metavar="DIR",
                        help="folder holding NAME/NAME.inter when DATA is a name (as for ss4rec train)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="folder for inspect.json, inspect.md, gap_distribution.png (default: runs/inspect-NAME)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --output")
    parser.add_argument("--session-gap", type=_minutes, default=30.0, metavar="MINUTES",
                        help="a new session after this many minutes without an interaction (default 30)")
    parser.add_argument("--signal", action="store_true",
                        help="also train the order and gap signal tests (five small runs; minutes)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="--signal: most epochs per run (default 30, early stopping after 4 without gain; learning rate 0.003)")
    parser.add_argument("--seed", type=int, default=2020, help="--signal: seed of the runs and permutations (default 2020)")
    parser.add_argument("--time-unit", default=None, metavar="UNIT",
                        help="--signal: SS4Rec's time_unit (default auto: a typical gap is one unit)")
    parser.set_defaults(func=main)


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of minutes")
    return value


def resolve_data(data: str, data_path) -> tuple[Path, str]:
    """(the .inter file, the dataset's name) of DATA: a file path, or a name found as ``train`` finds it."""
    from ss4rec.pipeline.settings import dataset_location

    path = Path(data)
    if data.endswith(".inter") or path.is_file() or "/" in data:
        return path, path.name[: -len(".inter")] if path.name.endswith(".inter") else path.stem
    return dataset_location(data, data_path) / f"{data}.inter", data


def main(args) -> int:
    import time

    from ss4rec.data.time_profile import read_time_log
    from ss4rec.errors import UserError
    from ss4rec.evaluation.inspection import check_output, inspect_report, markdown, write_report
    from ss4rec.training.runfolder import check_writable_folder

    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: give at least 1")
    if not args.signal and (args.epochs is not None or args.time_unit is not None):
        raise UserError("--epochs and --time-unit set the --signal runs: add --signal, or leave them out")
    if args.time_unit is not None:
        from ss4rec.models.ss4rec import DATA_TIME_UNITS, TIME_UNITS

        if args.time_unit not in (*TIME_UNITS, *DATA_TIME_UNITS):
            raise UserError(f"--time-unit {args.time_unit!r} is not one of {', '.join((*TIME_UNITS, *DATA_TIME_UNITS))}")
    path, name = resolve_data(args.data, args.data_path)
    out_dir = Path(args.output) if args.output else Path("runs") / f"inspect-{name}"
    check_writable_folder(out_dir, "--output")
    check_output(out_dir, args.overwrite, extra=("data", "runs") if args.signal else ())

    started = time.monotonic()
    log = read_time_log(path)
    read_s = time.monotonic() - started
    report = inspect_report(log, session_gap=args.session_gap * 60.0)
    report["seconds"] = {"read": round(read_s, 2), "report": round(time.monotonic() - started - read_s, 2)}
    if args.signal:
        from ss4rec.evaluation.signal_tests import DEFAULT_EPOCHS, DEFAULT_TIME_UNIT, signal_tests

        write_report(report, out_dir, log, overwrite=True)  # the cheap part first: readable while training
        print(f"[inspect] {len(log):,} interactions read in {read_s:.1f} s; training the signal tests into "
              f"{out_dir} (five runs)", flush=True)
        report["signal"] = signal_tests(log, out_dir, epochs=args.epochs or DEFAULT_EPOCHS, seed=args.seed,
                                        time_unit=args.time_unit or DEFAULT_TIME_UNIT)
        report["seconds"]["signal"] = round(sum(r["seconds"] for r in report["signal"]["runs"]), 1)
    written = write_report(report, out_dir, log, overwrite=True)
    print(markdown(report))
    print(f"wrote {', '.join(written)} ({report['seconds']['read']:.1f} s to read, "
          f"{report['seconds']['report']:.1f} s for the report)")
    return 0
