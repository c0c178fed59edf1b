"""Mamba (S6) layer in pure PyTorch, with mamba-ssm's CUDA kernels as an optional backend.

:class:`Mamba` is a drop-in for ``mamba_ssm.Mamba`` (mamba-ssm 2.2.x,
``mamba_ssm/modules/mamba_simple.py``): same constructor arguments, same parameter names,
shapes and initialisation, same forward maths. One ``state_dict`` serves both backends:

- ``backend="torch"``: runs anywhere. The selective scan is :func:`ss4rec.ssm.scan.selective_scan`,
  a chunked op with a hand-written backward, or on CPU (float32) the fused C kernels of
  :mod:`ss4rec.ssm.scan_fused` (conv + SiLU; scan + skip + gate) when they build here
  (same maths, several times faster).
- ``backend="cuda"``: calls mamba-ssm's fused functions (``mamba_inner_fn``, or
  ``selective_scan_fn`` when ``causal_conv1d`` is missing) with this module's parameters.
  Needs ``pip install 'ss4rec[gpu]'`` and a CUDA device; asking for it without them raises.
- ``backend="auto"`` (default): ``cuda`` when the input is on a CUDA device and the
  kernels import, else ``torch``. The choice is logged (``logging``, INFO) once per module,
  and again only if it changes.

Forward, for ``hidden`` of shape ``[B, L, d_model]``::

    x, z  = split(in_proj(hidden))                  # [B L d_inner] each
    x     = silu(causal depthwise conv1d(x))
    dt, B, C = split(x_proj(x))                     # [B L dt_rank], [B L d_state] x 2
    delta = softplus(dt_proj(dt))                   # bias inside the softplus, fp32
    y     = selective_scan(x, delta, A=-exp(A_log), B, C) + D * x
    out   = out_proj(y * silu(z))                   # [B L d_model]

Example::

    >>> import torch
    >>> from ss4rec.ssm.mamba import Mamba, mamba_kernels_available
    >>> layer = Mamba(d_model=64, d_state=32, d_conv=4, expand=2)   # backend="auto"
    >>> out = layer(torch.randn(8, 50, 64))                          # [B L d_model]
    >>> out.shape
    torch.Size([8, 50, 64])
    >>> sorted(layer.state_dict())[:3]
    ['A_log', 'D', 'conv1d.bias']
    >>> ok, why = mamba_kernels_available()   # (False, "...") on a machine without them
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ss4rec.errors import ConfigError, UserError
from ss4rec.ssm.scan import DEFAULT_CHUNK_SIZE, selective_scan, selective_scan_reference
from ss4rec.ssm.scan_fused import fused_causal_conv1d_silu, fused_scan_usable, fused_selective_scan

logger = logging.getLogger(__name__)
_ANNOUNCED: set = set()  # (backend, reason) pairs auto has logged in this process

BACKENDS = ("auto", "cuda", "torch")
GPU_INSTALL_HINT = "pip install 'ss4rec[gpu]'"


@functools.lru_cache(maxsize=None)
def _import_mamba_ops() -> Tuple[Optional[dict], str]:
    """Import mamba-ssm's fused functions once. Returns (ops or None, why)."""
    try:
        import mamba_ssm
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    except Exception as exc:  # ImportError, or an OSError/RuntimeError from a broken .so
        return None, f"mamba_ssm's CUDA kernels do not import ({type(exc).__name__}: {exc})"
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # optional: mamba-ssm itself falls back to nn.Conv1d without it
        causal_conv1d_fn = None
    ops = {
        "mamba_inner_fn": mamba_inner_fn,
        "selective_scan_fn": selective_scan_fn,
        "causal_conv1d_fn": causal_conv1d_fn,
    }
    conv = "with causal_conv1d" if causal_conv1d_fn is not None else "without causal_conv1d"
    return ops, f"mamba_ssm {getattr(mamba_ssm, '__version__', '?')} kernels import ({conv})"


def mamba_kernels_available() -> Tuple[bool, str]:
    """Whether the ``cuda`` backend can run here, and why (or why not).

    >>> ok, reason = mamba_kernels_available()
    """
    ops, reason = _import_mamba_ops()
    if ops is None:
        return False, reason
    if not torch.cuda.is_available():
        return False, f"{reason}, but torch sees no CUDA device"
    return True, reason


class Mamba(nn.Module):
    """Mamba (S6) block: ``[B, L, d_model] -> [B, L, d_model]``; see the module docstring.

    Arguments are mamba-ssm 2.2.x's (``use_fast_path``/``layer_idx`` are replaced by
    ``backend``), plus ``scan_chunk_size`` for the torch scan (memory vs. loop overhead).
    Attributes: ``last_backend`` is what the latest forward ran on; ``scan_impl`` picks the
    torch backend's scan: ``"auto"`` (default: ``"fused"`` for float32 on CPU when the C
    kernel builds, else ``"chunked"``), ``"fused"``, ``"chunked"`` or ``"reference"`` (the
    slow per-step loop, for benchmarks).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank="auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
        scan_chunk_size: int = DEFAULT_CHUNK_SIZE,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(
                f"Mamba: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if dt_init not in ("random", "constant"):
            raise ConfigError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if backend == "cuda":
            ok, reason = mamba_kernels_available()
            if not ok:
                raise UserError(
                    f"Mamba(backend='cuda') cannot run: {reason}. Fix: {GPU_INSTALL_HINT} on a "
                    "machine with a CUDA GPU, or use backend='torch' (pure PyTorch, any device)."
                )
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.scan_chunk_size = scan_chunk_size
        # torch backend's scan: "auto", "fused" (C kernel, CPU), "chunked" or "reference"
        self.scan_impl = "auto"
        self.last_backend: Optional[str] = None  # what the latest forward ran on
        self._logged_backend: Optional[str] = None

        # Modules are created (and random numbers drawn) in mamba-ssm's order, so the same
        # seed gives the same initial weights as mamba_ssm.Mamba.
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
            padding=d_conv - 1, bias=conv_bias, **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj.weight scaled so dt_proj(dt) keeps unit-ish variance at init
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # dt_proj.bias such that softplus(bias) is log-uniform in [dt_min, dt_max]
        log_span = math.log(dt_max) - math.log(dt_min)
        dt = torch.exp(torch.rand(self.d_inner, **factory) * log_span + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        inverse_softplus_dt = dt + torch.log(-torch.expm1(-dt))  # softplus(this) == dt
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus_dt)
        # tells weight-init code (e.g. a model's _init_weights that zeroes biases) to leave it
        self.dt_proj.bias._no_reinit = True

        # S4D-real init A[d, n] = -(n + 1); A_log and D stay fp32 whatever `dtype` is
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # [d_inner d_state]
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # [d_inner]
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"expand={self.expand}, dt_rank={self.dt_rank}, backend={self.backend!r}"
        )

    # ---------------------------------------------------------------- dispatch
    def _resolve_backend(self, hidden: Tensor) -> str:
        """The backend this forward runs on; logs auto's choice when it is new."""
        if self.backend == "torch":
            return "torch"
        if self.backend == "cuda":
            if not hidden.is_cuda:
                raise UserError(
                    f"Mamba(backend='cuda') got an input on {hidden.device}; move the model and "
                    "the batch to a CUDA device, or use backend='torch' or 'auto'."
                )
            return "cuda"
        ok, reason = mamba_kernels_available()
        if hidden.is_cuda and ok:
            choice, why = "cuda", reason
        elif hidden.is_cuda:
            choice, why = "torch", f"{reason}; {GPU_INSTALL_HINT} for the fused kernels"
        else:
            choice, why = "torch", f"input is on {hidden.device}"
        if choice != self._logged_backend:
            self._logged_backend = choice
            if (choice, why) not in _ANNOUNCED:  # once per process, not once per layer
                _ANNOUNCED.add((choice, why))
                logger.info("Mamba(backend='auto') runs on the %r backend: %s", choice, why)
        return choice

    def forward(self, hidden_states: Tensor, inference_params=None) -> Tensor:
        """``hidden_states`` ``[B, L, d_model]`` -> ``[B, L, d_model]``."""
        if inference_params is not None:
            raise NotImplementedError("Mamba: step-by-step decoding (inference_params) is not supported")
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba: expected input [batch, length, d_model={self.d_model}], "
                f"got {tuple(hidden_states.shape)}"
            )
        backend = self._resolve_backend(hidden_states)
        self.last_backend = backend
        if backend == "cuda":
            return self._forward_cuda(hidden_states)
        return self._forward_torch(hidden_states)

    # ---------------------------------------------------------------- torch path
    def _forward_torch(self, hidden: Tensor) -> Tensor:
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # [B L Di] each
        # fused C kernels (CPU, float32): conv+silu here, scan+skip+gate below
        fused = self.scan_impl == "fused" or (self.scan_impl == "auto" and fused_scan_usable(hidden))
        if fused:
            x = fused_causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias)  # [B L Di]
        else:
            # causal depthwise conv: pad d_conv-1 on both sides, keep the first L outputs
            x = self.conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2)  # [B L Di]
            x = F.silu(x)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # the scan and what surrounds it run in fp32 at least (fp64 stays fp64)
        compute = torch.promote_types(hidden.dtype, torch.float32)
        # bias added in the compute dtype inside the softplus, as mamba-ssm's delta_bias
        delta = F.softplus(F.linear(dt, self.dt_proj.weight).to(compute) + self.dt_proj.bias.to(compute))
        A = -torch.exp(self.A_log.to(compute))  # [Di N], negative
        if self.scan_impl not in ("auto", "fused", "chunked", "reference"):
            raise ConfigError(
                "Mamba: scan_impl must be 'auto', 'fused', 'chunked' or 'reference', "
                f"got {self.scan_impl!r}"
            )
        if self.scan_impl == "reference":
            y = selective_scan_reference(x, delta, A, B, C)  # [B L Di]
        elif fused:
            # the C kernel applies the skip and the gate too: (scan + D x) * silu(z)
            y = fused_selective_scan(x, delta, A, B, C, D=self.D, z=z)  # [B L Di]
            return self.out_proj(y.to(hidden.dtype))  # [B L d_model]
        else:
            y = selective_scan(x, delta, A, B, C, chunk_size=self.scan_chunk_size)  # [B L Di]
        x, z = x.to(compute), z.to(compute)
        y = (y.to(compute) + x * self.D.to(compute)) * F.silu(z)
        return self.out_proj(y.to(hidden.dtype))  # [B L d_model]

    # ---------------------------------------------------------------- cuda path
    def _forward_cuda(self, hidden: Tensor) -> Tensor:
        """mamba-ssm's own fused path, fed with this module's parameters."""
        ops, reason = _import_mamba_ops()
        if ops is None:  # guarded at construction / resolution; kept for a clear message
            raise UserError(f"Mamba: {reason}. Fix: {GPU_INSTALL_HINT}")
        batch, length, _ = hidden.shape
        # [B L d_model] -> [B 2Di L] with L contiguous, the layout the kernels want
        xz = (self.in_proj.weight @ hidden.reshape(batch * length, -1).t())  # [2Di (B L)]
        xz = xz.view(-1, batch, length).permute(1, 0, 2)  # [B 2Di L]
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())  # [Di N]
        if ops["causal_conv1d_fn"] is not None:
            return ops["mamba_inner_fn"](
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias,
                A, None, None, self.D.float(),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )
        x, z = xz.chunk(2, dim=1)  # [B Di L] each
        x = F.silu(self.conv1d(x)[..., :length])
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * length, -1))  # [(B L) R+2N]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).view(-1, batch, length).permute(1, 0, 2)  # [B Di L]
        B = B.view(batch, length, -1).transpose(1, 2).contiguous()  # [B N L]
        C = C.view(batch, length, -1).transpose(1, 2).contiguous()  # [B N L]
        y = ops["selective_scan_fn"](
            x, dt, A, B, C, self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )  # [B Di L]
        return self.out_proj(y.transpose(1, 2))  # [B L d_model]
