"""ss4rec.ssm.kernels: pinned pairs, the prebuilt-wheel decision, the install plan, its command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ss4rec.ssm import kernels
from ss4rec.ssm.kernels import PAIRS, Machine, keep_one_arch, pair_for, plan_install, prebuilt_wheel

SRC = Path(__file__).resolve().parent.parent / "src"

POD = Machine(torch="2.10.0+cu128", cuda="12.8", python="3.11", cxx11_abi=True, platform="linux_x86_64",
              nvcc=None, gpu_arch="9.0", gpu_name="NVIDIA H100", free_memory_gb=200.0, cpus=32)
NEW_TORCH = Machine(torch="2.13.0+cu128", cuda="12.8", python="3.11", cxx11_abi=True,
                    platform="linux_x86_64", nvcc=None, gpu_arch="9.0", free_memory_gb=20.0, cpus=16)


def run(*args, env=None):
    environ = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environ, timeout=300)


def test_every_pair_agrees_on_the_causal_conv1d_calling_convention():
    for pair in PAIRS:
        assert pair.mamba.conv_args == pair.conv.conv_args, pair
        assert pair.mamba.dist == "mamba-ssm" and pair.conv.dist == "causal-conv1d"


@pytest.mark.parametrize("torch_version,mamba,conv", [
    ("2.13.0+cu128", "2.3.1", "1.6.1"), ("2.10.0", "2.3.1", "1.6.1"), ("2.6.0+cu124", "2.3.1", "1.6.1"),
    ("2.5.1+cu121", "2.2.6.post3", "1.5.3.post1"), ("2.4.0", "2.2.6.post3", "1.5.3.post1"),
    ("2.3.1+cu118", "2.2.4", "1.5.0.post8"), ("2.1.2", "2.2.4", "1.5.0.post8"),
])
def test_pair_for_torch(torch_version, mamba, conv):
    pair = pair_for(torch_version)
    assert (pair.mamba.version, pair.conv.version) == (mamba, conv)


def test_no_pair_below_torch_2_1():
    assert pair_for("2.0.1") is None


def test_wheel_names_as_upstream_names_them():
    pair = pair_for(POD.torch)
    assert kernels.wheel_name(pair.mamba, POD) == "mamba_ssm-2.3.1+cu12torch2.10cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    assert kernels.wheel_url(pair.conv, POD) == (
        "https://github.com/Dao-AILab/causal-conv1d/releases/download/v1.6.1/"
        "causal_conv1d-1.6.1+cu12torch2.10cxx11abiTRUE-cp311-cp311-linux_x86_64.whl")
    ngc = Machine(torch="2.8.0a0+5228986c39", cuda="12.9", python="3.12", ngc_pytorch="25.06")
    assert kernels.wheel_name(pair.mamba, ngc) == "mamba_ssm-2.3.1+cu12torch25.06cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"


def test_wheel_name_format_is_upstream_setup_py(tmp_path):
    """The format we compute is the one the pinned releases' setup.py build (read from the sdists)."""
    from kernel_env import unpack_sdist

    for dist, version in [("mamba-ssm", "2.3.1"), ("causal-conv1d", "1.6.1")]:
        setup = (unpack_sdist(dist, version, tmp_path) / "setup.py").read_text()
        assert re.search(r'wheel_filename = f"\{PACKAGE_NAME\}-\{\w+_version\}\+\{cuda_or_hip\}\{gpu_compute_version\}'
                         r'torch\{torch_version\}cxx11abi\{cxx11_abi\}-\{python_version\}-\{python_version\}-'
                         r'\{platform_name\}\.whl"', setup), dist
        assert 'cuda_version = f"{torch_cuda_version.major}"' in setup  # cu12, not cu128
        assert 'return "linux_x86_64"' in setup  # whatever the machine: aarch64 cannot find a wheel
        assert 'torch_version = f"{torch_version_raw.major}.{torch_version_raw.minor}"' in setup
        assert "SKIP_CUDA_BUILD" in setup and "urllib.request.urlretrieve(wheel_url" in setup


@pytest.mark.parametrize("changes,exists", [
    ({}, True),
    ({"python": "3.9"}, False),                        # 2.3.1 builds 3.10-3.13
    ({"torch": "2.8.0", "cuda": "11.8"}, False),       # no CUDA 11 build of torch 2.8
    ({"torch": "2.9.1", "cuda": "13.0"}, True),
    ({"torch": "2.7.1", "cxx11_abi": False}, False),   # torch 2.7+ wheels: C++11 ABI only
    ({"torch": "2.6.0", "cxx11_abi": False}, True),
    ({"platform": "linux_aarch64"}, False),            # setup.py asks for x86_64 wheels only
    ({"torch": "2.13.0"}, False),
])
def test_prebuilt_wheel_from_the_release_matrix(changes, exists):
    machine = Machine(**{**POD.__dict__, **changes})
    found, why = prebuilt_wheel(pair_for(POD.torch).mamba, machine)
    assert found is exists, why


def test_plan_cpu_torch_skips_in_one_line():
    plan = plan_install(Machine(torch="2.13.0+cpu", cuda=None))
    assert plan.action == "skip" and plan.exit_code == 0
    assert "\n" not in plan.message and "CPU build" in plan.message and "pure-PyTorch Mamba" in plan.message


def test_plan_prebuilt_skips_the_compile():
    plan = plan_install(POD, check_url=lambda url: (True, ""))
    assert plan.action == "prebuilt"
    assert [(s.release.pin, s.how) for s in plan.steps] == [("mamba-ssm==2.3.1", "prebuilt"),
                                                            ("causal-conv1d==1.6.1", "prebuilt")]
    assert plan.env == {"MAMBA_SKIP_CUDA_BUILD": "TRUE", "CAUSAL_CONV1D_SKIP_CUDA_BUILD": "TRUE"}


def test_plan_present_kernels_do_nothing():
    plan = plan_install(POD, present=(True, "mamba-ssm 2.3.1 with causal-conv1d 1.6.1: ..."))
    assert plan.action == "present" and plan.exit_code == 0


def test_plan_no_wheel_no_nvcc_stops_with_one_paragraph():
    plan = plan_install(NEW_TORCH)
    assert plan.action == "stop" and plan.exit_code == 2
    text = plan.message
    assert "\n" not in text
    assert "no prebuilt wheel matches this machine (torch 2.13.0+cu128" in text
    assert "torch 2.6-2.10, Python 3.10-3.13" in text and "there is no nvcc" in text
    assert "(1) use a pod image" in text and "(2) train without the kernels: --set mamba_backend=torch" in text
    assert "docs/benchmarks.md" in text


def test_plan_unreachable_wheel_is_not_trusted():
    plan = plan_install(POD, check_url=lambda url: (False, f"{url} answers HTTP 404"))
    assert plan.action == "stop" and "answers HTTP 404" in plan.message


def test_plan_source_build_only_when_asked(monkeypatch):
    monkeypatch.delenv("MAX_JOBS", raising=False)
    machine = Machine(**{**NEW_TORCH.__dict__, "nvcc": "/usr/local/cuda/bin/nvcc", "nvcc_version": "12.8"})
    plan = plan_install(machine)
    assert plan.action == "stop" and "rerun with --build-kernels" in plan.message and "sm_90" in plan.message
    plan = plan_install(machine, build_kernels=True)
    assert plan.action == "build"
    assert "13 CUDA files for one GPU architecture with MAX_JOBS=5" in plan.message  # 20 GB // 4
    assert plan.env["MAMBA_FORCE_BUILD"] == plan.env["CAUSAL_CONV1D_FORCE_BUILD"] == "TRUE"
    assert plan.env["MAMBA_KEEP_CUDA_BUILD"] == "TRUE" and plan.env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert plan.env["CUDA_HOME"] == "/usr/local/cuda"
    assert plan.env["PYTORCH_NVCC"].endswith("-m ss4rec kernels nvcc --arch 90 --nvcc /usr/local/cuda/bin/nvcc --")


def test_plan_nvcc_of_another_cuda_major_stops():
    machine = Machine(**{**NEW_TORCH.__dict__, "nvcc": "/usr/local/cuda/bin/nvcc", "nvcc_version": "13.0"})
    plan = plan_install(machine, build_kernels=True)
    assert plan.action == "stop" and "nvcc 13.0" in plan.message and "CUDA 12.8" in plan.message


@pytest.mark.parametrize("free_gb,cpus,jobs", [(20.0, 16, 5), (200.0, 16, 16), (3.0, 16, 1), (None, 8, 1)])
def test_build_jobs_from_free_memory(monkeypatch, free_gb, cpus, jobs):
    monkeypatch.delenv("MAX_JOBS", raising=False)
    assert kernels.build_jobs(Machine(torch="2.13.0", free_memory_gb=free_gb, cpus=cpus)) == jobs
    monkeypatch.setenv("MAX_JOBS", "3")
    assert kernels.build_jobs(Machine(torch="2.13.0", free_memory_gb=free_gb, cpus=cpus)) == 3


def test_keep_one_arch_drops_other_gencodes():
    args = ["-O3", "-gencode", "arch=compute_75,code=sm_75", "-gencode", "arch=compute_90,code=sm_90",
            "-gencode=arch=compute_80,code=sm_80", "--threads", "4", "-c", "a.cu"]
    assert keep_one_arch(args, "90") == ["-O3", "-gencode", "arch=compute_90,code=sm_90", "--threads", "4",
                                         "-c", "a.cu"]
    assert keep_one_arch(["-c", "a.cu", "-gencode", "arch=compute_80,code=sm_80"], "120") == [
        "-c", "a.cu", "-gencode", "arch=compute_120,code=sm_120"]


def test_positional_arity_of_python_and_pybind11_functions():
    def seven(a, b, c, d, e, f, g):
        pass

    assert kernels.positional_arity(seven) == 7
    pybind = types.SimpleNamespace(__doc__="causal_conv1d_fwd(arg0: torch.Tensor, arg1: torch.Tensor, "
                                           "arg2: Optional[torch.Tensor], arg3: Optional[torch.Tensor], "
                                           "arg4: Optional[torch.Tensor], arg5: torch.Tensor, "
                                           "arg6: Optional[torch.Tensor], arg7: bool) -> None\n\nCausal conv1d forward")
    assert kernels.positional_arity(pybind) == 8


def test_install_command_on_a_cpu_machine_says_one_line_and_exits_0():
    proc = run("-m", "ss4rec", "kernels", "install")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mamba-ssm kernels skipped: torch ") and "CPU build" in lines[0]


def test_install_command_without_wheel_or_nvcc_prints_the_paragraph_not_a_traceback():
    proc = run("-m", "ss4rec", "kernels", "install", "--assume", "torch=2.13.0+cu128", "--assume", "nvcc=none")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    paragraph = proc.stderr.strip()
    assert "\n" not in paragraph and paragraph.startswith("mamba-ssm kernels not installed: no prebuilt wheel")
    assert "--set mamba_backend=torch" in paragraph


def test_plan_command_shows_the_prebuilt_wheels_it_would_install():
    proc = run("-m", "ss4rec", "kernels", "plan", "--assume", "torch=2.8.0+cu128", "--assume", "python=3.12")
    assert proc.returncode == 0, proc.stderr
    assert "mamba_ssm-2.3.1+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl" in proc.stdout
    assert "causal_conv1d-1.6.1+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl" in proc.stdout


def test_backend_facts_command_on_cpu():
    proc = run("-m", "ss4rec", "kernels", "check", "--json")
    assert proc.returncode == 1  # no kernels run here
    import json

    facts = json.loads(proc.stdout)
    assert facts["backend"] == "torch" and facts["device"] == "cpu" and facts["torch"]
    assert set(facts) >= {"mamba_ssm", "causal_conv1d", "cuda", "gpu", "reason", "kernels_problem"}


def test_nvcc_wrapper_compiles_for_one_architecture():
    """PYTORCH_NVCC of a source build: the real nvcc (here: echo) gets only this GPU's -gencode."""
    proc = run("-m", "ss4rec", "kernels", "nvcc", "--arch", "90", "--nvcc", "/bin/echo", "--",
               "-O3", "-gencode", "arch=compute_75,code=sm_75", "-gencode", "arch=compute_90,code=sm_90",
               "--threads", "4", "-c", "a.cu", "-o", "a.o")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["-O3", "-gencode", "arch=compute_90,code=sm_90", "--threads", "4",
                                   "-c", "a.cu", "-o", "a.o"]


class ReleaseAssets(__import__("http.server").server.BaseHTTPRequestHandler):
    """A release page stand-in: one wheel exists (answering with a redirect, as GitHub does)."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/cdn/present.whl":
            self.send_response(206)
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(b"P")
        elif self.path.endswith("/present.whl"):
            self.send_response(302)
            self.send_header("Location", "/cdn/present.whl")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_url_exists_follows_redirects_and_names_the_failure():
    from localserver import local_http_server

    with local_http_server(ReleaseAssets) as httpd:
        base = f"http://127.0.0.1:{httpd.server_port}/releases/download/v2.3.1"
        assert kernels.url_exists(f"{base}/present.whl") == (True, "")
        ok, why = kernels.url_exists(f"{base}/absent.whl")
        assert not ok and why == f"{base}/absent.whl answers HTTP 404"
    ok, why = kernels.url_exists("http://127.0.0.1:9/nothing-listens-here.whl", timeout=5)
    assert not ok and "cannot be reached" in why
