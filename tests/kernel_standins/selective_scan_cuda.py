"""Stand-in for mamba-ssm's compiled ``selective_scan_cuda`` (see README.md here).

Same functions, arguments and results as ``csrc/selective_scan/selective_scan.cpp``:
``fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> [out, x, (out_z)]`` and
``bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus,
recompute_out_z) -> [du, ddelta, dA, dB, dC, dD, ddelta_bias, (dz), (out_z)]``, with ``dz``
written into the tensor passed in, as the kernel does. The values come from mamba-ssm's own
``selective_scan_ref`` (forward) and autograd through it (backward).
"""

import os

import torch


def _check(where):
    mode = os.environ.get("SS4REC_STANDIN_KERNEL_FAIL", "")
    if mode == where:
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")


def _reference():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref  # its own reference

    return selective_scan_ref


def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    _check("fwd")
    ref = _reference()
    with torch.no_grad(), torch.autocast(u.device.type, enabled=False):
        out = ref(u, delta, A, B, C, D, None, delta_bias, delta_softplus).to(delta.dtype)
        out_z = ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus) if z is not None else None
    if os.environ.get("SS4REC_STANDIN_KERNEL_FAIL") == "wrong":
        out, out_z = out * 1.5, (out_z * 1.5 if out_z is not None else None)
    # the kernel's chunk states [B D n_chunks 2N]; only their last state is read from Python
    n_chunks = (u.shape[-1] + 2047) // 2048
    x = torch.zeros(u.shape[0], A.shape[0], n_chunks, A.shape[1] * 2, dtype=A.dtype, device=u.device)
    return [out, x] + ([out_z] if z is not None else [])


def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
    _check("bwd")
    ref = _reference()
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    given = dict(zip(names, (u, delta, A, B, C, D, z, delta_bias)))
    with torch.enable_grad(), torch.autocast(u.device.type, enabled=False):
        leaves = {k: (v.detach().requires_grad_() if v is not None else None) for k, v in given.items()}
        y = ref(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                leaves["z"], leaves["delta_bias"], delta_softplus)
        wanted = [k for k in names if leaves[k] is not None]
        grads = dict(zip(wanted, torch.autograd.grad(y, [leaves[k] for k in wanted], dout)))
    variable_B, variable_C = B.dim() >= 3, C.dim() >= 3
    result = [
        grads["u"].to(u.dtype),
        grads["delta"].to(delta.dtype),
        grads["A"].to(A.dtype),
        grads["B"].float() if variable_B else grads["B"].to(B.dtype),  # fp32 for variable B, as the kernel
        grads["C"].float() if variable_C else grads["C"].to(C.dtype),
        grads["D"].float() if D is not None else None,
        grads["delta_bias"].float() if delta_bias is not None else None,
    ]
    if z is not None:
        grad_z = grads["z"].to(z.dtype)
        if dz is not None:
            dz.copy_(grad_z)  # written in place: mamba_inner_fn passes a view of its dxz
            grad_z = dz
        result.append(grad_z)
    if recompute_out_z:
        with torch.no_grad(), torch.autocast(u.device.type, enabled=False):
            result.append(ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus).to(out.dtype))
    return result
