"""mamba-ssm's real Python code with stand-in kernels: the backend choice is proven, broken
pairs are refused, and the kernels' code path equals the torch backend.

Each pair runs in its own process of the stand-in environment (tests/kernel_env.py: the
real sdists of mamba-ssm 2.2.2 / 2.3.1 and causal-conv1d 1.4.0 / 1.6.1 from the registry,
compiled parts replaced by their reference functions). The environment is built once into
a cache; without the registry that first build fails the tests (it is never skipped).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kernel_env import kernel_env

CHECKS = Path(__file__).resolve().parent / "kernel_checks.py"
# kernels (reference functions in fp32) vs the torch backend: rounding only
AGREE = 1e-5


@pytest.fixture(scope="module")
def env():
    return kernel_env()


def run_checks(env, combo: str, *scenarios: str) -> dict:
    proc = subprocess.run([str(env.python), str(CHECKS), *scenarios], env=env.environ(combo),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_agree(differences: dict, what: str):
    worst = max(differences, key=differences.get)
    assert differences[worst] <= AGREE, f"{what}: {worst} differs by {differences[worst]:.2e}"
    # every parameter's gradient was compared, not only the output
    assert {"output", "input", "in_proj.weight", "conv1d.weight", "x_proj.weight", "dt_proj.weight",
            "dt_proj.bias", "A_log", "D", "out_proj.weight"} <= set(differences), sorted(differences)


@pytest.mark.parametrize("combo,versions", [("new", ("2.3.1", "1.6.1")), ("old", ("2.2.2", "1.4.0"))])
def test_working_pair_is_proven_picked_and_equals_the_torch_backend(env, combo, versions):
    found = run_checks(env, combo, "good")["good"]
    assert found["problem"] is None
    assert found["summary"] == f"mamba-ssm {versions[0]} with causal-conv1d {versions[1]}"
    assert found["conv_loaded"] is True
    ok, why = found["proof"]
    assert ok, why
    assert "forward and backward" in why and "match the torch backend" in why
    assert found["envinfo"] == found["proof"]  # the environment block shows the same proof
    assert_agree(found["agree_with_conv"], "mamba_inner_fn (with causal-conv1d)")
    assert_agree(found["agree_without_conv"], "selective_scan_fn (without causal-conv1d)")
    assert found["auto_ran"] == "cuda"
    facts = found["facts"]
    assert facts["backend"] == "cuda" and facts["ran"] == ["cuda"]
    assert (facts["mamba_ssm"], facts["causal_conv1d"], facts["causal_conv1d_loaded"]) == (*versions, True)
    assert facts["torch"] and facts["device"] == "cpu" and facts["kernels_problem"] is None
    # mamba_ssm.Mamba and ours share one state_dict (strict, both ways) and one function
    assert found["load_theirs_into_ours"] == found["load_ours_into_theirs"] == "<All keys matched successfully>"
    assert found["theirs_vs_ours"] <= AGREE and found["ours_into_theirs_vs_ours"] <= AGREE


def test_failing_kernel_falls_back_with_one_warning_and_forced_cuda_refuses(env):
    found = run_checks(env, "new", "failing")["failing"]
    for mode, reason in [("fwd", "no kernel image is available"), ("bwd", "no kernel image is available"),
                         ("wrong", "disagree with the torch backend")]:
        result = found[mode]
        assert result["ran"] == ["torch", "torch"], (mode, result)
        warnings = [message for level, message in result["logged"] if level == "WARNING"]
        assert len(warnings) == 1, (mode, result["logged"])
        assert "falls back to the torch backend" in warnings[0] and reason in warnings[0], warnings
        assert result["refusal"] and reason in result["refusal"], (mode, result["refusal"])
        assert "--set mamba_backend=torch" in result["refusal"]
        assert "ss4rec kernels install" in result["refusal"]


@pytest.mark.parametrize("combo,detail", [
    ("broken-old", "mamba-ssm 2.2.2 calls causal_conv1d_fwd with 7 arguments, the loaded causal-conv1d takes 8"),
    ("broken-new", "mamba-ssm could not load causal_conv1d.cpp_functions"),
])
def test_broken_pair_is_refused_before_training(env, combo, detail):
    found = run_checks(env, combo, "broken")["broken"]
    assert found["problem"].startswith("broken pair: ") and detail in found["problem"]
    assert found["envinfo"] == [False, found["problem"]]  # the environment block says so too
    # forced: refused when the model is built, before any batch
    assert found["refusal"] and detail in found["refusal"] and "--set mamba_backend=torch" in found["refusal"]
    # auto: the torch backend, with the reason once
    assert found["auto_ran"] == "torch"
    warnings = [message for level, message in found["logged"] if level == "WARNING"]
    assert len(warnings) == 1 and detail in warnings[0]


def test_mamba_ssm_without_causal_conv1d_uses_selective_scan_fn(env):
    found = run_checks(env, "no-conv", "no-conv")["no-conv"]
    assert found["problem"] is None and found["conv_loaded"] is False
    assert found["summary"] == "mamba-ssm 2.3.1 without causal-conv1d"
    assert found["proof"][0], found["proof"]
    assert_agree(found["agree"], "selective_scan_fn")


GPU_CHECK = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def run_gpu_check(env, tmp_path, *args, **extra_env):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([str(env.python), str(GPU_CHECK), "--device", "cpu", "--shapes", "tiny",
                           "--no-entrypoint", "--out", str(out), *args],
                          env=env.environ("new", **extra_env), capture_output=True, text=True, timeout=600)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_gpu_check_runs_on_cpu_with_reference_kernels(env, tmp_path):
    proc, report = run_gpu_check(env, tmp_path, "--steps", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["failures"] == [] and report["backend_facts"]["backend"] == "cuda"
    parity = [r for r in report["rows"] if r["section"] == "parity"]
    assert {(r["scope"], r["precision"], r["causal_conv1d"]) for r in parity} == {
        (s, p, c) for s in ("layer", "model") for p in ("fp32", "bf16") for c in (True, False)}
    for row in parity:
        if row["precision"] == "fp32" or not row["causal_conv1d"]:
            assert row["verdict"] == "PASS", row
            assert len(row["differences"]) > 5  # output and every gradient
        else:  # mamba_inner_fn follows CUDA autocast only: a GPU case, said so
            assert row["verdict"] == "SKIP" and "CUDA autocast" in row["detail"]
    model_fp32 = next(r for r in parity if r["scope"] == "model" and r["precision"] == "fp32" and r["causal_conv1d"])
    assert model_fp32["max_rel_diff"] < 1e-5
    assert any(name.startswith("grad model.0.S5.") for name in model_fp32["differences"])  # whole model
    training = [r for r in report["rows"] if r["section"] == "training"]
    assert {(r["backend"], r["precision"]) for r in training} == {
        (b, p) for b in ("torch", "cuda") for p in ("fp32", "bf16")}
    for row in training:
        assert row["verdict"] == "PASS" and row["ran"] == [row["backend"]] and len(row["losses"]) == 3, row
        assert row["ms_per_step"] > 0
    assert "| layer | tiny | fp32 | with |" in proc.stdout  # the printed table


def test_gpu_check_fails_on_a_wrong_kernel(env, tmp_path):
    proc, report = run_gpu_check(env, tmp_path, "--steps", "2", "--precisions", "fp32",
                                 SS4REC_STANDIN_KERNEL_FAIL="wrong")
    assert proc.returncode == 1
    assert report["backend_facts"]["backend"] is None  # the proof failed: forced cuda refused
    assert any("disagree with the torch backend" in failure for failure in report["failures"])
    assert "FAIL" in proc.stdout.splitlines()[-1] or "failure(s)" in proc.stdout
