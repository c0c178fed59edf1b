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

"Kernels run" is tested, not assumed: a tiny ``ss4rec.ssm.Mamba(backend="cuda")`` forward
on the GPU is compared with the pure-PyTorch backend on the same weights and input
(:func:`check_mamba_kernels`). Command line: ``python -m ss4rec.pipeline.envinfo``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

__all__ = ["environment_info", "format_environment", "check_mamba_kernels", "package_version"]

# Largest |cuda - torch| accepted between the two Mamba backends on the kernel check's
# input (fp32; the fused kernels sum in another order, so they differ by rounding only).
KERNEL_TOLERANCE = 1e-3


def package_version(dist_name: str) -> str | None:
    """The installed version of a distribution (``mamba-ssm``), or None when it is missing."""
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_mamba_kernels() -> tuple[bool, str]:
    """Run mamba-ssm's CUDA kernels once and compare them with the PyTorch backend.

    Returns (ok, what happened). Never raises: a broken kernel is a finding, not a crash.
    """
    try:
        import torch

        from ss4rec.ssm.mamba import Mamba, mamba_kernels_available

        ok, reason = mamba_kernels_available()
        if not ok:
            return False, reason
        torch.manual_seed(0)
        cuda_layer = Mamba(d_model=16, d_state=8, d_conv=4, expand=2, backend="cuda").cuda()
        torch_layer = Mamba(d_model=16, d_state=8, d_conv=4, expand=2, backend="torch").cuda()
        torch_layer.load_state_dict(cuda_layer.state_dict())
        x = torch.randn(2, 12, 16, device="cuda")  # [B L d_model]
        with torch.no_grad():
            fused, reference = cuda_layer(x), torch_layer(x)
        torch.cuda.synchronize()
        diff = float((fused - reference).abs().max())
        if not torch.isfinite(fused).all() or diff > KERNEL_TOLERANCE:
            return False, (f"CUDA kernels ran but disagree with the PyTorch backend (max diff "
                           f"{diff:.2e} > {KERNEL_TOLERANCE:g}): reinstall mamba-ssm/causal-conv1d "
                           "built for this torch and CUDA, or set mamba_backend: torch")
        return True, f"{reason}; forward matches the PyTorch backend (max diff {diff:.1e})"
    except Exception as exc:  # e.g. "no kernel image is available for execution on the device"
        return False, (f"CUDA kernels fail to run ({type(exc).__name__}: {exc}); reinstall "
                       "mamba-ssm/causal-conv1d for this GPU, or set mamba_backend: torch")


def environment_info(check_kernels: bool = True) -> dict:
    """Versions, CUDA and GPUs, and the kernel check, as plain data (see ``format_environment``)."""

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
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
        gpu_text = "; ".join(f"{i}: {g['name']} ({g['memory_gb']} GiB)" for i, g in enumerate(info["gpus"]))
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
