"""``ss4rec compare``: several models, identical data settings, one comparison table.

    $ ss4rec compare --models SS4Rec,SASRec,GRU4Rec,BERT4Rec,NeuMF,S6-only,S5-only \\
          --dataset ml-100k --config ml-100k-quick --epochs 10 --output runs/cmp

    $ ss4rec compare --models SS4Rec,TiSASRec,SASRec --config ml-100k-quick --seeds 3 \\
          --set epochs=200 --set stopping_step=5 --output runs/study

    $ ss4rec compare --tuned runs/tune-ss4rec,runs/tune-sasrec --seeds 3 --output runs/tuned

Writes ``OUTPUT/comparison.csv`` (a row per run) and ``OUTPUT/comparison.md`` (HR/NDCG/MRR
at every ``topk`` as mean ± std over seeds, a paired per-user bootstrap 95% CI of each
model's NDCG@10 difference from SS4Rec, epochs and the early-stopping epoch, seconds per
epoch, peak memory; NDCG@10 by gap bucket; time-shift sensitivity; for the paper's datasets,
the published numbers beside ours with the ratio), ``summary.json``, PNG
plots, and ``OUTPUT/MODEL[/seed-N]/`` per run. A run that fails is listed as failed with
its cause; the others still run. Running again into OUTPUT reuses finished runs.
``--tuned DIR,DIR,...`` compares models each at the best settings of its ``ss4rec tune``
folder (``DIR/best.yaml``; the runs live in ``DIR/retrain/``, so those ``--retrain-seeds``
trained are reused) and adds the search budget each model got to the table.
Exits 1 when any run failed (after writing the table), 0 otherwise.
"""

from __future__ import annotations


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="train several models under identical settings",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None,
                        help="comma-separated: SS4Rec, RecBole models (SASRec, GRU4Rec, BERT4Rec, NeuMF, ...) "
                             "and SS4Rec ablations (S5-only, S6-only, ignore-time)")
    parser.add_argument("--tuned", default=None, metavar="DIR,DIR,...",
                        help="instead of --models: `ss4rec tune` folders, each model at its best.yaml; "
                             "the table adds the search budget each got")
    parser.add_argument("--dataset", default="ml-100k",
                        help="dataset name: ml-100k is bundled; others live in DATA_PATH/NAME/NAME.inter")
    parser.add_argument("--data-path", default=None, help="folder holding NAME/NAME.inter")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config file or packaged config name, shared by all models (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one shared config key (repeatable), e.g. --set stopping_step=3")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every model (overrides configs)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to train (default: GPU when available)")
    parser.add_argument("--timeout-minutes", type=float, default=None, metavar="M",
                        help="kill a model still training after M minutes and mark it failed")
    parser.add_argument("--seeds", default=None, metavar="N|S1,S2,...",
                        help="train every model with N seeds (2020, 2021, ...) or with the listed seeds; the "
                             "table gets mean ± std and paired bootstrap CIs against --reference")
    parser.add_argument("--reference", default=None, metavar="MODEL",
                        help="model the per-user paired CIs compare against (one of --models; default: "
                             "SS4Rec when compared, else the first model)")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: tabulate the runs already finished in OUTPUT (others: missing)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for the table and the runs (run again into it to continue a study)")
    parser.set_defaults(func=main)


def main(args) -> int:
    from pathlib import Path

    from ss4rec.commands.train import config_dict_from_args
    from ss4rec.errors import UserError
    from ss4rec.evaluation.compare import compare

    timeout_s = args.timeout_minutes * 60 if args.timeout_minutes is not None else None
    if args.tuned is not None:
        from ss4rec.evaluation.tune import compare_tuned

        given = [flag for flag, value in (("--models", args.models), ("--config", args.config),
                                          ("--set", args.set), ("--epochs", args.epochs),
                                          ("--data-path", args.data_path)) if value]
        if given:
            raise UserError(f"--tuned takes each model's settings from its tune's best.yaml: leave out "
                            f"{', '.join(given)}")
        rows = compare_tuned(args.tuned, seeds=args.seeds, output_dir=args.output, device=args.device,
                             timeout_s=timeout_s, reference=args.reference, train=not args.no_train)
        print((Path(args.output) / "comparison.md").read_text(encoding="utf-8"))
        return 0 if all(r["status"] in ("ok", "missing") for r in rows) else 1
    if not args.models:
        raise UserError("give --models NAME,NAME,... (or --tuned DIR,DIR,... of `ss4rec tune` folders)")
    rows = compare(args.models, dataset=args.dataset, config_files=args.config,
                   config_dict=config_dict_from_args(args), epochs=args.epochs,
                   output_dir=args.output, device=args.device, timeout_s=timeout_s, seeds=args.seeds,
                   reference=args.reference, train=not args.no_train)
    print((Path(args.output) / "comparison.md").read_text(encoding="utf-8"))
    return 0 if all(r["status"] in ("ok", "missing") for r in rows) else 1
