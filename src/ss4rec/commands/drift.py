"""``ss4rec drift``: data drift (and model drift) between a past and a future ``.inter`` file.

    $ ss4rec split --inter data/ml-1m/ml-1m.inter --future-fraction 0.2 --output splits/
    $ ss4rec train --model SS4Rec --dataset ml-1m-past --data-path splits/ --output runs/past
    $ ss4rec drift --past splits/ml-1m-past/ml-1m-past.inter --future splits/ml-1m-future/ml-1m-future.inter \\
          --checkpoint runs/past/checkpoints/SS4Rec-best.pth --window quarter --output drift/

The work is done by :func:`ss4rec.drift.drift_report`.
"""

from __future__ import annotations

import argparse


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "drift",
        help="data drift and model drift between past and future interactions, per time window",
        description="Compare every time window of FUTURE.inter with PAST.inter (item popularity JS divergence, "
        "interactions on new items / by new users, rating shift, inter-event gap and user activity KS "
        "statistics, each with a threshold and a verdict) and, with --checkpoint (a model trained on the past), "
        "the model's next-item HR@K / NDCG@K per window against its own test score. Writes OUTPUT/drift.json, "
        "OUTPUT/drift.md and PNG plots.",
    )
    parser.add_argument("--past", required=True, metavar="PAST.inter", help="the interactions the model was trained on")
    parser.add_argument("--future", required=True, metavar="FUTURE.inter", help="the later interactions")
    parser.add_argument("--checkpoint", metavar="CKPT", help="checkpoint of a run trained on the past (adds model drift)")
    parser.add_argument("--window", default="month", metavar="W",
                        help="month (default), quarter or N-days (e.g. 30-days), starting at the future's first interaction")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for drift.json, drift.md and the plots")
    parser.add_argument("--topk", type=int, nargs="+", default=[10], metavar="K", help="cut-offs for HR/NDCG (default 10)")
    parser.add_argument("--max-predictions", type=int, metavar="N",
                        help="score a random sample of at most N future interactions (model drift on large data)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device for the model (default cpu)")
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                        help="override a data-drift threshold, e.g. popularity_js=0.05 (repeatable)")
    parser.add_argument("--min-window-rows", type=int, metavar="N",
                        help="a data window with fewer interactions is 'insufficient data' (default 500)")
    parser.add_argument("--min-window-users", type=int, metavar="N",
                        help="a data window with fewer active users is 'insufficient data' (default 100: below "
                        "~67 users the activity KS test cannot tell its threshold from chance)")
    parser.set_defaults(func=run_drift)


def _thresholds(pairs: list[str]) -> dict:
    from ss4rec.drift.data_drift import DEFAULT_THRESHOLDS
    from ss4rec.errors import UserError

    thresholds = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in DEFAULT_THRESHOLDS:
            raise UserError(f"--threshold {pair!r}: unknown measure {name!r}; use one of {', '.join(DEFAULT_THRESHOLDS)}")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise UserError(f"--threshold {pair!r}: expected NAME=NUMBER, e.g. {name}=0.1") from None
    return thresholds


def run_drift(args: argparse.Namespace) -> int:
    from ss4rec.drift import drift_report

    report = drift_report(args.past, args.future, args.output, checkpoint=args.checkpoint, window=args.window,
                          topk=args.topk, thresholds=_thresholds(args.threshold), device=args.device,
                          max_predictions=args.max_predictions, min_window_rows=args.min_window_rows,
                          min_window_users=args.min_window_users)
    data = report["data_drift"]
    counts = {}
    for w in data["windows"]:
        counts[w["verdict"]] = counts.get(w["verdict"], 0) + 1
    print(f"data drift ({len(data['windows'])} {data['window']} windows): "
          + ", ".join(f"{n} {verdict}" for verdict, n in counts.items()))
    print(f"overall: {data['headline']}")
    model = report["model_drift"]
    if model:
        k = model["verdict_k"]
        training = model.get("training_data") or {}
        print(("training data: " if training.get("checked") else "warning: ") + training.get("detail", ""))
        print(f"model drift ({model['model']}, HR@{k} / NDCG@{k}; test {model['reference']['metrics'][f'hit@{k}']:.4f} / "
              f"{model['reference']['metrics'][f'ndcg@{k}']:.4f}): " + ", ".join(
                  f"{w['label']} {_num(w['metrics'][f'hit@{k}'])}/{_num(w['metrics'][f'ndcg@{k}'])} {w['verdict']}"
                  for w in model["windows"]))
    print(f"wrote {report['files']['json']}, {report['files']['markdown']}" + "".join(f", {p}" for p in report["plots"]))
    return 0


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
