"""Benchmark: our pure-PyTorch Mamba (chunked scan) against a naive per-step loop.

Layer settings are SS4Rec's: d_state 32, d_conv 4, expand 2. Each row times one training
step of the layer alone: ``fwd_ms`` is the forward with autograd recording, ``fwd_bwd_ms``
forward plus backward of ``out.square().mean()`` (best of a few runs), and ``peak_MB`` the
extra memory the step needs on top of the model and its input (CPU: peak RSS growth,
measured in a fresh subprocess per row so rows do not share allocator state; CUDA: peak
``torch.cuda.max_memory_allocated`` growth).

Rows: ``naive-loop`` (the same layer with the per-step reference scan) at a shape where it
finishes in seconds; ``ss4rec-torch`` at that shape, at [64, 200, 64] and at [128, 200, 64];
``ss4rec-cuda`` (mamba-ssm kernels) on a CUDA device when they import; ``mambapy`` (its
Blelloch parallel scan) when that package happens to be installed.

Usage::

    python scripts/_bench_mamba.py            # CPU, prints a markdown table
    python scripts/_bench_mamba.py --device cuda
    python scripts/_bench_mamba.py --threads 1   # steadier numbers on a shared machine

    from _bench_mamba import mamba_rows        # as scripts/bench_ssm.py does
    rows = mamba_rows("cpu")                   # list of dicts, one per row
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

D_STATE, D_CONV, EXPAND = 32, 4, 2
COLUMNS = ["impl", "B", "L", "d_model", "fwd_ms", "fwd_bwd_ms", "peak_MB"]
NAIVE_SHAPE = (16, 200, 64)
FAST_SHAPES = [NAIVE_SHAPE, (64, 200, 64), (128, 200, 64)]


def _build_layer(impl: str, d_model: int, device: str):
    """The layer under test for one row."""
    if impl == "mambapy":
        from mambapy.mamba import MambaBlock, MambaConfig

        config = MambaConfig(d_model=d_model, n_layers=1, d_state=D_STATE, expand_factor=EXPAND,
                             d_conv=D_CONV, pscan=True)
        return MambaBlock(config).to(device)
    from ss4rec.ssm.mamba import Mamba

    backend = {"naive-loop": "torch", "ss4rec-torch": "torch", "ss4rec-cuda": "cuda"}[impl]
    layer = Mamba(d_model, d_state=D_STATE, d_conv=D_CONV, expand=EXPAND, backend=backend).to(device)
    if impl == "naive-loop":
        layer.scan_impl = "reference"
    return layer


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(impl: str, batch: int, length: int, d_model: int, device: str, repeats: int = 3) -> dict:
    """Time one row in this process. peak_MB is exact on CUDA; on CPU use :func:`measure_isolated`."""
    # RecBole (recbole/model/sequential_recommender/sine.py) switches autograd anomaly
    # detection on for the whole process when it is imported; time the layer, not the checks.
    with torch.autograd.set_detect_anomaly(False):
        return _measure(impl, batch, length, d_model, device, repeats)


def _measure(impl: str, batch: int, length: int, d_model: int, device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    layer = _build_layer(impl, d_model, device)
    hidden = torch.randn(batch, length, d_model, device=device, requires_grad=True)
    _sync(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    fwd_times, step_times = [], []
    for _ in range(repeats):
        layer.zero_grad(set_to_none=True)
        hidden.grad = None
        _sync(device)
        start = time.perf_counter()
        out = layer(hidden)
        _sync(device)
        forward_done = time.perf_counter()
        out.square().mean().backward()
        _sync(device)
        fwd_times.append(forward_done - start)
        step_times.append(time.perf_counter() - start)
        del out
    if device.startswith("cuda"):
        peak_mb = (torch.cuda.max_memory_allocated() - allocated_before) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {
        "impl": impl, "B": batch, "L": length, "d_model": d_model,
        "fwd_ms": round(min(fwd_times) * 1e3, 1),
        "fwd_bwd_ms": round(min(step_times) * 1e3, 1),
        "peak_MB": round(peak_mb, 1),
    }


def measure_isolated(impl: str, batch: int, length: int, d_model: int, device: str, repeats: int) -> dict:
    """:func:`measure` in a fresh Python process (a clean peak-RSS baseline for CPU rows)."""
    args = [sys.executable, os.path.abspath(__file__), "--one",
            json.dumps([impl, batch, length, d_model, device, repeats]),
            "--threads", str(torch.get_num_threads())]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark row {impl} {batch}x{length}x{d_model} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mambapy_installed() -> bool:
    try:
        import mambapy.mamba  # noqa: F401
    except ImportError:
        return False
    return True


def mamba_rows(device: str = "cpu", include_large: bool = True) -> list:
    """Rows (dicts with COLUMNS) comparing the Mamba implementations on ``device``."""
    run = measure if device.startswith("cuda") else measure_isolated
    shapes = FAST_SHAPES if include_large else FAST_SHAPES[:1]
    rows = [run("naive-loop", *NAIVE_SHAPE, device, 1)]
    rows += [run("ss4rec-torch", *shape, device, 3) for shape in shapes]
    if device.startswith("cuda"):
        from ss4rec.ssm.mamba import mamba_kernels_available

        if mamba_kernels_available()[0]:
            rows += [run("ss4rec-cuda", *shape, device, 3) for shape in shapes]
    if _mambapy_installed():
        rows += [run("mambapy", *shape, device, 3) for shape in shapes]
    return rows


def markdown_table(rows: list) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one row, JSON out
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(*json.loads(args.one))))
        return
    print(f"Mamba d_state={D_STATE} d_conv={D_CONV} expand={EXPAND}, device={args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(markdown_table(mamba_rows(args.device)))


if __name__ == "__main__":
    main()
