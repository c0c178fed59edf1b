"""Checks run inside the stand-in kernel environment (tests/kernel_env.py), one process per pair.

``python tests/kernel_checks.py SCENARIO`` prints one JSON object of findings on its last
line; tests/test_kernel_standins.py asserts on it. The CPU stands in for the GPU: "cpu" is
added to the Mamba module's kernel devices, and the kernels are mamba-ssm's and
causal-conv1d's reference functions (tests/kernel_standins/).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

warnings.filterwarnings("ignore")  # mamba-ssm's own FutureWarnings (torch.cuda.amp)

import torch  # noqa: E402

from ss4rec.errors import UserError  # noqa: E402
from ss4rec.pipeline.envinfo import check_mamba_kernels  # noqa: E402
from ss4rec.ssm import mamba as mamba_module  # noqa: E402
from ss4rec.ssm.kernels import loaded_kernels  # noqa: E402
from ss4rec.ssm.mamba import Mamba, backend_facts, verify_kernels  # noqa: E402

torch.set_num_threads(1)
mamba_module.KERNEL_DEVICE_TYPES = ("cuda", "cpu")


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage()))


CAPTURE = Warnings()
logging.getLogger("ss4rec.ssm.mamba").addHandler(CAPTURE)
logging.getLogger("ss4rec.ssm.mamba").setLevel(logging.INFO)


def max_relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-12)
    return float((actual.double() - expected.double()).abs().max() / scale)


def paths_agree(layer: Mamba, hidden: torch.Tensor) -> dict:
    """Largest relative difference, kernels vs torch backend, of the output and every gradient."""
    weights = torch.randn_like(hidden)
    results = {}
    for path in ("cuda", "torch"):
        inputs = hidden.clone().requires_grad_()
        out = layer._forward_cuda(inputs) if path == "cuda" else layer._forward_torch(inputs)
        grads = torch.autograd.grad((out * weights).sum(), [inputs, *layer.parameters()])
        results[path] = [out.detach(), *grads]
    names = ["output", "input"] + [name for name, _ in layer.named_parameters()]
    return {name: max_relative(k, t) for name, k, t in zip(names, results["cuda"], results["torch"])}


def reset():
    mamba_module._PROOFS.clear()
    mamba_module._ANNOUNCED.clear()
    CAPTURE.records.clear()


def good() -> dict:
    """A working pair: proven, picked by auto, equal to the torch backend, mamba-ssm's own
    module interchangeable with ours through state_dict (strict, both ways)."""
    from mamba_ssm import Mamba as MambaSsm

    kernels = loaded_kernels()
    found = {"summary": kernels.summary, "problem": kernels.problem, "conv_loaded": kernels.conv_loaded,
             "proof": verify_kernels("cpu"), "envinfo": check_mamba_kernels()}
    torch.manual_seed(0)
    layer = Mamba(32, d_state=8, d_conv=4, expand=2)  # backend auto
    hidden = torch.randn(3, 17, 32)
    found["agree_with_conv"] = paths_agree(layer, hidden)
    layer.use_causal_conv1d = False
    found["agree_without_conv"] = paths_agree(layer, hidden)
    layer.use_causal_conv1d = True
    layer(hidden)
    found["auto_ran"] = layer.last_backend
    found["facts"] = backend_facts("auto", "cpu", model=layer)

    torch.manual_seed(1)
    theirs = MambaSsm(d_model=64, d_state=32, d_conv=4, expand=2)
    ours = Mamba(d_model=64, d_state=32, d_conv=4, expand=2, backend="torch")
    found["load_theirs_into_ours"] = str(ours.load_state_dict(theirs.state_dict(), strict=True))
    hidden = torch.randn(2, 9, 64)
    with torch.no_grad():
        found["theirs_vs_ours"] = max_relative(theirs(hidden), ours(hidden))  # their fast path: mamba_inner_fn
    torch.manual_seed(2)
    ours = Mamba(d_model=64, d_state=32, d_conv=4, expand=2, backend="torch")
    found["load_ours_into_theirs"] = str(theirs.load_state_dict(ours.state_dict(), strict=True))
    with torch.no_grad():
        found["ours_into_theirs_vs_ours"] = max_relative(theirs(hidden), ours(hidden))
    return found


def failing() -> dict:
    """The kernel raises in its forward or backward, or returns wrong values: auto falls back
    to torch with one WARNING naming the reason; a forced cuda backend refuses with it."""
    found = {}
    for mode in ("fwd", "bwd", "wrong"):
        reset()
        os.environ["SS4REC_STANDIN_KERNEL_FAIL"] = mode
        torch.manual_seed(0)
        layers = [Mamba(16, d_state=4), Mamba(16, d_state=4)]  # two layers of one model: one warning
        hidden = torch.randn(2, 5, 16)
        for layer in layers:
            layer(layer(hidden))
        forced = Mamba(16, d_state=4, backend="cuda")  # builds: the kernels import
        try:
            forced(hidden)
            refusal = None
        except UserError as exc:
            refusal = str(exc)
        found[mode] = {"ran": [layer.last_backend for layer in layers],
                       "logged": list(CAPTURE.records), "refusal": refusal}
    del os.environ["SS4REC_STANDIN_KERNEL_FAIL"]
    return found


def broken() -> dict:
    """A broken pair: refused at construction (cuda) and at the first forward (auto)."""
    reset()
    kernels = loaded_kernels()
    found = {"summary": kernels.summary, "problem": kernels.problem, "envinfo": check_mamba_kernels()}
    try:
        Mamba(16, d_state=4, backend="cuda")
        found["refusal"] = None
    except UserError as exc:
        found["refusal"] = str(exc)
    layer = Mamba(16, d_state=4)
    layer(torch.randn(2, 5, 16))
    found["auto_ran"] = layer.last_backend
    found["logged"] = list(CAPTURE.records)
    return found


def no_conv() -> dict:
    kernels = loaded_kernels()
    torch.manual_seed(0)
    layer = Mamba(32, d_state=8, expand=2)
    return {"summary": kernels.summary, "problem": kernels.problem, "conv_loaded": kernels.conv_loaded,
            "proof": verify_kernels("cpu"), "agree": paths_agree(layer, torch.randn(2, 11, 32))}


SCENARIOS = {"good": good, "failing": failing, "broken": broken, "no-conv": no_conv}

if __name__ == "__main__":
    results = {name: SCENARIOS[name]() for name in sys.argv[1:]}
    print(json.dumps(results))
