"""Mixed precision for training: ``precision: auto | fp32 | bf16 | fp16``.

    >>> choice = resolve_precision({"precision": "auto"}, torch.device("cpu"))
    >>> choice.precision, choice.why
    ('fp32', 'auto: fp32 on the CPU')
    >>> with autocast(choice.precision, torch.device("cpu")):  # doctest: +SKIP
    ...     loss = model.calculate_loss(batch)
    >>> scaler = loss_scaler(choice.precision, torch.device("cpu"))  # enabled only for fp16

* ``fp32``: no autocast (the CPU default).
* ``bf16``: autocast to bfloat16 (the GPU default where the GPU supports it): same range as
  fp32, so no loss scaling.
* ``fp16``: autocast to float16 with loss scaling (:class:`ComplexGradScaler`). fp16 without
  scaling stops training silently: at SS4Rec's init most of Mamba's ``x_proj`` and all of
  ``dt_proj``'s gradient entries underflow to exactly 0.

S5's discretisation and scan always stay in fp32 (:mod:`ss4rec.ssm.s5` turns autocast off
around them). RecBole's ``enable_amp`` / ``enable_scaler`` map onto this setting instead of
running RecBole's own code: ``enable_amp: true`` means fp16 (always with loss scaling);
``enable_scaler`` alone has nothing to scale in fp32. Evaluation runs in fp32.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import torch

from ss4rec.config.validation import PRECISIONS
from ss4rec.errors import ConfigError

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in and why (for the log, results.json and preflight.json)."""

    precision: str  # fp32 | bf16 | fp16
    why: str

    def to_dict(self) -> dict:
        return {"precision": self.precision, "why": self.why,
                "loss_scaling": self.precision == "fp16", "autocast": self.precision != "fp32"}


def resolve_precision(config, device) -> PrecisionChoice:
    """``precision`` (``auto`` when unset) and RecBole's AMP switches -> what this device runs.

    Raises :class:`ConfigError` for a precision this device or torch cannot train in.
    """
    device = torch.device(device)
    asked = config["precision"] if "precision" in config else None
    amp = bool(config["enable_amp"]) if "enable_amp" in config else False
    scaler = bool(config["enable_scaler"]) if "enable_scaler" in config else False
    if asked is not None and str(asked).lower() not in PRECISIONS:
        raise ConfigError(f"precision={asked!r}: use one of {', '.join(PRECISIONS)}")
    asked = str(asked).lower() if asked is not None else None
    if asked not in (None, "auto"):
        if amp or scaler:
            logger.warning(f"precision={asked} is set: RecBole's enable_amp / enable_scaler are ignored")
        choice = PrecisionChoice(asked, "set by precision")
    elif amp:
        choice = PrecisionChoice("fp16", "RecBole's enable_amp: true, run as precision: fp16 with loss scaling")
    else:
        if scaler:
            logger.warning("enable_scaler without enable_amp: nothing to scale in fp32; use precision: fp16")
        if device.type == "cuda" and _cuda_bf16(device):
            choice = PrecisionChoice("bf16", "auto: bf16 on a GPU that supports it")
        elif device.type == "cuda":
            choice = PrecisionChoice("fp32", "auto: this GPU has no bf16 (precision: fp16 trains with loss scaling)")
        else:
            choice = PrecisionChoice("fp32", f"auto: fp32 on the {device.type.upper()}")
    _check_supported(choice.precision, device)
    return choice


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported()


def _check_supported(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cuda" and not _cuda_bf16(device):
        raise ConfigError(f"precision: bf16, but {torch.cuda.get_device_name(device)} has no bf16 "
                          "support: use precision: fp16 (loss-scaled) or fp32")
    if precision == "fp16" and device.type != "cuda" and not hasattr(torch.amp, "GradScaler"):
        raise ConfigError(f"precision: fp16 on the {device.type.upper()} needs torch >= 2.3 (its device-"
                          f"generic GradScaler); this is torch {torch.__version__}: use bf16 or fp32")


def autocast(precision: str, device):
    """The autocast context of ``precision`` on ``device`` (disabled for fp32)."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16),
                          enabled=precision in AUTOCAST_DTYPES)


def _grad_scaler_class():
    # torch >= 2.3: the device-generic torch.amp.GradScaler (CPU too); before, CUDA's own.
    return getattr(torch.amp, "GradScaler", None) or torch.cuda.amp.GradScaler


class ComplexGradScaler(_grad_scaler_class()):
    """torch's ``GradScaler``, able to unscale complex gradients (S5's ``Lambda`` and ``C``).

    torch's fused unscale-and-check op takes real tensors only ("not implemented for
    'ComplexFloat'"); a complex gradient is unscaled through its real view
    (``torch.view_as_real``: the same memory, so the gradient itself changes), and an inf or
    NaN in it skips the step like any other.
    """

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):
        complex_grads = [(p, p.grad) for group in optimizer.param_groups for p in group["params"]
                         if p.grad is not None and p.grad.is_complex()]
        for param, _ in complex_grads:
            param.grad = None  # hidden from torch's real-only pass
        try:
            per_device = super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16)
        finally:
            for param, grad in complex_grads:
                param.grad = grad
        by_device = defaultdict(list)
        for _, grad in complex_grads:
            by_device[grad.device].append(torch.view_as_real(grad))
        for device, grads in by_device.items():
            if device not in per_device:
                per_device[device] = found_inf.to(device, copy=True)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, per_device[device], inv_scale.to(device))
        return per_device


def loss_scaler(precision: str, device) -> ComplexGradScaler:
    """A loss scaler for ``precision`` on ``device``: active for fp16 only (a no-op otherwise)."""
    device = torch.device(device)
    enabled = precision == "fp16"
    if hasattr(torch.amp, "GradScaler"):
        return ComplexGradScaler(device.type if device.type in ("cuda", "cpu") else "cuda", enabled=enabled)
    return ComplexGradScaler(enabled=enabled and device.type == "cuda")
