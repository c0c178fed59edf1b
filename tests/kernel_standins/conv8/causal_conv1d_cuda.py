"""Stand-in for causal-conv1d >= 1.5.1's compiled ``causal_conv1d_cuda`` (8-argument forward).

Signatures of that release's ``csrc/causal_conv1d.cpp`` (results written into the tensors
passed in); values from causal-conv1d's own ``causal_conv1d_ref`` (see ../README.md).
"""

import standin_conv


def causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation):
    if final_states_out is not None:
        raise NotImplementedError("stand-in: final_states_out is not used by mamba-ssm's Mamba-1 path")
    out.copy_(standin_conv.forward(x, weight, bias, seq_idx, initial_states, silu_activation))


def causal_conv1d_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight,
                      dbias, dinitial_states, silu_activation):
    grad_x, grad_weight, grad_bias, grad_initial = standin_conv.backward(
        x, weight, bias, dout, initial_states, silu_activation)
    dx.copy_(grad_x)
    dweight.copy_(grad_weight)
    if dbias is not None:
        dbias.copy_(grad_bias)
    if dinitial_states is not None:
        dinitial_states.copy_(grad_initial)


def causal_conv1d_update(x, conv_state, weight, bias, out, silu_activation, cache_seqlens, conv_state_indices):
    raise NotImplementedError("stand-in: step-by-step decoding is not used by ss4rec")
