"""GPU check: mamba-ssm's kernels against the PyTorch backend, mixed precision, speed and
memory, and the pod entrypoint's --debug run -- in under 10 minutes on one GPU.

    python scripts/gpu_check.py                         # on the GPU machine, after ss4rec kernels install
    python scripts/gpu_check.py --out gpu_check.json    # also keep every number as JSON

Sections (one table each, then PASS or FAIL; exit 1 on any failure):

1. environment: the environment block and the backend facts (versions, GPU, the proof);
2. parity: kernels vs PyTorch backend for one Mamba layer and for the whole SS4Rec (its
   output, its loss and every gradient), in fp32 and bf16 (``torch.autocast``), with and
   without causal-conv1d, at the ``--debug`` and the paper's shapes; the largest relative
   difference (to the largest value of each tensor) must stay under ``--fp32-tol`` /
   ``--bf16-tol``;
3. training: ``--steps`` Adam steps on one batch (same initial weights) per backend and
   precision at the paper's shape; the loss curves of the two backends are compared
   (``--curve-tol``), the loss must fall; time per step (median after 3 warm-up steps) and
   peak GPU memory;
4. the entrypoint: ``runpod_entrypoint.sh --model ss4rec-official --debug --device cuda``
   (data, one epoch, test metrics), its seconds per epoch and peak GPU memory.

On CPU (``--device cpu``), the kernel side runs wherever mamba-ssm imports with its
compiled parts replaced by its reference functions (the test suite's stand-ins,
tests/kernel_env.py); use ``--shapes tiny --steps 3 --no-entrypoint`` there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)  # mamba-ssm's torch.cuda.amp notices

import torch  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.data.interaction import Interaction  # noqa: E402

import ss4rec  # noqa: E402,F401  (registers SS4Rec with RecBole)
from ss4rec.commands.train import DEBUG_SETTINGS  # noqa: E402
from ss4rec.pipeline.envinfo import environment_info, format_environment  # noqa: E402
from ss4rec.pipeline.settings import build_config  # noqa: E402
from ss4rec.ssm import mamba as mamba_module  # noqa: E402
from ss4rec.ssm.kernels import loaded_kernels  # noqa: E402
from ss4rec.ssm.mamba import Mamba, backend_facts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# (batch, length, hidden, d_state, d_P, expand): the --debug preset, the paper's ML-1M
# setting (config `ss4rec` with SS4Rec's defaults), and a tiny one for CPU tests.
SHAPES = {
    "debug": dict(batch=DEBUG_SETTINGS["train_batch_size"], length=DEBUG_SETTINGS["MAX_ITEM_LIST_LENGTH"],
                  hidden=DEBUG_SETTINGS["hidden_size"], d_state=DEBUG_SETTINGS["d_state"],
                  d_P=DEBUG_SETTINGS["d_P"], expand=DEBUG_SETTINGS["expand"]),
    "paper": dict(batch=1024, length=200, hidden=64, d_state=32, d_P=32, expand=2),
    "tiny": dict(batch=4, length=12, hidden=16, d_state=4, d_P=4, expand=1),
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (reference kernels)")
    parser.add_argument("--shapes", nargs="+", default=["debug", "paper"], choices=list(SHAPES),
                        help="parity shapes (default: debug paper)")
    parser.add_argument("--train-shape", default=None, choices=list(SHAPES),
                        help="shape of the training runs (default: the last of --shapes)")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per backend and precision")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--fp32-tol", type=float, default=1e-3, help="parity tolerance in fp32")
    parser.add_argument("--bf16-tol", type=float, default=0.1, help="parity tolerance in bf16")
    parser.add_argument("--curve-tol", type=float, default=2e-2,
                        help="largest relative difference of the two backends' losses at any step")
    parser.add_argument("--no-entrypoint", action="store_true", help="skip the entrypoint's --debug run")
    parser.add_argument("--entrypoint-timeout", type=int, default=420, help="seconds")
    parser.add_argument("--out", default=None, help="write every row as JSON here")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------- helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def relative(kernel: torch.Tensor, reference: torch.Tensor) -> float:
    kernel, reference = kernel.detach(), reference.detach()
    if kernel.is_complex():  # S5's complex parameters: compare real and imaginary parts
        kernel, reference = torch.view_as_real(kernel), torch.view_as_real(reference)
    if not torch.isfinite(kernel).all():
        return float("inf")
    scale = reference.float().abs().max().clamp_min(1e-12)
    return float((kernel.float() - reference.float()).abs().max() / scale)


def cpu_autocast_gap(device: torch.device, precision: str, conv: bool) -> str:
    """Why a case cannot run on CPU ('' when it can): mamba_inner_fn casts its weights for CUDA
    autocast only (torch.is_autocast_enabled()), so under CPU autocast its backward mixes
    fp32 weights with bf16 gradients. On the GPU the case runs."""
    if device.type != "cuda" and precision != "fp32" and conv:
        return "mamba_inner_fn handles CUDA autocast only; run on the GPU"
    return ""


def worst(differences: dict) -> tuple:
    name = max(differences, key=differences.get)
    return differences[name], name


def set_backend(module: torch.nn.Module, backend: str, conv: bool = True) -> None:
    for layer in module.modules():
        if isinstance(layer, Mamba):
            layer.backend = backend
            layer.use_causal_conv1d = conv


def build_model(shape: dict):
    """SS4Rec at ``shape`` on the bundled ML-100K's small subset (the model needs its item count)."""
    overrides = {"hidden_size": shape["hidden"], "d_state": shape["d_state"], "d_P": shape["d_P"],
                 "expand": shape["expand"], "MAX_ITEM_LIST_LENGTH": shape["length"], "mamba_backend": "torch"}
    config, model_class = build_config("SS4Rec", "ml-100k", ["tiny"], overrides, device="cpu",
                                       output_dir=tempfile.mkdtemp(prefix="gpu-check-"))
    train, _, _ = data_preparation(config, create_dataset(config))
    return lambda: model_class(config, train._dataset)


def make_batches(model, shape: dict, count: int, device: torch.device) -> list:
    """Synthetic histories at ``shape``: random items, lengths and gaps (seconds), CE targets."""
    g = torch.Generator().manual_seed(123)
    batches = []
    for _ in range(count):
        batch, length = shape["batch"], shape["length"]
        seq_len = torch.randint(max(1, length // 2), length + 1, (batch,), generator=g)
        items = torch.randint(1, model.n_items, (batch, length), generator=g)
        gaps = torch.rand(batch, length, generator=g, dtype=torch.float64) * 3600 * 24
        times = 1.6e9 + torch.cumsum(gaps, dim=1)
        position = torch.arange(length)
        real = position < seq_len[:, None]
        items, times = torch.where(real, items, 0), torch.where(real, times, 0.0)
        target_time = times.gather(1, (seq_len - 1)[:, None]).squeeze(1) + 60.0
        data = {model.ITEM_SEQ: items, model.ITEM_SEQ_LEN: seq_len, model.TIME_SEQ: times,
                model.TIME_FIELD: target_time,
                model.POS_ITEM_ID: torch.randint(1, model.n_items, (batch,), generator=g)}
        batches.append(Interaction(data).to(device))
    return batches


# ------------------------------------------------------------------------------- parity

def layer_parity(shape: dict, precision: str, conv: bool, device: torch.device) -> dict:
    torch.manual_seed(0)
    layer = Mamba(shape["hidden"], d_state=shape["d_state"], d_conv=4, expand=shape["expand"],
                  backend="torch").to(device)
    layer.use_causal_conv1d = conv
    hidden = torch.randn(shape["batch"], shape["length"], shape["hidden"], device=device)
    weights = torch.randn_like(hidden)
    found = {}
    for path in ("cuda", "torch"):
        inputs = hidden.clone().requires_grad_()
        with autocast(device, precision):
            out = layer._forward_cuda(inputs) if path == "cuda" else layer._forward_torch(inputs)
        grads = torch.autograd.grad((out.float() * weights).sum(), [inputs, *layer.parameters()])
        found[path] = [out, *grads]
    names = ["output", "input grad"] + [f"grad {n}" for n, _ in layer.named_parameters()]
    return {n: relative(k, t) for n, k, t in zip(names, found["cuda"], found["torch"])}


def model_parity(factory, shape: dict, precision: str, conv: bool, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = factory().to(device).eval()  # eval: no dropout, so both backends see one function
    batch = make_batches(model, shape, 1, device)[0]
    found = {}
    for backend in ("cuda", "torch"):
        set_backend(model, backend, conv)
        model.zero_grad(set_to_none=True)
        with autocast(device, precision):
            out = model._seq_output(batch)
            loss = model.calculate_loss(batch)
        loss.float().backward()
        found[backend] = [out.detach(), loss.detach()] + [p.grad for _, p in model.named_parameters()]
    names = ["output", "loss"] + [f"grad {n}" for n, _ in model.named_parameters()]
    return {n: relative(k, t) for n, k, t in zip(names, found["cuda"], found["torch"])}


# ------------------------------------------------------------------------------- training

def train_run(factory, batches: list, backend: str, precision: str, steps: int, device: torch.device,
              conv: bool = True) -> dict:
    torch.manual_seed(0)
    model = factory().to(device).train()
    set_backend(model, backend, conv)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses, seconds = [], []
    for step in range(steps):
        batch = batches[step % len(batches)]
        sync(device)
        start = time.perf_counter()
        with autocast(device, precision):
            loss = model.calculate_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()
        sync(device)
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    ran = sorted({m.last_backend for m in model.modules() if isinstance(m, Mamba)})
    timed = seconds[3:] or seconds
    return {"losses": losses, "ms_per_step": 1000 * statistics.median(timed), "ran": ran,
            "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


# ------------------------------------------------------------------------------- entrypoint

def entrypoint_run(device: torch.device, timeout: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="gpu-check-debug-")) / "run"
    command = ["bash", str(REPO / "runpod_entrypoint.sh"), "--model", "ss4rec-official", "--dataset", "ml-100k",
               "--debug", "--device", device.type, "--output", str(out)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHON": sys.executable})
    except subprocess.TimeoutExpired:
        return {"ok": False, "detail": f"did not finish in {timeout} s", "command": " ".join(command)}
    wall = time.perf_counter() - start
    results = out / "results.json"
    if proc.returncode != 0 or not results.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"ok": False, "detail": f"exit {proc.returncode}: " + " | ".join(tail), "command": " ".join(command)}
    result = json.loads(results.read_text())
    return {"ok": True, "wall_s": wall, "seconds_per_epoch": result.get("seconds_per_epoch"),
            "ndcg@10": result.get("test", {}).get("ndcg@10"), "peak_gpu_memory_mb": result.get("peak_gpu_memory_mb"),
            "run_dir": str(out), "command": " ".join(command)}


# ------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device (use --device cpu with reference kernels)", file=sys.stderr)
        return 1
    if device.type != "cuda":  # the kernels' code path on this device, with reference kernels
        mamba_module.KERNEL_DEVICE_TYPES = tuple(dict.fromkeys((*mamba_module.KERNEL_DEVICE_TYPES, device.type)))
    started = time.perf_counter()
    report = {"device": str(device), "rows": [], "failures": []}

    def fail(what: str) -> None:
        report["failures"].append(what)

    # 1. environment
    print(format_environment(environment_info(check_kernels=device.type == "cuda")))
    facts = backend_facts("cuda", device)
    report["backend_facts"] = facts
    print(f"\nbackend facts ({device}): " + json.dumps(facts, indent=2))
    kernels = loaded_kernels()
    if facts["backend"] != "cuda":
        fail(f"the kernels do not run on {device}: {facts['reason']}")

    # 2. parity
    print("\n## kernels vs PyTorch backend (largest relative difference; worst tensor)\n")
    print("| scope | shape | precision | causal-conv1d | max rel. diff | worst | verdict |")
    print("|---|---|---|---|---:|---|---|")
    factories = {}
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        factories[shape_name] = build_model(shape)
        for scope in ("layer", "model"):
            for precision in args.precisions:
                tol = args.fp32_tol if precision == "fp32" else args.bf16_tol
                for conv in (True, False):
                    row = {"section": "parity", "scope": scope, "shape": shape_name, "precision": precision,
                           "causal_conv1d": conv}
                    if conv and not kernels.conv_loaded:
                        row.update(verdict="SKIP", detail="mamba-ssm loaded no causal-conv1d")
                    elif cpu_autocast_gap(device, precision, conv):
                        row.update(verdict="SKIP", detail=cpu_autocast_gap(device, precision, conv))
                    elif facts["backend"] != "cuda":
                        row.update(verdict="FAIL", detail="kernels unavailable")
                    else:
                        try:
                            if scope == "layer":
                                differences = layer_parity(shape, precision, conv, device)
                            else:
                                differences = model_parity(factories[shape_name], shape, precision, conv, device)
                            value, name = worst(differences)
                            row.update(max_rel_diff=value, worst=name, differences=differences,
                                       verdict="PASS" if value <= tol else "FAIL")
                        except Exception as exc:  # a kernel that raises is a finding
                            row.update(verdict="FAIL", detail=f"{type(exc).__name__}: {exc}".splitlines()[0])
                    if row["verdict"] == "FAIL":
                        fail(f"parity {scope} {shape_name} {precision} conv={conv}: "
                             f"{row.get('detail') or row['worst']} {row.get('max_rel_diff', '')}")
                    report["rows"].append(row)
                    diff = f"{row['max_rel_diff']:.1e}" if "max_rel_diff" in row else "-"
                    print(f"| {scope} | {shape_name} | {precision} | {'with' if conv else 'without'} | {diff} | "
                          f"{row.get('worst') or row.get('detail', '')} | {row['verdict']} |", flush=True)

    # 3. training
    train_shape = args.train_shape or args.shapes[-1]
    shape = SHAPES[train_shape]
    factory = factories.get(train_shape) or build_model(shape)
    # one batch, stepped on repeatedly: the loss must fall, and both backends see the same data
    batches = make_batches(factory(), shape, 1, device)
    print(f"\n## {args.steps} training steps per backend and precision ({train_shape}: batch {shape['batch']}, "
          f"length {shape['length']}, hidden {shape['hidden']})\n")
    print("| backend | precision | first loss | last loss | ms / step | peak GPU MB | curve vs torch | verdict |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for precision in args.precisions:
        runs = {}
        for backend in ("torch", "cuda"):
            row = {"section": "training", "shape": train_shape, "backend": backend, "precision": precision}
            if backend == "cuda" and facts["backend"] != "cuda":
                row.update(verdict="FAIL", detail="kernels unavailable")
            else:
                conv = kernels.conv_loaded and not cpu_autocast_gap(device, precision, True)
                row["causal_conv1d"] = conv
                try:
                    run = train_run(factory, batches, backend, precision, args.steps, device, conv)
                    runs[backend] = run
                    falls = run["losses"][-1] < run["losses"][0]
                    row.update(run, verdict="PASS" if falls and run["ran"] == [backend] else "FAIL")
                    if not falls:
                        row["detail"] = "loss did not fall"
                    if run["ran"] != [backend]:
                        row["detail"] = f"ran on {run['ran']}"
                except Exception as exc:
                    row.update(verdict="FAIL", detail=f"{type(exc).__name__}: {exc}".splitlines()[0])
            if backend == "cuda" and len(runs) == 2:
                curve = max(abs(a - b) / abs(b) for a, b in zip(runs["cuda"]["losses"], runs["torch"]["losses"]))
                row["curve_rel_diff"] = curve
                if curve > args.curve_tol:
                    row.update(verdict="FAIL", detail=f"loss curves differ by {curve:.1e}")
            if row["verdict"] == "FAIL":
                fail(f"training {backend} {precision}: {row.get('detail', '')}")
            report["rows"].append(row)
            losses = row.get("losses") or [float("nan")]
            peak = f"{row['peak_mb']:.0f}" if row.get("peak_mb") is not None else "-"
            ms = f"{row['ms_per_step']:.1f}" if "ms_per_step" in row else "-"
            curve = f"{row['curve_rel_diff']:.1e}" if "curve_rel_diff" in row else "-"
            print(f"| {backend} | {precision} | {losses[0]:.4f} | {losses[-1]:.4f} | {ms} | {peak} | {curve} | "
                  f"{row['verdict']}{(' (' + row['detail'] + ')') if row.get('detail') else ''} |", flush=True)
        if "cuda" in runs and "torch" in runs:
            speedup = runs["torch"]["ms_per_step"] / runs["cuda"]["ms_per_step"]
            report.setdefault("torch_backend_slowdown", {})[precision] = speedup
            print(f"\n{precision}: the PyTorch backend takes {speedup:.2f}x the kernels' time per step\n")

    # 4. the entrypoint's --debug run
    if not args.no_entrypoint:
        print(f"\n## runpod_entrypoint.sh --debug --device {device.type}\n")
        row = {"section": "entrypoint", **entrypoint_run(device, args.entrypoint_timeout)}
        report["rows"].append(row)
        if row["ok"]:
            peak = row["peak_gpu_memory_mb"]
            print(f"PASS: {row['seconds_per_epoch']:.1f} s per epoch, test NDCG@10 {row['ndcg@10']:.4f}, "
                  f"peak GPU {peak if peak is None else round(peak)} MB, {row['wall_s']:.0f} s in all ({row['run_dir']})")
        else:
            print(f"FAIL: {row['detail']} ({row['command']})")
            fail(f"entrypoint --debug: {row['detail']}")

    report["seconds"] = time.perf_counter() - started
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"\ngpu_check: {report['seconds']:.0f} s, {len(report['failures'])} failure(s)")
    for failure in report["failures"]:
        print(f"  FAIL {failure}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
