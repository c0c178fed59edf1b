"""``ss4rec train``: one training run, everything in one run folder.

    $ ss4rec train --model SS4Rec --dataset ml-100k --config ml-100k-quick --output runs/demo
    $ ss4rec train --model SASRec --dataset ml-1m --data-path data/ --set epochs=50
    $ ss4rec train --debug --notify https://hooks.slack.com/services/...   # smoke run, pinged
    $ ss4rec train --config ss4rec --dataset ml-1m --data-path data/ --nproc 4   # 4 GPUs (DDP)

Writes ``OUTPUT/results.json`` (model, dataset, best_valid, test, epochs_run,
train_seconds, config, versions), ``OUTPUT/train.log`` and ``OUTPUT/checkpoints/``.

``--debug`` (also in ``ss4rec preflight``) shrinks any run to a smoke test: the settings
in :data:`DEBUG_SETTINGS` go over the config files (``--set`` still wins) and
``torch.autograd`` anomaly detection is on.

``--nproc N`` trains on N GPUs with RecBole's own distributed mode: the run's config gets
RecBole's DDP keys (``nproc``, ``world_size``, ``ip``, ``port``, ``offset``,
``local_rank``) and ``torch.multiprocessing.spawn`` starts one process per GPU, as
``recbole.quick_start.run`` does; RecBole's ``Config`` then joins the NCCL process group,
its dataloaders shard the batches and its Trainer wraps the model in
``DistributedDataParallel``. Rank 0 writes the run folder; rank k logs to ``OUTPUT/rank-k/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# What --debug changes (model-specific keys only where the model knows them): users with
# at most 40 ratings (ML-100K: 305 users; small evaluation too), histories of 20, one
# epoch, small batches and a small SS4Rec shape. learning_rate and the data protocol
# (split, metrics) stay as configured.
DEBUG_SETTINGS = {
    "user_inter_num_interval": "[0,40]",
    "MAX_ITEM_LIST_LENGTH": 20,
    "epochs": 1,
    "train_batch_size": 512,
    "eval_batch_size": 4096,
    "show_progress": False,
    "hidden_size": 32,
    "d_state": 8,
    "d_P": 8,
    "expand": 1,
}


# What to expect from a packaged config, printed after its run (measured: docs/benchmarks.md).
PACKAGED_NOTES = {
    "ml-100k-quick": (
        "expected with ml-100k-quick: test NDCG@10 about 0.058 (0.0580-0.0589 over 3 seeds). "
        "The full schedule: --set epochs=200 --set stopping_step=5; the paper's protocol: "
        "add --set train_mode=prefix (about 25x the time per epoch)"
    ),
}


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
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: $OMP_NUM_THREADS, else the CPUs this "
                             "process may use)")
    parser.add_argument("--debug", action="store_true",
                        help="smoke-test preset: <=40-rating users, length 20, one epoch, small "
                             "model, autograd anomaly detection (--set still wins)")


def debug_settings(model) -> dict:
    """:data:`DEBUG_SETTINGS` minus the keys ``model`` does not have (e.g. ``d_state`` for SASRec)."""
    from ss4rec.config import known_keys
    from ss4rec.pipeline import resolve_model

    name, _ = resolve_model(model)
    allowed = known_keys(name)
    return {k: v for k, v in DEBUG_SETTINGS.items() if k in allowed}


def config_dict_from_args(args) -> dict:
    """``--debug``'s preset, then ``--set`` pairs and ``--data-path``, as a config dict for :func:`ss4rec.run`."""
    from ss4rec.config import parse_sets

    config_dict = debug_settings(args.model) if getattr(args, "debug", False) else {}
    config_dict.update(parse_sets(args.set))
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
    parser.add_argument("--notify", default=None, metavar="URL",
                        help="Slack/Discord webhook for start / finish / failure messages "
                             "(default: $SS4REC_NOTIFY_URL; a failing webhook never fails the run)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="GPUs to train on, one process each, through RecBole's DDP (default: 1)")
    parser.add_argument("--ip", default="localhost", help="--nproc rendezvous address (default: localhost)")
    parser.add_argument("--port", type=int, default=5678, help="--nproc rendezvous port (default: 5678)")
    parser.set_defaults(func=main)


def distributed_settings(nproc: int, rank: int, ip: str = "localhost", port: int = 5678) -> dict:
    """RecBole's DDP config keys for process ``rank`` of an ``nproc``-GPU run on one machine.

    >>> distributed_settings(2, 1)["local_rank"], distributed_settings(2, 1)["gpu_id"]
    (1, '0,1')
    """
    return {"nproc": nproc, "world_size": nproc, "ip": ip, "port": str(port), "offset": 0,
            "local_rank": rank, "gpu_id": ",".join(str(i) for i in range(nproc))}


def check_nproc(nproc: int) -> None:
    """A clear UserError unless ``nproc`` CUDA GPUs are visible (RecBole's DDP uses NCCL)."""
    import torch

    from ss4rec.errors import UserError

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: use a whole number >= 1")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nproc > 1 and visible < nproc:
        raise UserError(
            f"--nproc {nproc} needs {nproc} CUDA GPUs (RecBole's DDP runs on NCCL), but torch "
            f"sees {visible}: use --nproc {max(visible, 1)}, or a machine with {nproc} GPUs"
        )


def _train_rank(rank: int, run_kwargs: dict, nproc: int, ip: str, port: int, run_dir: str) -> None:
    """One DDP process (started by torch.multiprocessing.spawn, as RecBole's quick_start does)."""
    import ss4rec

    out = Path(run_dir) if rank == 0 else Path(run_dir) / f"rank-{rank}"
    if rank:  # every rank loads the best checkpoint that rank 0 writes: share the folder
        out.mkdir(parents=True, exist_ok=True)
        link = out / "checkpoints"
        if not link.exists():
            link.symlink_to(Path(run_dir).resolve() / "checkpoints", target_is_directory=True)
    config_dict = dict(run_kwargs.pop("config_dict") or {})
    config_dict.update(distributed_settings(nproc, rank, ip, port))
    ss4rec.run(config_dict=config_dict, output_dir=out, **run_kwargs)


def _run_distributed(run_kwargs: dict, nproc: int, ip: str, port: int, run_dir: Path) -> dict:
    import torch.multiprocessing as mp

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    mp.spawn(_train_rank, args=(run_kwargs, nproc, ip, port, str(run_dir)), nprocs=nproc, join=True)
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def main(args) -> int:
    import torch

    import ss4rec
    from ss4rec.notify import Notifier
    from ss4rec.pipeline import default_output_dir
    from ss4rec.threads import apply_threads

    check_nproc(args.nproc)
    print(apply_threads(args.threads), file=sys.stderr, flush=True)
    run_dir = args.output
    if run_dir is None:
        model_label = getattr(args.model, "__name__", args.model)
        run_dir = (Path(args.resume).resolve().parent.parent if args.resume
                   else default_output_dir(model_label, args.dataset))
    run_dir = Path(run_dir).resolve()
    notifier = Notifier(args.notify)  # None: $SS4REC_NOTIFY_URL, else silent
    notifier.start(model=str(args.model), dataset=args.dataset, device=args.device or "auto",
                   run_dir=run_dir)
    run_kwargs = {"model": args.model, "dataset": args.dataset, "config_files": args.config,
                  "config_dict": config_dict_from_args(args), "device": args.device,
                  "resume": args.resume}
    if args.debug:  # the op that first produces a NaN/Inf gradient is named in the traceback
        torch.autograd.set_detect_anomaly(True)
    try:
        if args.nproc > 1:
            result = _run_distributed(run_kwargs, args.nproc, args.ip, args.port, run_dir)
        else:
            result = ss4rec.run(output_dir=run_dir, **run_kwargs)
    except BaseException as exc:
        notifier.failure(exc)
        raise
    notifier.finish(result["test"])
    test = {k: round(v, 4) for k, v in result["test"].items()}
    print(json.dumps({"run_dir": result["run_dir"], "test": test}, indent=2))
    for name in args.config:
        if Path(name).stem in PACKAGED_NOTES and not Path(name).is_file():
            print(PACKAGED_NOTES[Path(name).stem])
    return 0
