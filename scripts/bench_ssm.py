"""Benchmark the SSM layers: our time-aware S5 vs s5-pytorch 0.2.1 (forward + backward).

Usage::

    python scripts/bench_ssm.py                      # CPU, B=64 L=200 H=64 P=32, 1 thread
    python scripts/bench_ssm.py --device cuda
    python scripts/bench_ssm.py --threads 2 --repeats 5

Prints markdown tables: time per forward+backward (median over ``--repeats``) and peak extra
memory, with random positive per-step gaps ``[B L]`` (what SS4Rec feeds its S5 layer). Each
case runs in fresh subprocesses (one for memory, one for time) so peaks do not mix. On CPU
the peak is the resident-set high water mark (``VmHWM``, reset through
``/proc/self/clear_refs``; ``ru_maxrss`` where that is not possible) of the second full-size
forward+backward, minus the resident set before it, with glibc told to return freed blocks
to the system (``MALLOC_MMAP_THRESHOLD_``) so the resident set follows the live tensors;
on CUDA it is ``torch.cuda.max_memory_allocated`` above the memory already allocated.

Target at the default shape on CPU: ours >= 10x faster and <= 1/10 of s5-pytorch's peak.

If ``scripts/_bench_mamba.py`` exists and exposes ``mamba_rows(device) -> list[dict]``, its
rows are printed as a second table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMPLEMENTATIONS = {"ours": "ss4rec S5 (chunked scan)", "s5-pytorch": "s5-pytorch 0.2.1 S5"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--width", type=int, default=64, help="H, features")
    parser.add_argument("--state", type=int, default=32, help="P, complex states")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward+backward passes")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on shared machines)")
    parser.add_argument("--worker", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["memory", "time"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ one case, in a subprocess


def _proc_status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM
    except OSError:
        return False
    return True


def run_worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.worker == "ours":
        from ss4rec.ssm.s5 import S5
    else:
        from s5 import S5
    layer = S5(args.width, args.state, dt_min=0.001, dt_max=0.1).to(device)
    x = torch.randn(args.batch, args.length, args.width, device=device, requires_grad=True)  # [B L H]
    # positive gaps over several orders of magnitude (seconds between interactions)
    decades = torch.randint(0, 5, (args.batch, args.length), device=device)
    gaps = torch.rand(args.batch, args.length, device=device) * 10.0**decades  # [B L]
    output_grad = torch.randn(args.batch, args.length, args.width, device=device)

    def forward_backward():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x, gaps).backward(output_grad)

    # The first pass also allocates one-time state (about 30 MB for either layer on CPU:
    # library workspaces, the autograd engine); the peak is taken on the second pass.
    forward_backward()
    if args.measure == "memory":
        return measure_peak_memory(forward_backward, device)

    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        forward_backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"ms": 1000 * statistics.median(times)}


def measure_peak_memory(forward_backward, device) -> dict:
    """Peak extra memory of one call of ``forward_backward``, in MiB."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        forward_backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        return {"peak_mb": peak / 2**20, "memory_method": "cuda max_memory_allocated"}
    if _reset_peak_rss() and _proc_status_kib("VmRSS") is not None:
        before = _proc_status_kib("VmRSS")
        forward_backward()
        return {"peak_mb": (_proc_status_kib("VmHWM") - before) / 1024, "memory_method": "VmHWM - VmRSS"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forward_backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": (after - before) / 1024, "memory_method": "ru_maxrss delta"}


def run_case(args: argparse.Namespace, implementation: str, measure: str) -> dict:
    command = [
        sys.executable, __file__, "--worker", implementation, "--measure", measure,
        "--device", args.device, "--batch", str(args.batch), "--length", str(args.length),
        "--width", str(args.width), "--state", str(args.state), "--repeats", str(args.repeats),
        "--threads", str(args.threads),
    ]  # fmt: skip
    env = dict(os.environ)
    if measure == "memory":
        # glibc: serve every block above 64 KiB by mmap and unmap it when freed, so the
        # resident set follows the live tensors instead of keeping freed heap memory around
        # (this slows allocation down, hence timings come from a separate run without it)
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    if finished.returncode != 0:
        raise RuntimeError(
            f"benchmark case {implementation!r} ({measure}) failed:\n{finished.stderr[-3000:]}"
        )
    return json.loads(finished.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ tables


def s5_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for implementation, label in IMPLEMENTATIONS.items():
        result = {**run_case(args, implementation, "memory"), **run_case(args, implementation, "time")}
        rows.append({
            "layer": label,
            "device": args.device,
            "threads": args.threads if args.device == "cpu" else "-",
            "B L H P": f"{args.batch} {args.length} {args.width} {args.state}",
            "step": "per-step gaps [B L]",
            "fwd+bwd ms": f"{result['ms']:.1f}",
            "peak MB": f"{result['peak_mb']:.1f}",
            "_ms": result["ms"],
            "_peak_mb": result["peak_mb"],
            "_memory_method": result["memory_method"],
        })  # fmt: skip
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    """Markdown table of ``rows``; keys starting with ``_`` are kept out of it."""
    columns = [key for key in dict.fromkeys(k for row in rows for k in row) if not key.startswith("_")]
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row.get(column, "")) for column in columns) + " |")


def print_mamba_table(device: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from _bench_mamba import mamba_rows
    except ModuleNotFoundError as error:
        if error.name != "_bench_mamba":
            raise
        print("\n(scripts/_bench_mamba.py not found: no Mamba table)")
        return
    print_table("Mamba: torch implementation vs naive per-step loop", mamba_rows(device))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    rows = s5_rows(args)
    print_table("S5: ours vs s5-pytorch (forward + backward)", rows)
    ours, reference = rows
    print(
        f"\nours vs s5-pytorch: {reference['_ms'] / ours['_ms']:.1f}x faster, "
        f"{reference['_peak_mb'] / max(ours['_peak_mb'], 1e-9):.1f}x less peak memory "
        f"(median of {args.repeats} passes; peak memory: {ours['_memory_method']}, second pass)"
    )
    print_mamba_table(args.device)


if __name__ == "__main__":
    main()
