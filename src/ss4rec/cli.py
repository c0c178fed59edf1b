"""The ``ss4rec`` command line: one subcommand per concern, each defined in its own module.

    $ ss4rec train --model SS4Rec --dataset ml-100k --output runs/demo
    $ ss4rec convert ~/Downloads/ml-1m.zip data/
    $ ss4rec --help

A module in ``_COMMAND_MODULES`` exposes ``add_subparser(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed namespace; returns an exit code).
Errors meant for the user are raised as :class:`ss4rec.errors.UserError`; ``main`` prints
them as one line at the end and exits non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ss4rec.errors import UserError

# Imported lazily so `ss4rec --help` stays fast and one broken optional part cannot
# take the whole CLI down with an import error.
_COMMAND_MODULES = (
    "ss4rec.commands.train",
    "ss4rec.commands.convert",
    "ss4rec.commands.split",
    "ss4rec.commands.control",
    "ss4rec.commands.inspect",
    "ss4rec.commands.compare",
    "ss4rec.commands.tune",
    "ss4rec.commands.evaluate",
    "ss4rec.commands.recommend",
    "ss4rec.commands.preflight",
    "ss4rec.commands.drift",
    "ss4rec.commands.report",
    "ss4rec.commands.kernels",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ss4rec",
        description="Train, evaluate and analyse SS4Rec and RecBole baselines.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_subparser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one-line cause at the end, after the traceback
        import traceback

        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
