"""The install path as a new user meets it: a fresh venv, a copy of the repository, and a
local wheelhouse standing in for the registry (pip is cut off from any index).

The venv reuses this interpreter's installed packages (torch, RecBole, ...) through a
``.pth`` file, so nothing big is downloaded; ss4rec itself is built and installed by pip,
from the copy, with build isolation (its setuptools comes from the wheelhouse).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from kernel_env import wheelhouse

REPO = Path(__file__).resolve().parents[1]


def copy_repository(into: Path) -> Path:
    """The repository's files (tracked and untracked, not ignored), as a fresh clone has them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


def fresh_venv(path: Path) -> Path:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(path)], check=True, capture_output=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch, RecBole and the other dependencies as installed here (ss4rec itself is not:
    # a .pth line adds the folder, and editable installs live in .pth files it does not run)
    Path(site, "reuse-installed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def offline_env(venv_python: Path, house: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "PIP_CONFIG_FILE": os.devnull,  # no machine-wide index or constraints
        "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(house),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1",
        "PATH": f"{venv_python.parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHON": str(venv_python), "OMP_NUM_THREADS": "1",
    })
    return env


@pytest.fixture
def fresh(tmp_path):
    repo = copy_repository(tmp_path / "ss4rec")
    python = fresh_venv(tmp_path / "venv")
    env = offline_env(python, wheelhouse())
    assert subprocess.run([str(python), "-c", "import torch, recbole"], env=env).returncode == 0
    assert subprocess.run([str(python), "-c", "import ss4rec"], env=env, capture_output=True).returncode != 0
    return repo, python, env


def kernel_lines(text: str) -> list:
    return [line for line in text.splitlines() if line.startswith("mamba-ssm kernels")]


def test_entrypoint_install_on_a_cpu_machine_installs_ss4rec_and_skips_the_kernels_in_one_line(fresh):
    repo, python, env = fresh
    proc = subprocess.run(["bash", str(repo / "runpod_entrypoint.sh"), "--install", "--debug", "--dry-run",
                           "--output", str(repo / "runs" / "install-check")],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"ss4rec is not importable by {python}: installing {repo}" in proc.stdout
    assert re.search(r"^Successfully installed .*\bss4rec-", proc.stdout, re.M), proc.stdout[-3000:]
    lines = kernel_lines(proc.stdout + proc.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("mamba-ssm kernels skipped: torch ") and "is a CPU build, without CUDA" in lines[0]
    assert "dry run: preflight passed" in proc.stdout
    installed = subprocess.run([str(python), "-c", "import ss4rec, sys; print(ss4rec.__file__)"],
                               capture_output=True, text=True, env=env)
    assert installed.returncode == 0 and str(python.parent.parent) in installed.stdout  # in the venv


def readme_gpu_lines() -> list:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"the same two steps `\./runpod_entrypoint\.sh --install` runs:\n\n\s*```bash\n(.*?)```",
                      readme, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_gpu_lines_on_a_cpu_machine_and_the_no_wheel_no_nvcc_paragraph(fresh):
    repo, python, env = fresh
    lines = readme_gpu_lines()
    assert lines == ["pip install -e .", "ss4rec kernels install"]
    install = subprocess.run(lines[0], shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    kernels = subprocess.run(lines[1], shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert kernels.returncode == 0, kernels.stderr
    assert len(kernel_lines(kernels.stdout)) == 1 and kernels.stdout.count("\n") == 1
    # a CUDA torch without a prebuilt wheel (torch 2.13) and no nvcc: one paragraph, no pip run
    stop = subprocess.run(lines[1] + " --assume torch=2.13.0+cu128 --assume nvcc=none", shell=True, cwd=repo,
                          env=env, capture_output=True, text=True, timeout=300)
    assert stop.returncode == 2 and "Traceback" not in stop.stderr and "pip" not in stop.stdout
    paragraph = stop.stderr.strip()
    assert "\n" not in paragraph and "no prebuilt wheel matches this machine" in paragraph
    assert "there is no nvcc" in paragraph and "--set mamba_backend=torch" in paragraph
    missing = subprocess.run([str(python), "-c", "import mamba_ssm"], capture_output=True, env=env)
    assert missing.returncode != 0  # nothing was installed
