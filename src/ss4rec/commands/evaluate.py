"""``ss4rec evaluate``: reload a saved model with its data settings and score its test split.

    $ ss4rec evaluate --checkpoint runs/demo/checkpoints/SS4Rec-best.pth --topk 1 5 10 20 50

Writes ``OUTPUT/metrics.json`` (full-ranking metrics at every cut-off) and
``OUTPUT/user_ranks.csv`` (original user id, target item id, its rank among all items,
the user's history length). OUTPUT defaults to ``evaluate/`` in the run folder.
``--time-probe`` adds ``OUTPUT/time_probe.json``: NDCG@10 by gap between the last history
item and the target, and the rank correlation of each user's scores when the request time
moves by +1 h, +1 day, +30 days (exactly 1.0 for a model that ignores it).
"""

from __future__ import annotations

import json


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="re-evaluate a saved model on its test split",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint written by ss4rec train (RUN/checkpoints/MODEL-best.pth)")
    parser.add_argument("--topk", type=int, nargs="+", default=None, metavar="K",
                        help="cut-offs, e.g. --topk 1 5 10 20 50 (default: the run's own topk)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="folder for metrics.json and user_ranks.csv (default: RUN/evaluate)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to score (default: cpu)")
    parser.add_argument("--data-path", default=None, metavar="DIR",
                        help="folder holding NAME/NAME.inter, if the data moved since training")
    parser.add_argument("--time-probe", action="store_true",
                        help="also NDCG@10 by gap to the target and the ranking's sensitivity to the request "
                             "time (+1 h, +1 day, +30 days): OUTPUT/time_probe.json")
    parser.set_defaults(func=main)


def main(args) -> int:
    from ss4rec.evaluation.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, topk=args.topk, output_dir=args.output, device=args.device,
                                 data_path=args.data_path, time_probe=args.time_probe)
    metrics = {k: round(v, 4) for k, v in report["metrics"].items()}
    summary = {"metrics": metrics, "n_users": report["n_users"],
               "metrics_file": report["metrics_file"], "ranks_file": report["ranks_file"]}
    if args.time_probe:
        summary["time_probe"] = report["time_probe"]
        summary["time_probe_file"] = report["time_probe_file"]
    print(json.dumps(summary, indent=2))
    return 0
