"""causal-conv1d's forward and backward from its own ``causal_conv1d_ref`` (shared by conv7/, conv8/)."""

import threading

import torch


def _reference():
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref  # its own reference

    return causal_conv1d_ref


def forward(x, weight, bias, seq_idx, initial_states, silu_activation):
    if seq_idx is not None:
        raise NotImplementedError("stand-in: seq_idx is not used by mamba-ssm's Mamba-1 path")
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return _reference()(x, weight, bias, initial_states=initial_states,
                            activation="silu" if silu_activation else None)


def backward(x, weight, bias, dout, initial_states, silu_activation):
    """(dx, dweight fp32, dbias fp32 or None, dinitial_states or None).

    Autograd through the reference, run in a thread of its own: causal-conv1d >= 1.5.1 calls
    the kernel from inside a torch custom op, where autograd is switched off for the thread.
    """
    result = []
    worker = threading.Thread(target=lambda: result.append(
        _backward(x, weight, bias, dout, initial_states, silu_activation)))
    worker.start()
    worker.join()
    if not result:
        raise RuntimeError("stand-in causal_conv1d_bwd failed (see the thread's traceback above)")
    return result[0]


def _backward(x, weight, bias, dout, initial_states, silu_activation):
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias, initial_states)]
        out = _reference()(leaves[0], leaves[1], leaves[2], initial_states=leaves[3],
                           activation="silu" if silu_activation else None)
        wanted = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(out, wanted, dout))
        dx, dweight = next(grads), next(grads)
        dbias = next(grads) if bias is not None else None
        dinitial = next(grads) if initial_states is not None else None
    return (dx, dweight.float(), dbias.float() if dbias is not None else None, dinitial)
