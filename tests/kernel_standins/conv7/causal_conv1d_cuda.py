"""Stand-in for causal-conv1d <= 1.5.0's compiled ``causal_conv1d_cuda`` (7-argument forward).

Signatures of that release's ``csrc/causal_conv1d.cpp``; values from causal-conv1d's own
``causal_conv1d_ref`` (see ../README.md).
"""

import standin_conv


def causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, final_states_out, silu_activation):
    if final_states_out is not None:
        raise NotImplementedError("stand-in: final_states_out is not used by mamba-ssm's Mamba-1 path")
    return standin_conv.forward(x, weight, bias, seq_idx, initial_states, silu_activation)


def causal_conv1d_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx,
                      return_dinitial_states, silu_activation):
    grad_x, dweight, dbias, dinitial = standin_conv.backward(x, weight, bias, dout, initial_states, silu_activation)
    if dx is not None:
        dx.copy_(grad_x)  # written in place, as the kernel does
        grad_x = dx
    dbias = dbias.to(bias.dtype) if dbias is not None else None
    return [grad_x, dweight.to(weight.dtype), dbias, dinitial if return_dinitial_states else None]


def causal_conv1d_update(x, conv_state, weight, bias, silu_activation, cache_seqlens):
    raise NotImplementedError("stand-in: step-by-step decoding is not used by ss4rec")
