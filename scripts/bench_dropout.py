"""Benchmark dropout on the CPU: nn.Dropout against SS4Rec's Dropout (ss4rec.models.dropout).

Usage::

    python scripts/bench_dropout.py                     # [75, 50, 64] (an ML-100K batch at L=50), 1 thread
    python scripts/bench_dropout.py --shape 28 200 64 --repeats 50

Forward + backward of each variant, alternated in one process (a busy machine slows all
alike); median CPU milliseconds. Variants: ``nn.Dropout`` (``bernoulli_``), masks from
``torch.rand`` (SS4Rec's fallback when the C kernels did not build), masks from the C
kernel (SS4Rec's default on the CPU). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ss4rec.models.dropout import Dropout
from ss4rec.ssm.scan_fused import fused_dropout_usable


def rand_mask_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return x * ((torch.rand(x.shape) >= p) * (1.0 / (1.0 - p)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs="+", type=int, default=[75, 50, 64])
    parser.add_argument("--p", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {
        "nn.Dropout (bernoulli_)": torch.nn.Dropout(args.p).train(),
        "masks from torch.rand": lambda x: rand_mask_dropout(x, args.p),
        "SS4Rec's Dropout (C kernel masks)" if fused_dropout_usable(torch.zeros(1)) else
        "SS4Rec's Dropout (kernels not built: torch.rand)": Dropout(args.p).train(),
    }
    x = torch.randn(*args.shape, requires_grad=True)
    grad = torch.randn(*args.shape)
    times = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):  # the first pass warms up
        for name, layer in variants.items():
            start = time.process_time()
            layer(x).backward(grad)
            if repeat:
                times[name].append(time.process_time() - start)
            x.grad = None
    base = statistics.median(times["nn.Dropout (bernoulli_)"])
    print(f"# dropout p={args.p}, shape {args.shape}, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}")
    print("| variant | forward + backward (CPU ms, median) | x nn.Dropout |")
    print("|---|---:|---:|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median * 1e3:.2f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
