"""Where one SS4Rec training step spends its CPU time, op by op (markdown table).

Usage::

    OMP_NUM_THREADS=1 python scripts/profile_train.py                 # L = 50 and 200, 1 thread
    python scripts/profile_train.py --lengths 50 --repeats 5 --model SASRec

Setup: the bundled ML-100K with ``ml-100k-quick``'s settings (sequence mode, batch 2048
targets, hidden 64, CE), one real training batch of the loader. Each part of the step is
timed alone (forward + backward, median CPU time of ``--repeats`` after one warm-up) on the tensors
it sees in that batch, so the rows add up to about the whole step (the last rows compare
the sum with the measured step). The loader row is one epoch of batches without the model,
divided by the number of batches. As in training: freed memory is kept for reuse
(:mod:`ss4rec.training.host_memory`) and Mamba's kernels skip each window's right padding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[50, 200])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="SS4Rec", choices=["SS4Rec", "SASRec"])
    return parser.parse_args(argv)


def _median_time(fn, repeats: int) -> float:
    """Median CPU time of fn() (this process's; steadier than wall time on a shared machine)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def _fwd_bwd(fn, *inputs):
    """A callable running fn(*inputs) forward and backward (gradients to the inputs given)."""
    leaves = [t.detach().requires_grad_(t.is_floating_point() or t.is_complex()) for t in inputs]
    with torch.no_grad():
        out = fn(*leaves)
    grads = [torch.randn_like(o) for o in (out if isinstance(out, tuple) else (out,))]  # drawn once

    def run():
        out = fn(*leaves)
        out = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(out, grads)
        for t in leaves:
            t.grad = None
    return run


def profile(length: int, args) -> list:
    import torch.nn.functional as F

    from ss4rec.data.loaders import create_dataset, prepare_data
    from ss4rec.data.sequences import TARGET_ITEMS, TARGET_MASK
    from ss4rec.models.losses import window_loss
    from ss4rec.models.ss4rec import time_intervals
    from ss4rec.config.files import resolve_config_file
    from ss4rec.pipeline.settings import build_config
    from ss4rec.ssm.scan_fused import fused_causal_conv1d_silu, fused_selective_scan, fused_scan_usable
    from ss4rec.ssm.s5 import zoh_scan

    settings = {"MAX_ITEM_LIST_LENGTH": length, "show_progress": False, "seed": 2020}
    config, model_class = build_config(args.model, "ml-100k", config_files=[resolve_config_file("ml-100k-quick")],
                                       config_dict=settings, device="cpu")
    torch.manual_seed(0)
    train_data, _, _ = prepare_data(config, create_dataset(config))
    net = model_class(config, train_data._dataset)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    batch = next(iter(train_data))
    rows = []

    def step():
        optimizer.zero_grad()
        window_loss(net, batch).backward()
        optimizer.step()

    step_s = _median_time(step, args.repeats)

    def epoch_of_batches():
        for _ in train_data:
            pass
    loader_s = _median_time(epoch_of_batches, 1) / len(train_data)
    rows.append(("data: loader (gather + collate windows)", loader_s))

    def optim():
        optimizer.step()
    rows.append(("optimizer step (Adam)", _median_time(optim, args.repeats)))
    def zero():
        optimizer.zero_grad(set_to_none=False)
    # the head
    hidden = net.position_output(batch).detach()  # [B L H]
    mask = batch[TARGET_MASK]
    targets = batch[TARGET_ITEMS][mask]
    weight = net.item_embedding.weight

    def head(h, w):
        logits = h[mask] @ w.t()
        return F.cross_entropy(logits, targets)
    rows.append(("head: mask gather, scores over all items, CE", _median_time(_fwd_bwd(head, hidden, weight), args.repeats)))

    if args.model == "SASRec":
        rows.append(("encoder (all layers)", _median_time(_fwd_bwd(lambda h: net.position_output(batch), hidden), args.repeats)))
    else:
        item_seq = batch[net.ITEM_SEQ]
        emb = lambda w: F.embedding(item_seq, w, padding_idx=0)  # noqa: E731
        rows.append(("item embedding lookup", _median_time(_fwd_bwd(emb, weight), args.repeats)))
        dt = (time_intervals(batch[net.TIME_SEQ], batch[net.ITEM_SEQ_LEN], batch[net.TIME_FIELD]) / net.time_unit).float()
        x = net.item_embedding(item_seq).detach()  # [B L H]
        parts = {}
        for block in net.model:
            s5 = block.S5
            lam_fn = lambda: s5.seq.stable_lambda(torch.complex64)  # noqa: E731

            def s5_in(u):
                return s5.seq.input_projection(u, lam_fn())
            scaled = s5_in(x).detach()
            scale = dt.unsqueeze(-1)

            def s5_scan_part(v):
                return zoh_scan(scale, s5.seq.log_step.exp(), lam_fn(), v, None)
            states = s5_scan_part(scaled).detach()

            def s5_out(st, u):
                return s5.seq.output_projection(st, torch.float32) + s5.seq.D * u
            add = parts.setdefault
            parts["S5: input projection B~u/Lambda (complex)"] = parts.get("S5: input projection B~u/Lambda (complex)", 0) + _median_time(_fwd_bwd(s5_in, x), args.repeats)
            parts["S5: discretisation + scan (zoh_scan)"] = parts.get("S5: discretisation + scan (zoh_scan)", 0) + _median_time(_fwd_bwd(s5_scan_part, scaled), args.repeats)
            parts["S5: output projection Re(C~x) + Du"] = parts.get("S5: output projection Re(C~x) + Du", 0) + _median_time(_fwd_bwd(s5_out, states, x), args.repeats)
            y5 = block.S5(x, dt).detach()

            def resid(a, b):
                return block.LayerNorm(a + block.dropout(b))
            t_res = _median_time(_fwd_bwd(resid, x, y5), args.repeats)
            parts["dropout + residual + LayerNorm (x2)"] = parts.get("dropout + residual + LayerNorm (x2)", 0) + 2 * t_res
            x = resid(x, y5).detach()
            m = block.S6
            inp = lambda h: m.in_proj(h)  # noqa: E731
            xz = inp(x).detach()
            parts["Mamba: in_proj"] = parts.get("Mamba: in_proj", 0) + _median_time(_fwd_bwd(inp, x), args.repeats)
            xc_in, z = xz.chunk(2, dim=-1)
            fused = fused_scan_usable(x)
            lengths = batch[net.ITEM_SEQ_LEN]  # the model skips each window's right padding
            conv = lambda a: fused_causal_conv1d_silu(a, m.conv1d.weight, m.conv1d.bias, lengths)  # noqa: E731
            parts["Mamba: causal conv1d + SiLU"] = parts.get("Mamba: causal conv1d + SiLU", 0) + _median_time(_fwd_bwd(conv, xc_in), args.repeats)
            xc = conv(xc_in).detach()

            def proj(a):
                dtr, B, C = torch.split(m.x_proj(a), [m.dt_rank, m.d_state, m.d_state], dim=-1)
                delta = F.softplus(F.linear(dtr, m.dt_proj.weight) + m.dt_proj.bias)
                return delta, B, C
            parts["Mamba: x_proj, dt_proj, softplus"] = parts.get("Mamba: x_proj, dt_proj, softplus", 0) + _median_time(_fwd_bwd(proj, xc), args.repeats)
            delta, B, C = (t.detach() for t in proj(xc))
            scan = lambda u, d, b, c, zz: fused_selective_scan(u, d, -torch.exp(m.A_log), b, c, D=m.D, z=zz, lengths=lengths)  # noqa: E731
            parts[f"Mamba: selective scan + skip + gate ({'fused C' if fused else 'torch'})"] = parts.get(f"Mamba: selective scan + skip + gate ({'fused C' if fused else 'torch'})", 0) + _median_time(_fwd_bwd(scan, xc, delta, B, C, z.contiguous()), args.repeats)
            ys = scan(xc, delta, B, C, z.contiguous()).detach()
            outp = lambda a: m.out_proj(a)  # noqa: E731
            parts["Mamba: out_proj"] = parts.get("Mamba: out_proj", 0) + _median_time(_fwd_bwd(outp, ys), args.repeats)
            x = block(x, dt, lengths).detach()
            del add
        rows.extend(parts.items())
    total = sum(t for _, t in rows)
    rows.append(("**sum of the parts**", total))
    rows.append(("**measured training step (loss, backward, Adam)** + loader", step_s + loader_s))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    global torch
    import torch

    torch.set_num_threads(args.threads)
    from ss4rec.training.host_memory import keep_freed_memory

    keep_freed_memory()  # as the trainer does on the CPU
    import os
    results = {length: profile(length, args) for length in args.lengths}
    names = [name for name, _ in results[args.lengths[0]]]
    print(f"# {args.model} training step, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}")
    header = "| part (per training step) | " + " | ".join(f"L={n} ms | %" for n in args.lengths) + " |"
    print(header)
    print("|---|" + "---:|---:|" * len(args.lengths))
    for i, name in enumerate(names):
        cells = []
        for length in args.lengths:
            rows = results[length]
            t = rows[i][1]
            step = rows[-1][1]
            cells.append(f"{t * 1e3:.1f} | {100 * t / step:.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
