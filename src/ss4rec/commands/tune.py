"""``ss4rec tune``: equal-budget hyperparameter search (Optuna), resumable, on one machine or many.

    $ ss4rec tune --model SASRec --config ml-100k-quick --trials 8 --output runs/tune-sasrec
    $ ss4rec tune --model SS4Rec --config ml-100k-quick --trials 8 --workers 2 --output runs/tune-ss4rec
    $ ss4rec tune --model SS4Rec --config ml-100k-quick --trials 40 --retrain-seeds 3 \\
          --storage postgresql://user@db/tune --output runs/tune-ss4rec    # the same on every machine

Each trial is a run folder ``OUTPUT/trial-NNNN/``; the study lives in ``OUTPUT/study.db``
unless ``--storage`` names another; running the same command again continues it. At the end:
``OUTPUT/best.yaml`` (``ss4rec train --model M --config OUTPUT/best.yaml``), ``trials.md`` /
``trials.csv``, ``tune.json`` and PNG plots. See :mod:`ss4rec.evaluation.tune`.
Exits 1 when no trial completed or a worker failed, 0 otherwise.
"""

from __future__ import annotations

import argparse


def add_subparser(subparsers) -> None:
    from ss4rec.commands.train import add_config_arguments

    parser = subparsers.add_parser("tune", help="hyperparameter search with an equal budget per model (Optuna)",
                                   description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--space", default=None, metavar="FILE",
                        help="search space YAML (default: the model's packaged one, "
                             "properties/MODEL.space.yaml: SS4Rec, TiSASRec, SASRec, GRU4Rec)")
    parser.add_argument("--trials", type=int, default=None, metavar="N",
                        help="budget: N trials in all, pruned and failed ones included (default 20 "
                             "unless --timeout is given)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="budget: S seconds of trials in all (every worker, every rerun); with "
                             "--trials, whichever ends first")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                        help="stops trials whose valid metric trails after an epoch (default: median)")
    parser.add_argument("--seed", type=int, default=0,
                        help="TPE sampler seed (default 0; give each machine of one study its own)")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="Optuna storage: sqlite:///FILE, postgresql://..., mysql://..., or "
                             "journal:FILE on a shared filesystem (default: sqlite in OUTPUT)")
    parser.add_argument("--study-name", default=None, metavar="NAME",
                        help="study in the storage (default: MODEL-DATASET)")
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help="K processes on this machine running trials of the one study (default 1)")
    parser.add_argument("--heartbeat", type=float, default=30.0, metavar="S",
                        help="seconds between a running trial's signs of life in the storage; a trial "
                             "silent 4x as long is taken for dead and rerun (default 30)")
    parser.add_argument("--retrain-seeds", default=None, metavar="N|S1,S2,...",
                        help="then retrain the best settings with N seeds (or these): test metrics as "
                             "mean ± std with compare's bootstrap CIs, in OUTPUT/retrain/")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="the tune folder (run the same command into it again to continue)")
    parser.add_argument("--search-only", action="store_true", help=argparse.SUPPRESS)  # a --workers child
    parser.set_defaults(func=main)


def main(args) -> int:
    import sys

    from ss4rec.commands.train import config_dict_from_args
    from ss4rec.evaluation.tune import tune
    from ss4rec.training.threads import apply_threads

    message = apply_threads(args.threads)
    if not args.search_only:
        print(message, file=sys.stderr, flush=True)
    summary = tune(args.model, dataset=args.dataset, config_files=args.config,
                   config_dict=config_dict_from_args(args), space=args.space, trials=args.trials,
                   timeout=args.timeout, output_dir=args.output, storage=args.storage,
                   study_name=args.study_name, workers=args.workers, pruner=args.pruner, seed=args.seed,
                   device=args.device, heartbeat=args.heartbeat, retrain_seeds=args.retrain_seeds,
                   report=not args.search_only)
    if args.search_only:
        return 0
    return 0 if summary.get("best") and not summary.get("workers_failed") else 1
