"""``ss4rec preflight``: check a run before spending compute on it; exit 1 on any FAIL.

    $ ss4rec preflight --model SS4Rec --dataset ml-1m --data-path data/ --config ss4rec
    $ ss4rec preflight --debug --device cpu --output runs/smoke   # + runs/smoke/preflight.json

Takes the same config options as ``ss4rec train`` and builds the run the same way; prints
the environment block, then a table of PASS / WARN / FAIL / SKIP checks (see
:mod:`ss4rec.pipeline.preflight`), then the verdict. The last line of a failed preflight is
``error: <the first FAIL and its fix>``.

``--notify URL`` (or ``$SS4REC_NOTIFY_URL``): a failed preflight is reported to the
webhook as a run that started and failed, with the cause; a passing one posts nothing
(the training that follows posts its own start and finish).
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_subparser(subparsers) -> None:
    from ss4rec.commands.train import add_config_arguments

    parser = subparsers.add_parser("preflight", help="check environment, config, data and model before a run",
                                   description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="also write DIR/preflight.json (the run folder of the run to come)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="check the layout of an --nproc N run: backend (nccl on GPUs, gloo "
                             "with --device cpu), N GPUs, or torchrun's environment (default: 1)")
    parser.add_argument("--notify", default=None, metavar="URL",
                        help="webhook told about a failed preflight (default: $SS4REC_NOTIFY_URL)")
    parser.add_argument("--no-env", action="store_true", help="do not print the environment block")
    parser.set_defaults(func=main)


def main(args) -> int:
    from ss4rec.commands.train import check_nproc, config_dict_from_args
    from ss4rec.errors import UserError
    from ss4rec.pipeline.envinfo import environment_info, format_environment
    from ss4rec.pipeline.preflight import FAIL, PASS, preflight
    from ss4rec.training.notify import Notifier
    from ss4rec.training.runfolder import write_json_atomic
    from ss4rec.training.threads import apply_threads

    if args.output:  # before the checks run: an output that cannot be written is refused first
        from ss4rec.training.runfolder import check_writable_folder

        check_writable_folder(Path(args.output), "--output")
    threads = apply_threads(args.threads)
    environment = environment_info()
    if not args.no_env:
        print(threads, flush=True)
        print(format_environment(environment), flush=True)
    notifier = Notifier(args.notify)
    run_dir = Path(args.output).resolve() if args.output else Path("(no run folder)")
    try:
        config_dict = config_dict_from_args(args)
    except UserError as exc:  # e.g. a malformed --set: still a failed preflight to report
        notifier.start(model=str(args.model), dataset=args.dataset, device=args.device or "auto", run_dir=run_dir)
        notifier.failure(f"preflight: {exc}")
        raise
    try:  # the process layout: backend (gloo/nccl), world size, GPUs per process, torchrun env
        layout, layout_error = check_nproc(args.nproc, args.device), None
    except UserError as exc:
        layout, layout_error = None, exc
    # A refused layout is the cause train gives: size the other checks for one process.
    report = preflight(args.model, args.dataset, args.config, config_dict, args.device,
                       environment=environment, processes=max(args.nproc, 1) if layout else 1)
    if layout_error is None:
        report.add("environment", "processes (DDP)", PASS, layout)
    else:
        report.add("environment", "processes (DDP)", FAIL, str(layout_error))
    print()
    print(report.table(), flush=True)
    if args.output:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "preflight.json", report.to_dict())
    if report.ok:
        return 0
    notifier.start(model=str(args.model), dataset=args.dataset, device=args.device or "auto", run_dir=run_dir)
    notifier.failure(report.first_failure)
    print(f"error: {report.first_failure}", file=sys.stderr)
    return 1
