"""Mixed precision: bf16 and fp16 train SS4Rec (complex S5 parameters included), on the CPU too.

The reference for each check is the same model, batch and weights in fp32. Dropout is off
(``eval()``) so the only difference between the passes is the precision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ss4rec.config.validation import check_values
from ss4rec.data.loaders import create_dataset, prepare_data
from ss4rec.errors import ConfigError
from ss4rec.pipeline.settings import build_config
from ss4rec.training.precision import autocast, loss_scaler, resolve_precision

from conftest import TINY_SS4REC

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def model_and_batch():
    config, model_class = build_config("SS4Rec", "ml-100k", ["tiny"], dict(TINY_SS4REC), device="cpu")
    train, _, _ = prepare_data(config, create_dataset(config))
    torch.manual_seed(0)
    net = model_class(config, train._dataset).eval()
    return net, {k: v.clone() for k, v in net.state_dict().items()}, next(iter(train))


def gradients(model_and_batch, precision: str, scaled: bool, step: bool = False):
    """(loss, {name: gradient}, model after the step) of one batch in ``precision``."""
    net, initial, batch = model_and_batch
    net.load_state_dict(initial)
    net.zero_grad()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = loss_scaler(precision if scaled else "fp32", CPU)
    with autocast(precision, CPU):
        loss = net.calculate_loss(batch)
    scaler.scale(loss).backward()
    if scaler.is_enabled():
        scaler.unscale_(optimizer)  # the complex gradients too: torch's own GradScaler raises here
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    if step:
        scaler.step(optimizer)
        scaler.update()
    return float(loss.detach()), grads, net


def test_fp16_with_loss_scaling_keeps_every_gradient_fp32_has(model_and_batch):
    _, reference, _ = gradients(model_and_batch, "fp32", scaled=False)
    loss, grads, net = gradients(model_and_batch, "fp16", scaled=True, step=True)
    assert any(g.is_complex() for g in grads.values())  # S5's Lambda and C
    for name, grad in grads.items():
        lost = (reference[name] != 0) & (grad == 0)
        assert not lost.any(), f"{name}: {int(lost.sum())} gradient entries fp32 has are 0 in fp16"
        assert torch.isfinite(grad).all(), name
        scale = reference[name].abs().max()
        assert (grad - reference[name]).abs().max() <= 0.05 * scale, name  # unscaled: true values
    after = dict(net.named_parameters())
    _, initial, _ = model_and_batch
    assert not torch.equal(after["model.0.S5.seq.Lambda"].detach(), initial["model.0.S5.seq.Lambda"])  # stepped


def test_fp16_without_scaling_is_what_loses_gradients(model_and_batch):
    # Why fp16 always scales: unscaled, small gradients underflow to exactly 0.
    _, reference, _ = gradients(model_and_batch, "fp32", scaled=False)
    _, grads, _ = gradients(model_and_batch, "fp16", scaled=False)
    lost = sum(int(((reference[n] != 0) & (g == 0)).sum()) for n, g in grads.items())
    assert lost > 0


def test_bf16_loss_and_gradients_are_finite_and_close_to_fp32(model_and_batch):
    loss32, reference, _ = gradients(model_and_batch, "fp32", scaled=False)
    loss, grads, _ = gradients(model_and_batch, "bf16", scaled=False)
    assert loss == pytest.approx(loss32, rel=1e-3)
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        assert (grad - reference[name]).abs().max() <= 0.1 * reference[name].abs().max(), name


def test_precision_choice_and_recboles_switches():
    assert resolve_precision({}, CPU).precision == "fp32"  # auto on the CPU
    assert resolve_precision({"precision": "auto"}, CPU).why.startswith("auto")
    amp = resolve_precision({"enable_amp": True, "enable_scaler": True}, CPU)
    assert amp.precision == "fp16" and amp.to_dict()["loss_scaling"]  # never RecBole's crashing path
    assert resolve_precision({"enable_scaler": True}, CPU).precision == "fp32"
    assert resolve_precision({"precision": "bf16", "enable_amp": True}, CPU).precision == "bf16"
    with pytest.raises(ConfigError, match="precision=.fp8.*from --set.*auto, fp32, bf16, fp16"):
        check_values({"precision": "fp8"}, source="--set")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cli_trains_in_mixed_precision_on_the_cpu(tmp_path, precision):
    sets = [f"--set={k}={v}" for k, v in TINY_SS4REC.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "ss4rec", "train", "--config", "tiny", *sets,
                           "--set", f"precision={precision}", "--device", "cpu", "--output", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["training"]["precision"]["precision"] == precision
    assert results["training"]["precision"]["loss_scaling"] == (precision == "fp16")
    assert results["test"]["hit@10"] > 10 / (results["n_items"] - 1)  # learnt something
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"precision: {precision} (set by precision)" in log
