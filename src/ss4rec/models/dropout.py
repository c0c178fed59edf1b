"""Dropout with fast CPU masks: nn.Dropout's layer, several times faster on the CPU.

``nn.Dropout`` on the CPU draws its mask with ``bernoulli_``, which takes MKL's fast path
only on Intel CPUs; elsewhere it is a scalar loop over a Mersenne Twister. Measured on this
project's AMD EPYC (1 thread, a ``[75, 50, 64]`` float32 tensor, forward + backward,
``scripts/bench_dropout.py``): ``nn.Dropout`` 2.3-2.9 ms; masks from ``torch.rand`` 0.5-0.7x
that, masks from the C kernel 0.12-0.19x. An SS4Rec block runs two of them.

:class:`Dropout` keeps each element with probability ``1 - p`` and scales kept ones by
``1 / (1 - p)``: the distribution of ``nn.Dropout``, from 24-bit uniform draws. The masks
come from :func:`ss4rec.ssm.scan_fused.fused_dropout_mask` (SplitMix64 seeded from torch's
generator) where the CPU kernels built, else from ``torch.rand(...) >= p`` (float32 draws
whatever the input's dtype). Both are seeded by ``torch.manual_seed``, but neither is
``nn.Dropout``'s random stream: a seed gives other masks than ``nn.Dropout`` would. In eval
mode, off the CPU (where ``nn.Dropout`` is a fused kernel), for ``p`` 0 or 1 and with
``inplace`` it is ``nn.Dropout`` itself. No parameters: state_dicts are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ss4rec.ssm.scan_fused import fused_dropout_mask, fused_dropout_usable


class Dropout(nn.Dropout):
    """``nn.Dropout`` with fast masks on the CPU (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.inplace or x.device.type != "cpu" or self.p in (0.0, 1.0):
            return super().forward(x)
        if fused_dropout_usable(x):
            return x * fused_dropout_mask(x.shape, self.p).to(x.dtype)  # [...] 0 or 1/(1-p)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # [...] float32 draws: P = 1 - p
        return x * (keep * (1.0 / (1.0 - self.p))).to(x.dtype)
