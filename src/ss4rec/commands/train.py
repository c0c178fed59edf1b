"""``ss4rec train``: one training run, everything in one run folder.

    $ ss4rec train --model SS4Rec --dataset ml-100k --config ml-100k-quick --output runs/demo
    $ ss4rec train --model SASRec --dataset ml-1m --data-path data/ --set epochs=50
    $ ss4rec train --debug --notify https://hooks.slack.com/services/...   # smoke run, pinged
    $ ss4rec train --config ss4rec --dataset ml-1m --data-path data/ --nproc 4   # 4 GPUs (DDP)
    $ torchrun --nnodes 2 --nproc-per-node 4 ... -m ss4rec train ...             # 2 machines

Writes ``OUTPUT/results.json`` (model, dataset, best_valid, test, epochs_run,
train_seconds, config, versions), ``OUTPUT/train.log`` and ``OUTPUT/checkpoints/``.

``--debug`` (also in ``ss4rec preflight``) shrinks any run to a smoke test: the settings
in :data:`DEBUG_SETTINGS` go over the config files (``--set`` still wins) and
``torch.autograd`` anomaly detection is on.

``--nproc N`` trains with N processes on this machine (DDP): one per GPU (NCCL), or with
``--device cpu`` N CPU processes (gloo, one torch thread each unless ``--threads``).
``torch.multiprocessing.spawn`` starts them, as ``recbole.quick_start.run`` does, each with
the environment ``torchrun`` would set; under ``torchrun`` (several machines) leave
``--nproc`` out. See :mod:`ss4rec.training.distributed`. Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# With --nproc, when one process fails the others get this long to stop by themselves
# before they are terminated (see _run_distributed).
RANK_GRACE_S = 20.0

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
    from ss4rec.config.files import known_keys
    from ss4rec.pipeline.settings import resolve_model

    name, _ = resolve_model(model)
    allowed = known_keys(name)
    return {k: v for k, v in DEBUG_SETTINGS.items() if k in allowed}


def config_dict_from_args(args) -> dict:
    """``--debug``'s preset, then ``--set`` pairs and ``--data-path``, as a config dict for :func:`ss4rec.run`."""
    from ss4rec.config.files import parse_sets

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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --output (by default a folder holding a run "
                             "or other files is refused, and nothing in it changes)")
    parser.add_argument("--notify", default=None, metavar="URL",
                        help="Slack/Discord webhook for start / finish / failure messages "
                             "(default: $SS4REC_NOTIFY_URL; a failing webhook never fails the run)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="processes on this machine, one per GPU (NCCL), or with --device cpu "
                             "one per CPU process (gloo), trained with DDP (default: 1). Several "
                             "machines: start each with torchrun (README)")
    parser.add_argument("--ip", default="127.0.0.1",
                        help="--nproc rendezvous address (default: 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=None,
                        help="--nproc rendezvous port (default: a free port)")
    parser.set_defaults(func=main)


def port_number(text: str) -> int:
    """argparse type of ``--port``: a TCP port, 1-65535."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: use a number from 1 to 65535 "
                                         "(or leave --port out for a free one)")
    return value


def check_nproc(nproc: int, device: str | None = None) -> str:
    """A clear UserError unless ``nproc`` processes can train on ``device`` here (see
    :func:`ss4rec.training.distributed.check_world`); else a one-line description of the layout."""
    from ss4rec.training.distributed import check_world

    return check_world(nproc, device)


def rank_threads(requested: int | None, device: str | None, world: int) -> int | None:
    """torch threads for each DDP process on CPU: --threads, else $OMP_NUM_THREADS, else 1
    (N processes of the default thread count would oversubscribe the cores). None: the usual
    choice (one process, or GPUs)."""
    import os

    if world <= 1 or device != "cpu" or requested is not None or os.environ.get("OMP_NUM_THREADS"):
        return None
    return 1


def _train_rank(local_rank: int, run_kwargs: dict, nproc: int, addr: str, port: int,
                threads: int, anomaly: bool) -> None:
    """One process of ``--nproc N`` (started by torch.multiprocessing.spawn, as RecBole's
    quick_start does): the launcher environment torchrun would give it, then the run."""
    import os

    import torch

    import ss4rec
    from ss4rec.training.distributed import rank_environment

    os.environ.update(rank_environment(nproc, local_rank, addr, port))
    torch.set_num_threads(threads)  # a spawned process starts with torch's defaults
    torch.autograd.set_detect_anomaly(anomaly)
    ss4rec.run(**run_kwargs)


def _run_distributed(run_kwargs: dict, nproc: int, addr: str, port: int | None, run_dir: Path) -> dict:
    import torch
    import torch.multiprocessing as mp

    from ss4rec.training.distributed import free_port, rank_failure

    port = port or free_port()
    context = mp.start_processes(_train_rank, args=(run_kwargs, nproc, addr, port, torch.get_num_threads(),
                                                    torch.is_anomaly_enabled()),
                                 nprocs=nproc, join=False, start_method="spawn")
    try:
        # When one process fails, the others get RANK_GRACE_S to stop by themselves (a guard
        # stops every rank at the same step, and rank 0 then saves its evidence; a lost peer
        # fails the next collective) before spawn terminates them and reports the first failure.
        while not context.join(grace_period=RANK_GRACE_S):
            pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        raise rank_failure(exc, run_dir, context.error_files) from None
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def _check_before_spawning(run_kwargs: dict, nproc: int) -> None:
    """The run's settings, data and host memory for ``nproc`` copies of the dataset, checked
    once here before any process starts (each process checks again as it starts)."""
    from ss4rec.pipeline.preflight import check_before_building
    from ss4rec.pipeline.settings import build_config

    config, _ = build_config(run_kwargs["model"], run_kwargs["dataset"], run_kwargs["config_files"],
                             run_kwargs["config_dict"], run_kwargs["device"])
    check_before_building(config, str(config["model"]), run_kwargs["dataset"], processes=nproc)


def main(args) -> int:
    import torch

    import ss4rec
    from ss4rec.pipeline.runner import default_output_dir
    from ss4rec.training import distributed
    from ss4rec.training.notify import Notifier
    from ss4rec.training.runfolder import check_run_folder
    from ss4rec.training.threads import apply_threads

    layout = check_nproc(args.nproc, args.device)
    world = max(args.nproc, distributed.world_size())
    writer = distributed.rank() == 0  # under torchrun, only rank 0 talks to the user
    threads = rank_threads(args.threads, args.device, world)
    message = apply_threads(args.threads if threads is None else threads)
    if writer:
        print(message + ("" if threads is None else " per process"), file=sys.stderr, flush=True)
        if world > 1:
            print(f"distributed: {layout}", file=sys.stderr, flush=True)
    run_dir = args.output
    if run_dir is None:
        model_label = getattr(args.model, "__name__", args.model)
        run_dir = (Path(args.resume).resolve().parent.parent if args.resume
                   else default_output_dir(model_label, args.dataset))
    run_dir = Path(run_dir).resolve()
    if writer:  # before any process starts: an earlier run there stays unless --overwrite
        check_run_folder(run_dir, args.resume, args.overwrite)
    notifier = Notifier(args.notify if writer else "")  # None: $SS4REC_NOTIFY_URL, else silent
    notifier.start(model=str(args.model), dataset=args.dataset, device=args.device or "auto",
                   run_dir=run_dir)
    run_kwargs = {"model": args.model, "dataset": args.dataset, "config_files": args.config,
                  "config_dict": config_dict_from_args(args), "device": args.device,
                  "resume": args.resume, "overwrite": args.overwrite}
    if args.debug:  # the op that first produces a NaN/Inf gradient is named in the traceback
        torch.autograd.set_detect_anomaly(True)
    try:
        if args.nproc > 1:
            _check_before_spawning(run_kwargs, args.nproc)
            result = _run_distributed({**run_kwargs, "output_dir": run_dir}, args.nproc, args.ip,
                                      args.port, run_dir)
        elif world > 1:  # one process of a torchrun job
            try:
                result = ss4rec.run(output_dir=run_dir, **run_kwargs)
            except RuntimeError as exc:  # gloo/NCCL: another rank died or hangs
                if not distributed.is_peer_failure(exc):
                    raise
                raise distributed.lost_peer(exc) from None
        else:
            result = ss4rec.run(output_dir=run_dir, **run_kwargs)
    except BaseException as exc:
        notifier.failure(exc)
        raise
    if not writer:
        return 0
    notifier.finish(result["test"])
    test = {k: round(v, 4) for k, v in result["test"].items()}
    print(json.dumps({"run_dir": result["run_dir"], "test": test}, indent=2))
    for name in args.config:
        if Path(name).stem in PACKAGED_NOTES and not Path(name).is_file():
            print(PACKAGED_NOTES[Path(name).stem])
    return 0
