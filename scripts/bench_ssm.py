"""Benchmark the SSM layers: our time-aware S5 vs s5-pytorch 0.2.1 (forward + backward).

Usage::

    python scripts/bench_ssm.py                      # CPU, B=64 L=200 H=64 P=32, 1 thread
    python scripts/bench_ssm.py --device cuda
    python scripts/bench_ssm.py --threads 2 --repeats 5
    python scripts/bench_ssm.py --skip-mamba         # only the S5 table

Prints markdown tables: time per forward+backward (median over ``--repeats``) and peak extra
memory, with random positive per-step gaps ``[B L]`` (what SS4Rec feeds its S5 layer).

* Time: one subprocess alternates passes of the two layers (so a busy machine slows both
  alike) and reports wall time and process CPU time.
* Memory: each layer in its own fresh subprocess, so peaks do not mix. On CPU: the
  resident-set high water mark (``VmHWM``, reset through ``/proc/self/clear_refs``;
  ``ru_maxrss`` where that is not possible) of the second full-size forward+backward, minus
  the resident set before it, with glibc told to return freed blocks to the system
  (``MALLOC_MMAP_THRESHOLD_``) so the resident set follows the live tensors. On CUDA:
  ``torch.cuda.max_memory_allocated`` above the memory already allocated.

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
    parser.add_argument("--skip-mamba", action="store_true", help="print only the S5 table")
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


def build_case(args: argparse.Namespace, implementation: str):
    """A closure running one forward+backward of ``implementation`` on the benchmark batch."""
    import torch

    device = torch.device(args.device)
    torch.manual_seed(0)  # same parameters and inputs for both implementations
    if implementation == "ours":
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
        if device.type == "cuda":
            torch.cuda.synchronize()

    return forward_backward


def run_worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if args.measure == "memory":
        forward_backward = build_case(args, args.worker)
        # The first pass also allocates one-time state (about 30 MB for either layer on CPU:
        # library workspaces, the autograd engine); the peak is taken on the second pass.
        forward_backward()
        return measure_peak_memory(forward_backward, torch.device(args.device))

    # Time both layers in one process, alternating passes, so a busy machine slows both alike.
    cases = {name: build_case(args, name) for name in IMPLEMENTATIONS}
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    for case in cases.values():
        case()  # warm-up
    for _ in range(args.repeats):
        for name, case in cases.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            case()
            cpu[name].append(time.process_time() - cpu_start)
            wall[name].append(time.perf_counter() - wall_start)
    return {
        name: {"ms": 1000 * statistics.median(wall[name]), "cpu_ms": 1000 * statistics.median(cpu[name])}
        for name in cases
    }


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


def run_worker_process(args: argparse.Namespace, measure: str, implementation: str = "ours") -> dict:
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
        raise RuntimeError(f"benchmark worker ({measure}) failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ tables


def s5_rows(args: argparse.Namespace) -> list[dict]:
    times = run_worker_process(args, "time")
    rows = []
    for implementation, label in IMPLEMENTATIONS.items():
        memory = run_worker_process(args, "memory", implementation)
        timing = times[implementation]
        rows.append({
            "layer": label,
            "device": args.device,
            "threads": args.threads if args.device == "cpu" else "-",
            "B L H P": f"{args.batch} {args.length} {args.width} {args.state}",
            "step": "per-step gaps [B L]",
            "fwd+bwd ms (wall)": f"{timing['ms']:.1f}",
            "fwd+bwd ms (CPU)": f"{timing['cpu_ms']:.1f}",
            "peak MB": f"{memory['peak_mb']:.1f}",
            "_ms": timing["ms"],
            "_cpu_ms": timing["cpu_ms"],
            "_peak_mb": memory["peak_mb"],
            "_memory_method": memory["memory_method"],
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
        f"\nours vs s5-pytorch: {reference['_ms'] / ours['_ms']:.1f}x faster (wall), "
        f"{reference['_cpu_ms'] / ours['_cpu_ms']:.1f}x less CPU time, "
        f"{reference['_peak_mb'] / max(ours['_peak_mb'], 1e-9):.1f}x less peak memory\n"
        f"(medians of {args.repeats} alternating passes in one process; peak memory: "
        f"{ours['_memory_method']} on a second pass, one process per layer)"
    )
    if not args.skip_mamba:
        print_mamba_table(args.device)


if __name__ == "__main__":
    main()
