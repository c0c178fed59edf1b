"""``ss4rec recommend``: top-K items for users of a trained run, with original ids and titles.

    $ ss4rec recommend --checkpoint runs/demo/checkpoints/SS4Rec-best.pth --user 1 42 -k 5
    $ ss4rec recommend --checkpoint CKPT --users-file users.txt --exclude-seen --format csv
    $ ss4rec recommend --checkpoint CKPT --user 1 --at 1998-04-01T12:00:00Z --format json

Each user is answered from the full history in the run's dataset; ``--at`` sets the time
of the request (epoch seconds or ISO date/time, UTC unless an offset is given; default:
the user's last interaction plus the user's median gap). Output columns: user_id, rank,
item_id, score, and title, genres when the dataset has a ``.item`` file.

Unknown user ids are reported on stderr and the others are still answered: the exit
status is 0 when at least one user was answered, 2 when none was.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from ss4rec.errors import UserError

FORMATS = ("table", "json", "csv")


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser("recommend", help="top-K items for users of a trained run",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint written by `ss4rec train` (RUN/checkpoints/MODEL-best.pth)")
    parser.add_argument("--user", action="extend", nargs="+", default=[], metavar="ID",
                        help="original user id(s) (repeatable)")
    parser.add_argument("--users-file", metavar="FILE",
                        help="file with one user id per line (blank lines and # comments ignored)")
    parser.add_argument("-k", "--top-k", type=_positive_int, default=10, metavar="K",
                        help="items per user (default: 10)")
    parser.add_argument("--exclude-seen", action="store_true",
                        help="leave out items already in the user's history")
    parser.add_argument("--at", default=None, metavar="TIME",
                        help="time of the request: epoch seconds or ISO date/time (UTC); "
                             "default: last interaction plus the user's median gap")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run the model (default: cpu)")
    parser.add_argument("--data-path", default=None, metavar="DIR",
                        help="folder holding NAME/NAME.inter, if the run's data moved since training")
    parser.set_defaults(func=main)


def read_users_file(path) -> list[str]:
    """User ids from a text file: one per line, blank lines and ``#`` comments skipped."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read --users-file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(f"--users-file {path}: line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8 text: "
                        "give a text file with one user id per line") from None
    control = next((n for n, c in enumerate(text) if ord(c) < 32 and c not in "\t\r\n"), None)
    if control is not None:
        raise UserError(f"--users-file {path}: line {text.count(chr(10), 0, control) + 1}: control character "
                        f"0x{ord(text[control]):02x}: not a text file of user ids (one per line)")
    users = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            users.append(line)
    if not users:
        raise UserError(f"--users-file {path} holds no user ids (expected one id per line)")
    return users


def render(frame, fmt: str) -> str:
    """The recommendations as a table, JSON (a list of records) or CSV."""
    if fmt == "json":
        return json.dumps(frame.to_dict(orient="records"), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return frame.to_csv(index=False)
    shown = frame.copy()
    shown["score"] = shown["score"].map(lambda s: f"{s:.4f}")
    return shown.to_string(index=False) + "\n"


def main(args) -> int:
    from ss4rec.evaluation.recommend import recommend
    from ss4rec.pipeline.runner import restore

    users = list(args.user)
    if args.users_file:
        users += read_users_file(args.users_file)
    if not users:
        raise UserError("no users given: pass --user ID [ID ...] and/or --users-file FILE")
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} not found; `ss4rec train` writes RUN/checkpoints/MODEL-best.pth")

    config_dict = {"data_path": args.data_path} if args.data_path else None
    run = restore(args.checkpoint, device=args.device, config_dict=config_dict)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = recommend(run, users, k=args.top_k, exclude_seen=args.exclude_seen, at=args.at,
                          on_unknown="ignore")
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    for user, why in frame.attrs["skipped_users"].items():
        print(f"warning: user {user!r} skipped: {why}", file=sys.stderr)
    sys.stdout.write(render(frame, args.format))
    return 0
