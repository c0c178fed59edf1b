"""``ss4rec report``: a table and a plot of one or more finished runs.

    $ ss4rec report runs/quickstart
    $ ss4rec report runs/a runs/b runs/cmp --plot runs/report.png

Each RUN is an ``ss4rec train`` folder or an ``ss4rec compare`` folder (all its models).
"""

from __future__ import annotations


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser("report", help="table and plot of finished runs",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="train or compare output folders")
    parser.add_argument("--plot", default="report.png", metavar="PNG",
                        help="where to write the comparison plot (default: report.png)")
    parser.set_defaults(func=main)


def main(args) -> int:
    from ss4rec.evaluation.report import load_runs, markdown_table, plot_comparison

    from ss4rec.training.runfolder import check_writable_file

    plot = check_writable_file(args.plot, "--plot", suffix=".png")  # before reading any run
    rows = load_runs(args.runs)
    print(markdown_table(rows))
    print(f"\nplot: {plot_comparison(rows, plot).resolve()}")
    return 0
