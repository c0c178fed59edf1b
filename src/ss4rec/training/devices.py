"""Where a run trains: the device's facts and its peak memory, for ``results.json`` and ``preflight.json``.

    >>> device_facts("cpu")["type"]
    'cpu'

On a GPU: its name, compute capability, memory and whether it has bf16 (which decides
``precision: auto``); ``CUDA_VISIBLE_DEVICES`` as the process saw it (the GPU index is among
the visible ones). The mamba backend's facts (kernels, versions) come from
:mod:`ss4rec.ssm` and are recorded beside these.
"""

from __future__ import annotations

import os

import torch


def device_facts(device) -> dict:
    """Plain data describing ``device`` (a ``torch.device`` or its name)."""
    device = torch.device(device)
    facts = {"device": str(device), "type": device.type, "gpu": None, "gpu_capability": None,
             "gpu_memory_gb": None, "bf16_supported": None,
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        with torch.cuda.device(index):
            bf16 = torch.cuda.is_bf16_supported()
        facts.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}",
                     gpu_memory_gb=round(props.total_memory / 2**30, 1), bf16_supported=bf16)
    return facts


def peak_gpu_memory_mb(device) -> float | None:
    """The most memory torch held on ``device`` since the process started (or the last reset),
    in MiB; None off the GPU."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
