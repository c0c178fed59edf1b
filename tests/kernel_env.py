"""The stand-in kernel environment of the CPU tests: mamba-ssm and causal-conv1d's real Python
sources, with only their compiled parts replaced (``tests/kernel_standins/``).

Built once into a cache folder (``$SS4REC_TEST_CACHE``, default ``~/.cache/ss4rec-tests``)
from the package registry -- nothing of mamba-ssm's or causal-conv1d's code is kept in this
repository:

- ``downloads/``: the sdists of mamba-ssm 2.2.2 and 2.3.1, causal-conv1d 1.4.0 and 1.6.1
  (``pip download``, ~0.3 MB);
- ``venv/``: a venv that sees this interpreter's packages (torch, RecBole, ...) through a
  ``.pth`` file, plus what ``import mamba_ssm`` needs beyond them: triton, transformers,
  einops (~0.3 GB download, ~1.2 GB on disk, ~40 s the first time);
- ``sites/<dist>-<version>/``: each sdist installed by its own ``setup.py`` with the CUDA
  build skipped (``*_SKIP_CUDA_BUILD=TRUE``, ``pip install --target``): the real package,
  without kernels.

The pairs (:data:`COMBOS`) run in subprocesses of ``venv/bin/python`` whose ``PYTHONPATH``
puts one mamba-ssm, one causal-conv1d (or none) and the matching stand-in extension modules
first. Prefetch everything (e.g. in CI before the tests, or before going offline)::

    python tests/kernel_env.py
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
STANDINS = HERE / "kernel_standins"
SRC = HERE.parent / "src"

SDISTS = {("mamba-ssm", "2.2.2"), ("mamba-ssm", "2.3.1"), ("causal-conv1d", "1.4.0"), ("causal-conv1d", "1.6.1")}
# causal-conv1d's calling convention: <= 1.5.0 takes 7 arguments, >= 1.5.1 takes 8
CONV_STANDIN = {"1.4.0": "conv7", "1.6.1": "conv8"}
# what `import mamba_ssm` needs beyond ss4rec's own dependencies (its install_requires);
# mamba-ssm <= 2.2.6 imports GreedySearchDecoderOnlyOutput, which transformers 5 removed
MAMBA_IMPORTS = ("einops", "triton", "transformers<5", "wheel>=0.40,<0.49")
BUILD_VERSION = "1"  # bump to rebuild caches made by an older version of this file

# name -> (mamba-ssm version, causal-conv1d version or None)
COMBOS = {
    "new": ("2.3.1", "1.6.1"),        # the pinned pair's mamba-ssm / causal-conv1d generation
    "old": ("2.2.2", "1.4.0"),        # the official SS4Rec's mamba-ssm, 7-argument conv
    "no-conv": ("2.3.1", None),       # mamba-ssm without causal-conv1d
    "broken-old": ("2.2.2", "1.6.1"),  # 7 arguments passed, 8 taken
    "broken-new": ("2.3.1", "1.4.0"),  # no causal_conv1d.cpp_functions
}


def cache_dir() -> Path:
    root = os.environ.get("SS4REC_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ss4rec-tests")
    return Path(root) / f"kernel-standins-v{BUILD_VERSION}"


def _run(cmd: list, **kwargs) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(
            f"building the stand-in kernel environment failed (it needs the package registry once; "
            f"prefetch with `python tests/kernel_env.py`):\n$ {' '.join(map(str, cmd))}\n"
            f"{(proc.stdout + proc.stderr)[-4000:]}")


def _sdist_name(dist: str, version: str) -> str:
    return f"{dist.replace('-', '_')}-{version}.tar.gz"


@dataclass(frozen=True)
class KernelEnv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    def site(self, dist: str, version: str) -> Path:
        return self.root / "sites" / f"{dist}-{version}"

    def environ(self, combo: str, **extra) -> dict:
        """Environment for a subprocess of :attr:`python` with the pair ``combo`` importable."""
        mamba, conv = COMBOS[combo]
        path = [self.site("mamba-ssm", mamba), STANDINS]
        if conv is not None:
            path += [self.site("causal-conv1d", conv), STANDINS / CONV_STANDIN[conv]]
        path.append(SRC)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update({"PYTHONPATH": os.pathsep.join(map(str, path)), "OMP_NUM_THREADS": "1",
                    "PYTHONDONTWRITEBYTECODE": "1", "TRANSFORMERS_VERBOSITY": "error"}, **extra)
        return env


def _fetch_sdists(downloads: Path) -> None:
    downloads.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    if not list(downloads.glob("wheel-*.whl")):
        _run([python, "-m", "pip", "download", "--no-deps", "-d", downloads, "wheel>=0.40,<0.49"])
    wheel = next(downloads.glob("wheel-*.whl"))
    for dist, version in sorted(SDISTS):
        if (downloads / _sdist_name(dist, version)).exists():
            continue
        # pip prepares an sdist's metadata even for a download, and these setup.py files
        # import torch and wheel: no build isolation, wheel importable from its .whl
        env = {**os.environ, "PYTHONPATH": str(wheel), "MAMBA_SKIP_CUDA_BUILD": "TRUE",
               "CAUSAL_CONV1D_SKIP_CUDA_BUILD": "TRUE"}
        _run([python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              "--no-build-isolation", "-d", downloads, f"{dist}=={version}"], env=env)


def _build(root: Path) -> None:
    downloads = root / "downloads"
    _fetch_sdists(downloads)
    base_site = sysconfig.get_paths()["purelib"]
    venv = root / "venv"
    marker = venv / "ss4rec-venv.txt"  # what the venv was built from: rebuilt when it changes
    recipe = "\n".join([base_site, *MAMBA_IMPORTS])
    if not marker.exists() or marker.read_text() != recipe:
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys._base_executable if hasattr(sys, "_base_executable") else sys.executable, "-m", "venv", venv])
        site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        (site / "ss4rec-base.pth").write_text(base_site + "\n")
        _run([venv / "bin" / "python", "-m", "pip", "install", "-q", *MAMBA_IMPORTS])
        marker.write_text(recipe)
    for dist, version in sorted(SDISTS):
        target = root / "sites" / f"{dist}-{version}"
        if target.exists():
            continue
        staging = Path(tempfile.mkdtemp(dir=root, prefix="site-"))
        env = {**os.environ, "MAMBA_SKIP_CUDA_BUILD": "TRUE", "MAMBA_FORCE_BUILD": "TRUE",
               "CAUSAL_CONV1D_SKIP_CUDA_BUILD": "TRUE", "CAUSAL_CONV1D_FORCE_BUILD": "TRUE"}
        _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
              "--no-cache-dir", "--target", staging, downloads / _sdist_name(dist, version)], env=env)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)


def kernel_env() -> KernelEnv:
    """The stand-in environment, built (once, under a lock) if it is not in the cache yet."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build(root)
    return KernelEnv(root)


def wheelhouse() -> Path:
    """A folder of wheels standing in for the registry in the fresh-venv install tests: what
    building ss4rec needs (its [build-system] requirement, setuptools) and nothing else."""
    from importlib.metadata import version

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    house = root / "wheelhouse"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = f"setuptools=={version('setuptools')}"  # the installed one meets ss4rec's bounds
        if not list(house.glob(f"setuptools-{version('setuptools')}-*.whl")):
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", house, wanted])
    return house


def unpack_sdist(dist: str, version: str, into: Path) -> Path:
    """The sdist's top folder, unpacked into ``into`` (for tests that read upstream sources)."""
    with tarfile.open(kernel_env().root / "downloads" / _sdist_name(dist, version)) as archive:
        archive.extractall(into, filter="data")
    return into / _sdist_name(dist, version)[: -len(".tar.gz")]


if __name__ == "__main__":
    env = kernel_env()
    print(f"stand-in kernel environment ready: {env.root}")
