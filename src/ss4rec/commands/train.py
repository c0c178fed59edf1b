"""``ss4rec train``: one training run, everything in one run folder.

    $ ss4rec train --model SS4Rec --dataset ml-100k --config ml-100k-quick --output runs/demo
    $ ss4rec train --model SASRec --dataset ml-1m --data-path data/ --set epochs=50

Writes ``OUTPUT/results.json`` (model, dataset, best_valid, test, epochs_run,
train_seconds, config, versions), ``OUTPUT/train.log`` and ``OUTPUT/checkpoints/``.
"""

from __future__ import annotations

import json


def add_config_arguments(parser) -> None:
    """The options every command that builds a run shares (train, preflight, compare, ...)."""
    parser.add_argument("--model", default="SS4Rec", help="SS4Rec or a RecBole model name (default: SS4Rec)")
    parser.add_argument("--dataset", default="ml-100k",
                        help="dataset name: ml-100k is bundled; others live in DATA_PATH/NAME/NAME.inter")
    parser.add_argument("--data-path", default=None,
                        help="folder holding NAME/NAME.inter (as RecBole's data_path)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config file or packaged config name (repeatable; later wins)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable), e.g. --set epochs=5")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to train (default: GPU when available)")


def config_dict_from_args(args) -> dict:
    """``--set`` pairs and ``--data-path`` as a config dict for :func:`ss4rec.run`."""
    from ss4rec.config import parse_sets

    config_dict = parse_sets(args.set)
    if args.data_path is not None:
        config_dict["data_path"] = args.data_path
    return config_dict


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train and test one model",
                                   description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="run folder (default: runs/MODEL-DATASET-TIME)")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue an interrupted run from its checkpoints/MODEL-last.pth "
                             "(same --model/--config/--set; --output defaults to that run's folder)")
    parser.set_defaults(func=main)


def main(args) -> int:
    import ss4rec

    result = ss4rec.run(
        model=args.model,
        dataset=args.dataset,
        config_files=args.config,
        config_dict=config_dict_from_args(args),
        output_dir=args.output,
        device=args.device,
        resume=args.resume,
    )
    test = {k: round(v, 4) for k, v in result["test"].items()}
    print(json.dumps({"run_dir": result["run_dir"], "test": test}, indent=2))
    return 0
