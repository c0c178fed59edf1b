"""Dropout whose CPU masks come from uniform draws: the same layer, 2x faster on AMD CPUs.

``nn.Dropout`` on the CPU draws its mask with ``bernoulli_``, which takes MKL's fast path
only on Intel CPUs; elsewhere it is a scalar loop. Measured on this project's AMD EPYC
(1 thread, a ``[75, 50, 64]`` float32 tensor, forward + backward): ``nn.Dropout`` 2.25 ms,
this layer 1.22 ms; an SS4Rec block runs two of them.

:class:`Dropout` keeps each element with probability ``1 - p`` (``torch.rand(...) >= p``,
float32 draws whatever the input's dtype) and scales kept ones by ``1 / (1 - p)``: the
distribution of ``nn.Dropout``, and the same seeding (torch's generator), but not its random
stream, so a seed gives other masks than ``nn.Dropout`` would. In eval mode, off the CPU
(where ``nn.Dropout`` is a fused kernel), for ``p`` 0 or 1 and with ``inplace`` it is
``nn.Dropout`` itself. No parameters: state_dicts are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """``nn.Dropout`` with masks from ``torch.rand`` on the CPU (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.inplace or x.device.type != "cpu" or self.p in (0.0, 1.0):
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # [...] float32 draws: P = 1 - p
        return x * (keep * (1.0 / (1.0 - self.p))).to(x.dtype)
