"""State space layers: the time-aware S5 and the (relation-aware) Mamba / S6.

    >>> import torch
    >>> from ss4rec.ssm import S5, Mamba
    >>> x = torch.randn(2, 10, 64)                      # [B L H]
    >>> gaps = torch.rand(2, 10) * 100                  # [B L] time gaps
    >>> S5(64, 32)(x, gaps).shape
    torch.Size([2, 10, 64])
    >>> Mamba(64, d_state=32, d_conv=4, expand=2, backend="torch")(x).shape
    torch.Size([2, 10, 64])
"""

import importlib

# Imported on first use, so `ss4rec.ssm.s5` works without loading Mamba and vice versa.
_EXPORTS = {"S5": "ss4rec.ssm.s5", "Mamba": "ss4rec.ssm.mamba",
            "mamba_kernels_available": "ss4rec.ssm.mamba"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
