"""The environment block printed before every run: versions, GPU, and whether the kernels run.

A pod with a CUDA torch but a mamba-ssm built for another CUDA, or a numpy that RecBole
cannot use, fails minutes into a run. This block says so first:

    >>> from ss4rec.pipeline.envinfo import environment_info, format_environment
    >>> info = environment_info()
    >>> sorted(info)[:3]
    ['causal_conv1d', 'cuda', 'gpus']
    >>> print(format_environment(info))  # doctest: +SKIP
    environment
      python         3.11.9
      torch          2.13.0 (CUDA build: none)
      CUDA           not available
      ...
      mamba kernels  not usable: mamba_ssm's CUDA kernels do not import (...)

"Kernels run" is tested, not assumed: a tiny Mamba runs forward and backward through
mamba-ssm's kernels on the GPU, and its output and every gradient are compared with the
pure-PyTorch backend on the same weights and input (:func:`check_mamba_kernels`, which is
:func:`ss4rec.ssm.mamba.verify_kernels`: the same proof ``mamba_backend: auto`` needs before
it picks the kernels). Command line: ``python -m ss4rec.pipeline.envinfo``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

from ss4rec.ssm.mamba import mamba_kernels_available

__all__ = ["environment_info", "format_environment", "check_mamba_kernels", "package_version"]


def package_version(dist_name: str) -> str | None:
    """The installed version of a distribution (``mamba-ssm``), or None when it is missing."""
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_mamba_kernels() -> tuple[bool, str]:
    """Prove mamba-ssm's kernels on the current GPU: (ok, what happened). Never raises.

    Forward and backward of a tiny Mamba through the kernels and through the PyTorch
    backend; every output and gradient must agree (:func:`ss4rec.ssm.mamba.verify_kernels`).
    A broken mamba-ssm / causal-conv1d pair, a missing package or no GPU is the reason given.
    """
    try:
        return mamba_kernels_available()
    except Exception as exc:  # a broken CUDA runtime: a finding, not a crash
        return False, f"the kernel check itself failed ({type(exc).__name__}: {exc})"


def environment_info(check_kernels: bool = True) -> dict:
    """Versions, CUDA and GPUs, and the kernel check, as plain data (see ``format_environment``)."""

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, _ = torch.cuda.mem_get_info(index)  # what other processes leave us
            gpus.append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                         "free_gb": round(free / 2**30, 1), "capability": f"{props.major}.{props.minor}",
                         "bf16": props.major >= 8})
    kernels = check_mamba_kernels() if check_kernels else (False, "not checked")
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": {"build": torch.version.cuda, "available": torch.cuda.is_available()},
        "gpus": gpus,
        "recbole": package_version("recbole"),
        "numpy": package_version("numpy"),
        "pandas": package_version("pandas"),
        "mamba_ssm": package_version("mamba-ssm"),
        "causal_conv1d": package_version("causal-conv1d"),
        "mamba_kernels": {"ok": kernels[0], "detail": kernels[1]},
    }


def format_environment(info: dict) -> str:
    """The block of text shown at the top of a run (one ``name  value`` line each)."""
    cuda = info["cuda"]
    if info["gpus"]:
        gpu_text = "; ".join(
            f"{i}: {g['name']} (sm_{g['capability'].replace('.', '')}, {g['memory_gb']} GiB, {g['free_gb']} free"
            + ("" if g["bf16"] else ", no bf16") + ")" for i, g in enumerate(info["gpus"]))
    else:
        gpu_text = "none"
    kernels = info["mamba_kernels"]
    rows = [
        ("python", f"{info['python']} ({info['executable']})"),
        ("torch", f"{info['torch']} (CUDA build: {cuda['build'] or 'none'})"),
        ("CUDA", "available" if cuda["available"] else "not available"),
        ("GPU", gpu_text),
        ("recbole", info["recbole"] or "MISSING"),
        ("numpy", info["numpy"] or "MISSING"),
        ("pandas", info["pandas"] or "MISSING"),
        ("mamba-ssm", info["mamba_ssm"] or "not installed"),
        ("causal-conv1d", info["causal_conv1d"] or "not installed"),
        ("mamba kernels", ("run: " if kernels["ok"] else "not usable: ") + kernels["detail"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "environment\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


if __name__ == "__main__":
    print(format_environment(environment_info()))
