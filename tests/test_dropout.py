"""SS4Rec's dropout (ss4rec.models.dropout): nn.Dropout's layer with fast CPU masks (the C
kernel's SplitMix64, or torch.rand where the kernels did not build)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from ss4rec.models.dropout import Dropout


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_keeps_one_minus_p_and_scales_what_it_keeps(p):
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros of its own
    layer = Dropout(p).train()
    x.requires_grad_()
    out = layer(x)
    kept = out != 0
    fraction = kept.float().mean().item()
    sigma = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(fraction - (1 - p)) < 5 * sigma, fraction
    torch.testing.assert_close(out[kept], x[kept] / (1 - p), rtol=1e-6, atol=0)
    out.sum().backward()
    # the gradient is the same mask and scale
    assert torch.equal(x.grad != 0, kept)
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / (1 - p)))


def test_same_seed_same_mask_and_eval_is_identity():
    x = torch.randn(64, 50, 32)
    layer = Dropout(0.3).train()
    torch.manual_seed(7)
    first = layer(x)
    torch.manual_seed(7)
    assert torch.equal(layer(x), first)
    assert torch.equal(layer.eval()(x), x)


def test_bfloat16_keeps_its_dtype_and_the_keep_probability():
    torch.manual_seed(1)
    x = torch.ones(500, 1000, dtype=torch.bfloat16)
    out = Dropout(0.2).train()(x)
    assert out.dtype == torch.bfloat16
    assert abs((out != 0).float().mean().item() - 0.8) < 0.004


def test_edges_and_other_devices_are_nn_dropout():
    x = torch.randn(10, 10)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert not Dropout(1.0).train()(x).any()
    meta = Dropout(0.2).train()(torch.empty(4, 5, device="meta"))  # off the CPU: nn.Dropout
    assert meta.shape == (4, 5) and meta.device.type == "meta"
    assert isinstance(Dropout(0.1), nn.Dropout) and not list(Dropout(0.1).state_dict())


def test_masks_do_not_depend_on_the_thread_count_and_neighbours_are_independent():
    x = torch.ones(2000, 1001)  # odd length: the last element of the kernel's pairs
    layer = Dropout(0.5).train()
    masks = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(3)
        masks.append(layer(x) != 0)
    torch.set_num_threads(1)
    assert torch.equal(masks[0], masks[1])
    flat = masks[0].flatten().float()
    even, odd = flat[0:-1:2], flat[1::2]  # the two halves of one 64-bit draw
    correlation = torch.corrcoef(torch.stack([even, odd]))[0, 1].item()
    assert abs(correlation) < 5 / even.numel() ** 0.5, correlation


def test_without_the_kernels_masks_come_from_torch_rand():
    code = ("import torch; from ss4rec.models.dropout import Dropout; from ss4rec.ssm.scan_fused import "
            "fused_dropout_usable; torch.manual_seed(0); out = Dropout(0.2).train()(torch.ones(1000, 1000)); "
            "print(fused_dropout_usable(out), round((out != 0).float().mean().item(), 3), out.max().item())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SS4REC_FUSED_SCAN": "0"})
    assert proc.returncode == 0, proc.stderr
    usable, kept, largest = proc.stdout.split()
    assert usable == "False" and abs(float(kept) - 0.8) < 0.003 and float(largest) == 1.25
