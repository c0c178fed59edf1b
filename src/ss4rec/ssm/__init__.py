"""State space layers: the time-aware S5 and the (relation-aware) Mamba / S6.

    >>> import torch
    >>> from ss4rec.ssm import S5, Mamba
    >>> x = torch.randn(2, 10, 64)                      # [B L H]
    >>> gaps = torch.rand(2, 10) * 100                  # [B L] time gaps
    >>> S5(64, 32)(x, gaps).shape
    torch.Size([2, 10, 64])
    >>> Mamba(64, d_state=32, d_conv=4, expand=2, backend="torch")(x).shape
    torch.Size([2, 10, 64])

Layer rule: plain PyTorch layers; may import :mod:`ss4rec.errors` only (never data,
models, training or anything above).
"""

from ss4rec.ssm.mamba import Mamba, mamba_kernels_available
from ss4rec.ssm.s5 import S5

__all__ = ["S5", "Mamba", "mamba_kernels_available"]
