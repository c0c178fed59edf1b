"""``ss4rec compare``: several models, identical data settings, one comparison table.

    $ ss4rec compare --models SS4Rec,SASRec,GRU4Rec,BERT4Rec,NeuMF,S6-only,S5-only \\
          --dataset ml-100k --config ml-100k-quick --epochs 10 --output runs/cmp

Writes ``OUTPUT/comparison.csv`` and ``OUTPUT/comparison.md`` (HR/NDCG/MRR at every
``topk``, seconds per epoch, peak memory, parameters) and ``OUTPUT/MODEL/results.json``
per model. A model that fails is listed as failed with its cause; the others still run.
Exits 1 when any model failed (after writing the table), 0 otherwise.
"""

from __future__ import annotations


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="train several models under identical settings",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True,
                        help="comma-separated: SS4Rec, RecBole models (SASRec, GRU4Rec, BERT4Rec, NeuMF, ...) "
                             "and SS4Rec ablations (S5-only, S6-only, ignore-time)")
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
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the table and the runs")
    parser.set_defaults(func=main)


def main(args) -> int:
    from pathlib import Path

    from ss4rec.commands.train import config_dict_from_args
    from ss4rec.compare import compare

    timeout_s = args.timeout_minutes * 60 if args.timeout_minutes else None
    rows = compare(args.models, dataset=args.dataset, config_files=args.config,
                   config_dict=config_dict_from_args(args), epochs=args.epochs,
                   output_dir=args.output, device=args.device, timeout_s=timeout_s)
    print((Path(args.output) / "comparison.md").read_text(encoding="utf-8"))
    return 0 if all(r["status"] == "ok" for r in rows) else 1
