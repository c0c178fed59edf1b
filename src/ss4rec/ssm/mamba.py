"""Mamba (S6) layer in pure PyTorch, with mamba-ssm's CUDA kernels as an optional backend.

:class:`Mamba` is a drop-in for ``mamba_ssm.Mamba`` (mamba-ssm 2.2.x,
``mamba_ssm/modules/mamba_simple.py``): same constructor arguments, same parameter names,
shapes and initialisation, same forward maths. One ``state_dict`` serves both backends:

- ``backend="torch"``: runs anywhere. The selective scan is :func:`ss4rec.ssm.scan.selective_scan`,
  a chunked op with a hand-written backward, or on CPU (float32) the fused C kernels of
  :mod:`ss4rec.ssm.scan_fused` (conv + SiLU; scan + skip + gate) when they build here
  (same maths, several times faster).
- ``backend="cuda"``: calls mamba-ssm's fused functions (``mamba_inner_fn``, or
  ``selective_scan_fn`` when mamba-ssm loaded no causal-conv1d) with this module's
  parameters. Needs the kernels (``ss4rec kernels install``) and a CUDA
  device; without them it raises a :class:`~ss4rec.errors.UserError` naming the reason and
  ``--set mamba_backend=torch``.
- ``backend="auto"`` (default): ``cuda`` only once the kernels have *proven* themselves on
  this device: a tiny forward and backward through them, compared with the torch backend
  (:func:`verify_kernels`, once per device and process). Otherwise ``torch``, with one
  WARNING naming the reason when the input is on a GPU. The choice is logged once per process.

:func:`backend_facts` returns what ran and why, with the mamba-ssm / causal-conv1d / torch /
CUDA versions and the GPU (for results and preflight files); ``ss4rec kernels check``
prints them (exit 0 when the kernels run here).

Forward, for ``hidden`` of shape ``[B, L, d_model]``::

    x, z  = split(in_proj(hidden))                  # [B L d_inner] each
    x     = silu(causal depthwise conv1d(x))
    dt, B, C = split(x_proj(x))                     # [B L dt_rank], [B L d_state] x 2
    delta = softplus(dt_proj(dt))                   # bias inside the softplus, fp32
    y     = selective_scan(x, delta, A=-exp(A_log), B, C) + D * x
    out   = out_proj(y * silu(z))                   # [B L d_model]

Example::

    >>> import torch
    >>> from ss4rec.ssm.mamba import Mamba, backend_facts, mamba_kernels_available
    >>> layer = Mamba(d_model=64, d_state=32, d_conv=4, expand=2)   # backend="auto"
    >>> out = layer(torch.randn(8, 50, 64))                          # [B L d_model]
    >>> out.shape
    torch.Size([8, 50, 64])
    >>> sorted(layer.state_dict())[:3]
    ['A_log', 'D', 'conv1d.bias']
    >>> ok, why = mamba_kernels_available()   # (False, "...") on a machine without them
    >>> backend_facts("auto", "cpu")["backend"]
    'torch'
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ss4rec.errors import ConfigError, UserError
from ss4rec.ssm.kernels import KERNELS_INSTALL_COMMAND, loaded_kernels
from ss4rec.ssm.scan import DEFAULT_CHUNK_SIZE, selective_scan, selective_scan_reference
from ss4rec.ssm.scan_fused import fused_causal_conv1d_silu, fused_scan_usable, fused_selective_scan

logger = logging.getLogger(__name__)
_ANNOUNCED: set = set()  # (backend, reason) pairs auto has logged in this process

BACKENDS = ("auto", "cuda", "torch")
# Every hint for missing kernels names this command (the entrypoint's --install runs it).
GPU_INSTALL_HINT = KERNELS_INSTALL_COMMAND

# Device types the kernels run on. mamba-ssm's kernels are CUDA only; the CPU tests (and
# scripts/gpu_check.py --device cpu) add "cpu" where mamba-ssm's compiled parts are replaced
# by its reference functions.
KERNEL_DEVICE_TYPES = ("cuda",)

# The proof (verify_kernels): fp32 forward and backward of a tiny layer, kernels vs the torch
# backend; largest |difference| allowed, relative to the largest |value| of each tensor. The
# two sum in different orders, so they differ by rounding (~1e-6) -- or by a broken kernel.
PROOF_TOLERANCE = 1e-3
_PROOFS: dict = {}  # (device type, index) -> (ok, why), once per process


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _kernel_device_available() -> bool:
    return any(kind != "cuda" or torch.cuda.is_available() for kind in KERNEL_DEVICE_TYPES)


def _default_kernel_device() -> torch.device:
    if "cuda" in KERNEL_DEVICE_TYPES and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(KERNEL_DEVICE_TYPES[0] if KERNEL_DEVICE_TYPES[0] != "cuda" else "cpu")


def verify_kernels(device) -> Tuple[bool, str]:
    """Prove mamba-ssm's kernels on ``device``: (ok, what happened). Never raises.

    A ``Mamba(16, d_state=8)`` runs forward and backward through the kernels and through the
    torch backend (same weights, same input); every output and gradient must be finite and
    agree within :data:`PROOF_TOLERANCE`. Cached per device for the process.
    """
    device = torch.device(device)
    key = (device.type, device.index)
    if key not in _PROOFS:
        kernels = loaded_kernels()
        if kernels.problem:
            _PROOFS[key] = (False, kernels.problem)
        elif device.type not in KERNEL_DEVICE_TYPES:
            _PROOFS[key] = (False, f"{kernels.summary}: its kernels run on CUDA devices, not {device}")
        else:
            _PROOFS[key] = _prove(device, kernels.summary)
    return _PROOFS[key]


def _prove(device: torch.device, summary: str) -> Tuple[bool, str]:
    try:
        # A fresh grad-enabled fp32 context whatever the caller runs under (eval, autocast);
        # the CPU random state is restored, so proving changes no one's random numbers.
        with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(device.type, enabled=False):
            torch.manual_seed(0)
            layer = Mamba(16, d_state=8, d_conv=4, expand=2, backend="torch").to(device)
            hidden = torch.randn(2, 12, 16).to(device)  # [B L d_model]
            weights = torch.randn(2, 12, 16).to(device)
            names = ["output", "input gradient"] + [f"gradient of {n}" for n, _ in layer.named_parameters()]
            results = {}
            for path in ("cuda", "torch"):
                inputs = hidden.clone().requires_grad_()
                out = layer._forward_cuda(inputs) if path == "cuda" else layer._forward_torch(inputs)
                grads = torch.autograd.grad((out * weights).sum(), [inputs, *layer.parameters()])
                results[path] = [out.detach(), *grads]
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # an asynchronous kernel error surfaces here
    except Exception as exc:  # e.g. "no kernel image is available for execution on the device"
        return False, f"{summary}: the kernels fail on {device} ({_first_line(exc)})"
    worst, worst_name = 0.0, names[0]
    for name, kernel, reference in zip(names, results["cuda"], results["torch"]):
        if not torch.isfinite(kernel).all():
            return False, f"{summary}: the kernels give non-finite values on {device} ({name})"
        scale = reference.abs().max().clamp_min(1e-12)
        error = float((kernel.float() - reference.float()).abs().max() / scale)
        if error > worst:
            worst, worst_name = error, name
    if worst > PROOF_TOLERANCE:
        return False, (f"{summary}: the kernels run on {device} but disagree with the torch backend "
                       f"({worst_name}: relative difference {worst:.1e} > {PROOF_TOLERANCE:g})")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return True, (f"{summary}: forward and backward on {where} match the torch backend "
                  f"(relative difference {worst:.1e})")


def mamba_kernels_available() -> Tuple[bool, str]:
    """Whether the ``cuda`` backend runs here, proven on the current GPU, and why (or why not).

    >>> ok, reason = mamba_kernels_available()
    """
    kernels = loaded_kernels()
    if kernels.problem:
        return False, kernels.problem
    if not _kernel_device_available():
        return False, f"{kernels.summary}, but torch sees no CUDA device"
    return verify_kernels(_default_kernel_device())


def choose_backend(requested: str, device) -> Tuple[str, str]:
    """The backend a forward on ``device`` runs (``"cuda"`` or ``"torch"``) and why.

    ``requested="cuda"`` that cannot run raises :class:`UserError` with the reason and the
    fix; ``"auto"`` falls back to ``"torch"`` with the reason.
    """
    if requested not in BACKENDS:
        raise ConfigError(f"mamba_backend: unknown {requested!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if requested == "torch":
        return "torch", "mamba_backend=torch"
    on_kernel_device = device.type in KERNEL_DEVICE_TYPES
    if requested == "cuda":
        if not on_kernel_device:
            raise UserError(
                f"mamba_backend=cuda, but the input is on {device}: train on a CUDA device "
                "(--device cuda), or --set mamba_backend=torch (pure PyTorch, any device)")
        ok, why = verify_kernels(device)
        if not ok:
            raise UserError(
                f"mamba_backend=cuda cannot run: {why}. Fix: {GPU_INSTALL_HINT} on the GPU "
                "machine, or --set mamba_backend=torch (pure PyTorch, the same model)")
        return "cuda", why
    if not on_kernel_device:
        return "torch", f"input is on {device}"
    ok, why = verify_kernels(device)
    return ("cuda" if ok else "torch"), why


def backend_facts(requested: str = "auto", device=None, model: Optional[nn.Module] = None) -> dict:
    """What Mamba runs on, and why, with the versions behind it -- plain data for a results file.

    ``device``: where the model runs (default: the current GPU, else the CPU). ``model``:
    when given, ``ran`` lists the backends its Mamba layers actually used.

    Keys: ``mamba_backend`` (asked), ``backend`` ("cuda", "torch", or None when a forced
    "cuda" cannot run), ``reason``, ``ran``, ``mamba_ssm``, ``causal_conv1d`` (installed
    versions or None), ``causal_conv1d_loaded`` (mamba-ssm loaded it), ``kernels_problem``,
    ``torch``, ``cuda`` (torch's CUDA build), ``device``, ``gpu``, ``gpu_capability``.
    """
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    kernels = loaded_kernels()
    try:
        backend, reason = choose_backend(requested, device)
    except UserError as exc:
        backend, reason = None, str(exc)
    ran = None
    if model is not None:
        ran = sorted({m.last_backend for m in model.modules() if isinstance(m, Mamba) and m.last_backend})
    gpu = capability = None
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
        capability = "{}.{}".format(*torch.cuda.get_device_capability(device))
    return {
        "mamba_backend": requested,
        "backend": backend,
        "reason": reason,
        "ran": ran,
        "mamba_ssm": kernels.mamba_ssm,
        "causal_conv1d": kernels.causal_conv1d,
        "causal_conv1d_loaded": kernels.conv_loaded,
        "kernels_problem": kernels.problem,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "gpu": gpu,
        "gpu_capability": capability,
    }


class _NarrowLinear(torch.autograd.Function):
    """``x @ weight.T`` for a narrow input (``x [M R]``, ``weight [D R]``, R small: Mamba's
    ``dt_proj``, R = d_model / 16), with the backward's products taken as ``[R, .]`` ones. CPU.

    Autograd's own backward asks MKL for ``grad.T @ x`` (``[D M] x [M R]``) and
    ``grad @ weight`` (``[M D] x [D R]``); at M = 3750, D = 128, R = 4 on this project's CPU
    they took 0.66 and 0.57 ms, their transposes ``(x.T @ grad).T`` and
    ``(weight.T @ grad.T).T`` 0.09 and 0.16 ms. Same sums (MKL orders them its own way).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")  # the backward autocasts as the forward did (bf16)
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return x @ weight.t()  # [M D]

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = (weight.t() @ grad.t()).t() if ctx.needs_input_grad[0] else None  # [M R]
        grad_weight = (x.t() @ grad).t() if ctx.needs_input_grad[1] else None  # [D R]
        return grad_x, grad_weight


def narrow_linear(x: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(x, weight)`` (no bias) for ``x [..., R]`` with R small; see :class:`_NarrowLinear`.

    >>> narrow_linear(torch.ones(2, 3, 4), torch.ones(8, 4)).shape
    torch.Size([2, 3, 8])
    """
    flat = x.reshape(-1, x.shape[-1])  # [M R]
    return _NarrowLinear.apply(flat, weight).reshape(*x.shape[:-1], weight.shape[0])


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
        if backend == "cuda":  # refused here, before any training; proven at the first forward
            kernels = loaded_kernels()
            reason = kernels.problem or (None if _kernel_device_available()
                                         else f"{kernels.summary}, but torch sees no CUDA device")
            if reason:
                raise UserError(
                    f"mamba_backend=cuda cannot run: {reason}. Fix: {GPU_INSTALL_HINT} on a "
                    "machine with a CUDA GPU, or --set mamba_backend=torch (pure PyTorch, any device)"
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
        # cuda backend: mamba_inner_fn (with causal-conv1d's kernels, when mamba-ssm loaded them)
        # or, when False, nn.Conv1d + selective_scan_fn (scripts/gpu_check.py checks both)
        self.use_causal_conv1d = True

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
        """The backend this forward runs on; logs auto's choice once per process."""
        backend, why = choose_backend(self.backend, hidden.device)
        if self.backend == "auto" and (backend, why) not in _ANNOUNCED:  # not once per layer
            _ANNOUNCED.add((backend, why))
            if backend == "torch" and hidden.device.type in KERNEL_DEVICE_TYPES:
                logger.warning("Mamba(backend='auto') falls back to the torch backend (slower): %s. "
                               "Fix: %s, or --set mamba_backend=torch to silence this", why, GPU_INSTALL_HINT)
            else:
                logger.info("Mamba(backend='auto') runs on the %r backend: %s", backend, why)
        return backend

    def forward(self, hidden_states: Tensor, inference_params=None, lengths: Optional[Tensor] = None) -> Tensor:
        """``hidden_states`` ``[B, L, d_model]`` -> ``[B, L, d_model]``.

        ``lengths`` (``[B]``, optional): real positions per row of a right-padded batch. The
        fused CPU kernels then skip the padding (its outputs are unspecified; outputs at real
        positions, and every gradient when the padding's outputs are unused, are unchanged);
        the other paths compute it anyway.
        """
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
        return self._forward_torch(hidden_states, lengths)

    # ---------------------------------------------------------------- torch path
    def _forward_torch(self, hidden: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # [B L Di] each
        # fused C kernels (CPU, float32): conv+silu here, scan+skip+gate below
        fused = self.scan_impl == "fused" or (self.scan_impl == "auto" and fused_scan_usable(hidden))
        if fused:
            x = fused_causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias, lengths)  # [B L Di]
        else:
            # causal depthwise conv: pad d_conv-1 on both sides, keep the first L outputs
            x = self.conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2)  # [B L Di]
            x = F.silu(x)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # the scan and what surrounds it run in fp32 at least (fp64 stays fp64)
        compute = torch.promote_types(hidden.dtype, torch.float32)
        # bias added in the compute dtype inside the softplus, as mamba-ssm's delta_bias
        # on the CPU, dt_proj's narrow product with a backward MKL runs 5x faster (_NarrowLinear)
        dt = narrow_linear(dt, self.dt_proj.weight) if dt.device.type == "cpu" else F.linear(dt, self.dt_proj.weight)
        delta = F.softplus(dt.to(compute) + self.dt_proj.bias.to(compute))
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
            y = fused_selective_scan(x, delta, A, B, C, D=self.D, z=z, lengths=lengths)  # [B L Di]
            return self.out_proj(y.to(hidden.dtype))  # [B L d_model]
        else:
            y = selective_scan(x, delta, A, B, C, chunk_size=self.scan_chunk_size)  # [B L Di]
        x, z = x.to(compute), z.to(compute)
        y = (y.to(compute) + x * self.D.to(compute)) * F.silu(z)
        return self.out_proj(y.to(hidden.dtype))  # [B L d_model]

    # ---------------------------------------------------------------- cuda path
    def _forward_cuda(self, hidden: Tensor) -> Tensor:
        """mamba-ssm's own fused path, fed with this module's parameters."""
        kernels = loaded_kernels()
        if kernels.problem:  # guarded at construction / resolution; kept for a clear message
            raise UserError(f"Mamba: {kernels.problem}")
        batch, length, _ = hidden.shape
        # [B L d_model] -> [B 2Di L] with L contiguous, the layout the kernels want
        xz = (self.in_proj.weight @ hidden.reshape(batch * length, -1).t())  # [2Di (B L)]
        xz = xz.view(-1, batch, length).permute(1, 0, 2)  # [B 2Di L]
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())  # [Di N]
        if kernels.conv_loaded and self.use_causal_conv1d:
            return kernels.mamba_inner_fn(
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
        y = kernels.selective_scan_fn(
            x, dt, A, B, C, self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )  # [B Di L]
        return self.out_proj(y.transpose(1, 2))  # [B L d_model]
