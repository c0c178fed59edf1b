"""``ss4rec kernels``: mamba-ssm's CUDA kernels -- install them when this machine can have
them, say why not otherwise, and show which Mamba backend runs.

    $ ss4rec kernels install                  # CPU torch: one line, exit 0; GPU: prebuilt wheels or stop
    $ ss4rec kernels install --build-kernels  # also allow a source build (this GPU's arch only)
    $ ss4rec kernels plan --assume torch=2.10.0+cu128 --assume python=3.11
    $ ss4rec kernels check                    # backend facts; exit 0 when the kernels run here

The decisions are :mod:`ss4rec.ssm.kernels`; the backend facts :func:`ss4rec.ssm.mamba.backend_facts`.
"""

from __future__ import annotations

import argparse
import json


def add_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "kernels",
        help="install mamba-ssm's CUDA kernels when they fit this machine; show the Mamba backend",
        description="plan/install: a pinned mamba-ssm + causal-conv1d pair from prebuilt wheels when "
        "one matches this torch / CUDA / Python / C++ ABI, a source build only with --build-kernels, "
        "otherwise a stop that says why and the ways on (exit 2). A CPU torch: one line, exit 0. "
        "check: which Mamba backend runs here and why (exit 0 when the kernels run).",
    )
    actions = parser.add_subparsers(dest="kernels_command", metavar="ACTION")
    actions.required = True
    for name, text in (("plan", "print what install would do; change nothing"),
                       ("install", "install the kernels, or say why not")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--build-kernels", action="store_true",
                            help="allow a source build (nvcc; this GPU's architecture only; MAX_JOBS "
                                 "from free memory) when no prebuilt wheel matches")
        action.add_argument("--skip", metavar="REASON",
                            help="install nothing and say so in one line (the run does not need them)")
        action.add_argument("--assume", action="append", default=[], metavar="KEY=VALUE",
                            help="replace one fact about this machine (torch=2.10.0+cu128, python=3.11, "
                                 "nvcc=none, gpu_arch=9.0, ...); nothing is installed then")
        action.set_defaults(func=run_install)
    check = actions.add_parser("check", help="which Mamba backend runs here, and why",
                               description="Backend facts: backend, reason, mamba-ssm / causal-conv1d / "
                               "torch / CUDA versions, GPU. Exit 0 when the kernels run on this GPU.")
    check.add_argument("--backend", choices=("auto", "cuda", "torch"), default="auto",
                       help="the mamba_backend to decide for (default: auto)")
    check.add_argument("--json", action="store_true", help="print the facts as JSON")
    check.set_defaults(func=run_check)
    # PYTORCH_NVCC of a source build: nvcc for one architecture (not for users)
    nvcc = actions.add_parser("nvcc")
    nvcc.add_argument("--arch", required=True)
    nvcc.add_argument("--nvcc", required=True)
    nvcc.add_argument("args", nargs=argparse.REMAINDER)
    nvcc.set_defaults(func=run_nvcc)


def run_install(args: argparse.Namespace) -> int:
    from ss4rec.errors import UserError
    from ss4rec.ssm.kernels import install_command

    try:
        return install_command(args.kernels_command, build_kernels=args.build_kernels, skip=args.skip,
                               assumptions=tuple(args.assume))
    except ValueError as exc:  # a malformed --assume
        raise UserError(str(exc)) from None


def run_check(args: argparse.Namespace) -> int:
    from ss4rec.ssm.mamba import backend_facts

    facts = backend_facts(args.backend)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        width = max(len(key) for key in facts)
        for key, value in facts.items():
            if key != "reason":
                print(f"{key:<{width}}  {value}")
        print(facts["reason"])  # last: the one line a caller shows
    return 0 if facts["backend"] == "cuda" else 1


def run_nvcc(args: argparse.Namespace) -> int:
    from ss4rec.ssm.kernels import run_nvcc as exec_nvcc

    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return exec_nvcc(args.arch, args.nvcc, rest)
