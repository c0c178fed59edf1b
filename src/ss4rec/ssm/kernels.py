"""mamba-ssm's CUDA kernels as a dependency: which releases, whether they install here, what loaded.

The fused Mamba kernels come from two packages: mamba-ssm (``selective_scan_cuda``) and
causal-conv1d (``causal_conv1d_cuda``). Both are source-only on PyPI; their ``setup.py``
imports torch, then downloads a prebuilt wheel from the project's GitHub release or compiles
the CUDA sources. This module decides, before anything is installed:

- **which pair** (:data:`PAIRS`, by torch version). Pairs must agree on one calling
  convention: mamba-ssm 2.2.2-2.2.4 call ``causal_conv1d_cuda.causal_conv1d_fwd`` with 7
  arguments, causal-conv1d >= 1.5.1 takes 8; mamba-ssm >= 2.2.5 loads
  ``causal_conv1d.cpp_functions``, which causal-conv1d <= 1.5.0 lacks (``mamba_inner_fn``
  then asserts).
- **whether a prebuilt wheel exists** (:func:`prebuilt_wheel`) for this torch / CUDA /
  Python / C++ ABI / platform: each release's build matrix (its
  ``.github/workflows/publish.yaml``), with the file named as its ``setup.py`` names it.
- **what to do** (:func:`plan_install`): nothing (a CPU torch, or kernels that already run),
  the prebuilt wheels, a source build (only when asked, ``--build-kernels``: nvcc, this
  GPU's architecture only, ``MAX_JOBS`` from free memory, an estimate first), or a stop
  that names the cause and the ways on.

At run time, :func:`loaded_kernels` reports what mamba-ssm actually loaded (its own
references to causal-conv1d, not an import of ours), so a broken pair is refused before
training instead of failing inside it.

Command line (:mod:`ss4rec.commands.kernels`)::

    ss4rec kernels plan                     # what install would do here; changes nothing
    ss4rec kernels install                  # skip, or the prebuilt wheels, or stop saying why
    ss4rec kernels install --build-kernels  # also allow a source build
    ss4rec kernels plan --assume torch=2.10.0+cu128 --assume nvcc=none
    ss4rec kernels check                    # which Mamba backend runs here, and why

``--assume KEY=VALUE`` replaces one fact about this machine (see :class:`Machine`), to ask
"what if" (which torch would have prebuilt kernels?); with it, nothing is installed.

    >>> from ss4rec.ssm.kernels import Machine, plan_install
    >>> cpu = Machine(torch="2.13.0+cpu", cuda=None, python="3.11")
    >>> plan_install(cpu).action
    'skip'
    >>> pod = Machine(torch="2.10.0+cu128", cuda="12.8", python="3.11")
    >>> plan = plan_install(pod)
    >>> plan.action, [s.wheel for s in plan.steps][0]
    ('prebuilt', 'mamba_ssm-2.3.1+cu12torch2.10cxx11abiTRUE-cp311-cp311-linux_x86_64.whl')
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

__all__ = [
    "Release", "KernelPair", "PAIRS", "Machine", "Plan", "LoadedKernels",
    "pair_for", "prebuilt_wheel", "machine_facts", "plan_install", "loaded_kernels",
    "install_command", "run_nvcc", "KERNELS_INSTALL_COMMAND",
]

# The command that installs the kernels (every hint names it; the entrypoint's --install runs it).
KERNELS_INSTALL_COMMAND = "ss4rec kernels install"

# Slowdown of SS4Rec training with mamba_backend=torch against the kernels on a GPU, as
# measured by scripts/gpu_check.py (docs/benchmarks.md, "GPU"). None until measured.
TORCH_BACKEND_GPU_SLOWDOWN: Optional[str] = None

# Upstream setup.py (every release pinned here) looks for "linux_x86_64" wheels whatever the
# machine, so on aarch64 the download misses and a source build starts: only x86_64 has
# prebuilt wheels that pip can reach.
WHEEL_PLATFORM = "linux_x86_64"

# A source build's nvcc job for one architecture: peak memory (GB) and minutes per CUDA file
# (low, high). Estimates, not measured here: upstream's CI builds 6-9 architectures per file
# with MAX_JOBS=2 on 16 GB + 10 GB swap and allows 5 hours.
BUILD_GB_PER_JOB = 4.0
BUILD_MINUTES_PER_FILE = (2, 6)

# Build tools the kernels' setup.py needs in the environment (it runs without build isolation
# because it imports torch). setuptools keeps ss4rec's own bounds; wheel.bdist_wheel, which
# setup.py imports, exists up to wheel 0.48.
BUILD_TOOLS = ("wheel>=0.40,<0.49", "setuptools>=77.0.3,<81", "packaging", "ninja")


# ----------------------------------------------------------------------------- releases

@dataclass(frozen=True)
class WheelSet:
    """One block of a release's build matrix: a wheel exists for every combination in it."""

    torch: tuple          # torch "major.minor"
    cuda: tuple           # CUDA major of torch's build
    python: tuple         # "3.11"
    cxx11_abi: tuple = (False, True)


@dataclass(frozen=True)
class Release:
    """One release of mamba-ssm or causal-conv1d, as its setup.py and publish workflow build it."""

    dist: str             # distribution name on PyPI
    version: str
    repo: str             # GitHub owner/name (wheels are assets of release v{version})
    wheels: tuple         # WheelSet, ...
    cuda_files: int       # .cu files a source build compiles
    conv_args: int        # arguments of causal_conv1d_fwd this release calls / defines
    env_prefix: str       # MAMBA / CAUSAL_CONV1D: its setup.py's environment switches
    constraints: tuple = ()  # what its own requirements leave open but it cannot import with

    @property
    def module(self) -> str:
        return self.dist.replace("-", "_")

    @property
    def pin(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class KernelPair:
    """A mamba-ssm and a causal-conv1d release that work together, for a range of torch."""

    torch_min: tuple      # (major, minor), inclusive
    torch_max: Optional[tuple]  # inclusive; None = and newer (source builds)
    mamba: Release
    conv: Release


_PY39_13 = ("3.9", "3.10", "3.11", "3.12", "3.13")
_PY310_13 = ("3.10", "3.11", "3.12", "3.13")

# Matrices read from each tag's .github/workflows/publish.yaml (x86_64 rows; the excludes
# applied). Both projects tag CUDA by major: cu11 (11.8), cu12 (12.x), cu13 (13.0).
# mamba-ssm <= 2.2.6 import GreedySearchDecoderOnlyOutput, which transformers 5 removed
_OLD_TRANSFORMERS = ("transformers<5",)
MAMBA_2_2_4 = Release(
    "mamba-ssm", "2.2.4", "state-spaces/mamba", conv_args=7, cuda_files=10, env_prefix="MAMBA",
    constraints=_OLD_TRANSFORMERS,
    wheels=(WheelSet(("2.1",), (11, 12), ("3.9", "3.10", "3.11")),
            WheelSet(("2.2", "2.3", "2.4"), (11, 12), ("3.9", "3.10", "3.11", "3.12")),
            WheelSet(("2.5",), (11, 12), _PY39_13)))
CONV_1_5_0_POST8 = Release(
    "causal-conv1d", "1.5.0.post8", "Dao-AILab/causal-conv1d", conv_args=7, cuda_files=3,
    env_prefix="CAUSAL_CONV1D",
    wheels=MAMBA_2_2_4.wheels)
MAMBA_2_2_6_POST3 = Release(
    "mamba-ssm", "2.2.6.post3", "state-spaces/mamba", conv_args=8, cuda_files=10, env_prefix="MAMBA",
    constraints=_OLD_TRANSFORMERS,
    wheels=(WheelSet(("2.4",), (11, 12), ("3.9", "3.10", "3.11", "3.12")),
            WheelSet(("2.5", "2.6", "2.7"), (11, 12), _PY39_13)))
CONV_1_5_3_POST1 = Release(
    "causal-conv1d", "1.5.3.post1", "Dao-AILab/causal-conv1d", conv_args=8, cuda_files=3,
    env_prefix="CAUSAL_CONV1D",
    wheels=MAMBA_2_2_6_POST3.wheels)
MAMBA_2_3_1 = Release(
    "mamba-ssm", "2.3.1", "state-spaces/mamba", conv_args=8, cuda_files=10, env_prefix="MAMBA",
    wheels=(WheelSet(("2.6",), (11, 12), _PY310_13),
            WheelSet(("2.7",), (11, 12), _PY310_13, (True,)),
            WheelSet(("2.8",), (12,), _PY310_13, (True,)),
            WheelSet(("2.9", "2.10"), (12, 13), _PY310_13, (True,))))
CONV_1_6_1 = Release(
    "causal-conv1d", "1.6.1", "Dao-AILab/causal-conv1d", conv_args=8, cuda_files=3,
    env_prefix="CAUSAL_CONV1D",
    wheels=(WheelSet(("2.6", "2.7"), (11, 12), _PY310_13),
            WheelSet(("2.8",), (12,), _PY310_13),
            WheelSet(("2.9", "2.10"), (12, 13), _PY310_13)))

# Newest first. mamba-ssm 2.3.2.post1 is left out on purpose: it requires triton >= 3.5,
# which torch <= 2.8 cannot have, plus tilelang / quack-kernels that SS4Rec does not use.
PAIRS = (
    KernelPair((2, 6), None, MAMBA_2_3_1, CONV_1_6_1),
    KernelPair((2, 4), (2, 5), MAMBA_2_2_6_POST3, CONV_1_5_3_POST1),
    KernelPair((2, 1), (2, 3), MAMBA_2_2_4, CONV_1_5_0_POST8),
)


def _major_minor(version: str) -> Optional[tuple]:
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def pair_for(torch_version: str) -> Optional[KernelPair]:
    """The pinned pair for a torch version (``"2.10.0+cu128"``), or None below torch 2.1."""
    minor = _major_minor(torch_version)
    if minor is None:
        return None
    for pair in PAIRS:
        if minor >= pair.torch_min and (pair.torch_max is None or minor <= pair.torch_max):
            return pair
    return None


def _torch_ranges(release: Release) -> str:
    """'torch 2.6-2.10, Python 3.10-3.13' for a release's wheels (for messages)."""
    torches = sorted({t for row in release.wheels for t in row.torch}, key=_major_minor)
    pythons = sorted({p for row in release.wheels for p in row.python}, key=_major_minor)
    return f"torch {torches[0]}-{torches[-1]}, Python {pythons[0]}-{pythons[-1]}"


# ----------------------------------------------------------------------------- this machine

@dataclass(frozen=True)
class Machine:
    """What decides whether the kernels install here (``--assume KEY=VALUE`` replaces one)."""

    torch: str                          # torch.__version__
    cuda: Optional[str] = None          # torch.version.cuda (None: a CPU build)
    python: str = f"{sys.version_info.major}.{sys.version_info.minor}"
    cxx11_abi: bool = True              # torch._C._GLIBCXX_USE_CXX11_ABI
    platform: str = WHEEL_PLATFORM      # linux_<machine>
    nvcc: Optional[str] = None          # the nvcc a build would use (None: none found)
    nvcc_version: Optional[str] = None  # "12.4"
    gpu_arch: Optional[str] = None      # compute capability of GPU 0, "9.0" (None: no GPU seen)
    gpu_name: Optional[str] = None
    free_memory_gb: Optional[float] = None
    cpus: int = 1
    hip: Optional[str] = None           # torch.version.hip (ROCm builds)
    ngc_pytorch: Optional[str] = None   # NVIDIA_PYTORCH_VERSION on NGC PyTorch images


def _find_nvcc() -> Optional[str]:
    """The nvcc torch's extension builder would use (its CUDA_HOME search order)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        candidate = os.path.join(home, "bin", "nvcc")
        return candidate if os.path.exists(candidate) else None
    found = shutil.which("nvcc")
    if found:
        return found
    candidate = "/usr/local/cuda/bin/nvcc"
    return candidate if os.path.exists(candidate) else None


def _nvcc_version(nvcc: Optional[str]) -> Optional[str]:
    if not nvcc:
        return None
    try:
        text = subprocess.run([nvcc, "-V"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", text)
    return match.group(1) if match else None


def _free_memory_gb() -> Optional[float]:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_facts() -> Machine:
    """The facts :func:`plan_install` decides on, read from this machine."""
    gpu_arch = gpu_name = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        gpu_arch, gpu_name = f"{major}.{minor}", torch.cuda.get_device_name(0)
    nvcc = _find_nvcc()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    ngc = os.environ.get("NVIDIA_PYTORCH_VERSION") if os.environ.get("NVIDIA_PRODUCT_NAME") == "PyTorch" else None
    system = "linux" if sys.platform.startswith("linux") else sys.platform
    return Machine(
        torch=torch.__version__, cuda=torch.version.cuda, hip=getattr(torch.version, "hip", None),
        cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        platform=f"{system}_{platform.machine()}", nvcc=nvcc, nvcc_version=_nvcc_version(nvcc),
        gpu_arch=gpu_arch, gpu_name=gpu_name, free_memory_gb=_free_memory_gb(), cpus=cpus,
        ngc_pytorch=ngc,
    )


def assume(machine: Machine, assumptions: list) -> Machine:
    """``machine`` with ``KEY=VALUE`` facts replaced (``none`` clears one)."""
    fields = {f.name: f for f in dataclasses.fields(Machine)}
    changes = {}
    for item in assumptions:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--assume {item!r}: use KEY=VALUE with KEY one of {', '.join(fields)}")
        if value.lower() in ("none", ""):
            changes[key] = None
        elif key == "cxx11_abi":
            changes[key] = value.lower() in ("1", "true", "yes")
        elif key in ("free_memory_gb",):
            changes[key] = float(value)
        elif key == "cpus":
            changes[key] = int(value)
        else:
            changes[key] = value
    if "torch" in changes and "cuda" not in changes and changes["torch"]:
        # "2.10.0+cu128" implies CUDA 12.8, "+cpu" none: as torch itself reports
        local = re.search(r"\+cu(\d+)(\d)$", changes["torch"])
        changes["cuda"] = f"{local.group(1)}.{local.group(2)}" if local else (
            None if changes["torch"].endswith("+cpu") else machine.cuda)
    if "nvcc" in changes and "nvcc_version" not in changes and changes["nvcc"] is None:
        changes["nvcc_version"] = None
    return dataclasses.replace(machine, **changes)


# ----------------------------------------------------------------------------- wheels

def wheel_name(release: Release, machine: Machine) -> Optional[str]:
    """The file name the release's setup.py downloads on this machine (None: no CUDA torch)."""
    if machine.cuda is None:
        return None
    cuda_major = _major_minor(machine.cuda)[0]
    torch_tag = machine.ngc_pytorch or "{}.{}".format(*_major_minor(machine.torch))
    py = "cp" + machine.python.replace(".", "")
    return (f"{release.module}-{release.version}+cu{cuda_major}torch{torch_tag}"
            f"cxx11abi{str(machine.cxx11_abi).upper()}-{py}-{py}-{WHEEL_PLATFORM}.whl")


def wheel_url(release: Release, machine: Machine) -> Optional[str]:
    name = wheel_name(release, machine)
    if name is None:
        return None
    return f"https://github.com/{release.repo}/releases/download/v{release.version}/{name}"


def prebuilt_wheel(release: Release, machine: Machine) -> tuple:
    """(exists, why): whether the release has a prebuilt wheel this machine's pip can reach.

    From the release's build matrix. NGC PyTorch images (wheels named by the image's
    version) are not in the matrix: they return (None, why) -- unknown until the URL is tried.
    """
    if machine.cuda is None:
        return False, f"torch {machine.torch} has no CUDA"
    if machine.platform != WHEEL_PLATFORM:
        return False, f"its setup.py finds prebuilt wheels only for {WHEEL_PLATFORM}"
    if machine.ngc_pytorch:
        return None, f"NGC PyTorch {machine.ngc_pytorch} image: wheels exist for some images only"
    torch_mm = "{}.{}".format(*_major_minor(machine.torch))
    cuda_major = _major_minor(machine.cuda)[0]
    for row in release.wheels:
        if (torch_mm in row.torch and cuda_major in row.cuda and machine.python in row.python
                and machine.cxx11_abi in row.cxx11_abi):
            return True, f"prebuilt for torch {torch_mm}, CUDA {cuda_major}, Python {machine.python}"
    return False, f"prebuilt wheels exist for {_torch_ranges(release)} only (x86_64, some CUDA / ABI builds)"


def url_exists(url: str, timeout: float = 20.0) -> tuple:
    """(True, "") when ``url`` answers; (False, why) when it does not or cannot be reached."""
    # the first byte, not HEAD: release assets redirect to a CDN that need not answer HEAD
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(1)
            return True, ""
    except urllib.error.HTTPError as exc:
        return False, f"{url} answers HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} cannot be reached ({getattr(exc, 'reason', exc)})"


# ----------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Step:
    """How one package is installed: from its prebuilt wheel, or built here."""

    release: Release
    how: str              # "prebuilt" | "build"
    wheel: Optional[str]  # the prebuilt wheel's file name


@dataclass
class Plan:
    """What ``install`` does: ``skip`` / ``present`` (one line, exit 0), ``prebuilt`` / ``build``
    (run pip with ``env``), or ``stop`` (``message`` is the paragraph, exit 2)."""

    action: str
    message: str
    pair: Optional[KernelPair] = None
    steps: list = field(default_factory=list)
    env: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 2 if self.action == "stop" else 0


def build_jobs(machine: Machine) -> int:
    """MAX_JOBS for a source build: one nvcc job per BUILD_GB_PER_JOB of free memory, <= CPUs."""
    if os.environ.get("MAX_JOBS", "").isdigit():
        return max(1, int(os.environ["MAX_JOBS"]))
    by_memory = int((machine.free_memory_gb or BUILD_GB_PER_JOB) // BUILD_GB_PER_JOB)
    return max(1, min(machine.cpus, by_memory))


def build_estimate(files: int, jobs: int) -> str:
    waves = math.ceil(files / jobs)
    low, high = (waves * m for m in BUILD_MINUTES_PER_FILE)
    return (f"{files} CUDA files for one GPU architecture with MAX_JOBS={jobs}: roughly "
            f"{low}-{high} minutes (an estimate, not a measurement; upstream builds 6-9 "
            "architectures with MAX_JOBS=2 and allows 5 hours)")


def _ways_on(pair: KernelPair, build_hint: str = "") -> str:
    slowdown = (f"measured {TORCH_BACKEND_GPU_SLOWDOWN} slower on a GPU" if TORCH_BACKEND_GPU_SLOWDOWN
                else "slower; its GPU cost is not measured yet, see the GPU section of docs/benchmarks.md")
    ways = [f"use a pod image (or a venv) whose torch has prebuilt kernels ({_torch_ranges(pair.mamba)}, "
            "x86_64, a CUDA build of torch) and rerun the install",
            "train without the kernels: --set mamba_backend=torch (the same model and checkpoints in "
            f"pure PyTorch; {slowdown})"]
    if build_hint:
        ways.append(build_hint)
    numbered = "; ".join(f"({i}) {way}" for i, way in enumerate(ways, 1))
    return f"Ways on: {numbered}."


def plan_install(machine: Machine, build_kernels: bool = False, skip_reason: Optional[str] = None,
                 present: Optional[tuple] = None,
                 check_url: Optional[Callable[[str], tuple]] = None) -> Plan:
    """Decide how (and whether) to install the kernels on ``machine``.

    ``present``: (ok, detail) of the kernels already installed, when known (ok: they run on
    this GPU). ``check_url``: tries a wheel URL (:func:`url_exists`); None trusts the matrix.
    """
    if skip_reason:
        return Plan("skip", f"mamba-ssm kernels skipped: {skip_reason} (ss4rec runs its "
                            "pure-PyTorch Mamba, mamba_backend=torch)")
    if machine.cuda is None:
        what = "a ROCm build" if machine.hip else "a CPU build"
        return Plan("skip", f"mamba-ssm kernels skipped: torch {machine.torch} is {what}, without "
                            "CUDA; ss4rec runs its pure-PyTorch Mamba (on a GPU machine: install a "
                            f"CUDA build of torch, then {KERNELS_INSTALL_COMMAND})")
    if present is not None and present[0]:
        return Plan("present", f"mamba-ssm kernels already installed and running: {present[1]}")
    pair = pair_for(machine.torch)
    if pair is None:
        return Plan("stop", f"mamba-ssm kernels not installed: torch {machine.torch} is older than "
                            f"any pinned mamba-ssm release supports (torch >= 2.1). "
                            + _ways_on(PAIRS[0]))
    steps, missing = [], {}  # why -> the releases it applies to
    for release in (pair.mamba, pair.conv):
        exists, why = prebuilt_wheel(release, machine)
        if exists is not False and check_url is not None:
            reachable, url_why = check_url(wheel_url(release, machine))
            exists, why = reachable, (why if reachable else url_why)
        if exists:
            steps.append(Step(release, "prebuilt", wheel_name(release, machine)))
        else:
            steps.append(Step(release, "build", None))
            missing.setdefault(why, []).append(f"{release.dist} {release.version}")
    env = {}
    for step in steps:
        if step.how == "prebuilt":
            # skip the compile: setup.py then only fetches the prebuilt wheel, and needs no nvcc
            env[f"{step.release.env_prefix}_SKIP_CUDA_BUILD"] = "TRUE"
    names = f"mamba-ssm {pair.mamba.version} + causal-conv1d {pair.conv.version}"
    if not missing:
        return Plan("prebuilt", f"installing {names} from their prebuilt wheels", pair, steps, env)

    abi = "C++11 ABI" if machine.cxx11_abi else "pre-C++11 ABI"
    facts = f"torch {machine.torch} (CUDA {machine.cuda}), Python {machine.python}, {abi}, {machine.platform}"
    reasons = "; ".join(f"{' and '.join(dists)}: {why}" for why, dists in missing.items())
    cause = f"mamba-ssm kernels not installed: no prebuilt wheel matches this machine ({facts}). {reasons}"
    to_build = [s for s in steps if s.how == "build"]
    files = sum(s.release.cuda_files for s in to_build)
    if not machine.nvcc or not machine.nvcc_version:
        return Plan("stop", f"{cause}. And there is no nvcc to build them (CUDA_HOME unset, no nvcc "
                            "on PATH or in /usr/local/cuda). " + _ways_on(pair), pair, steps)
    if _major_minor(machine.nvcc_version)[0] != _major_minor(machine.cuda)[0]:
        return Plan("stop", f"{cause}. And nvcc {machine.nvcc_version} ({machine.nvcc}) cannot build "
                            f"for torch's CUDA {machine.cuda} (the major versions differ). "
                            + _ways_on(pair, f"point CUDA_HOME at a CUDA {_major_minor(machine.cuda)[0]}.x "
                                             "toolkit and rerun with --build-kernels"), pair, steps)
    arch = machine.gpu_arch or os.environ.get("TORCH_CUDA_ARCH_LIST", "").split(";")[0].strip() or None
    if not arch or not re.fullmatch(r"\d+\.\d+", arch):
        return Plan("stop", f"{cause}. A source build compiles for one GPU architecture, and no GPU "
                            "is visible to tell which. "
                            + _ways_on(pair, "rerun on the GPU machine, or set TORCH_CUDA_ARCH_LIST=9.0 "
                                             "(your GPU's compute capability) with --build-kernels"),
                    pair, steps)
    jobs = build_jobs(machine)
    estimate = build_estimate(files, jobs)
    if not build_kernels:
        return Plan("stop", f"{cause}. " + _ways_on(
            pair, f"build them here from source: rerun with --build-kernels ({estimate}, nvcc "
                  f"{machine.nvcc_version}, sm_{arch.replace('.', '')})"), pair, steps)
    sm = arch.replace(".", "")
    for step in to_build:
        env[f"{step.release.env_prefix}_FORCE_BUILD"] = "TRUE"
    env.update({
        # upstream's next releases build the Mamba-1 kernels (selective_scan_cuda) only when asked
        "MAMBA_KEEP_CUDA_BUILD": "TRUE",
        "MAX_JOBS": str(jobs),
        "TORCH_CUDA_ARCH_LIST": arch,
        "CUDA_HOME": os.path.dirname(os.path.dirname(machine.nvcc)),
        # upstream setup.py lists 6-9 architectures itself; this nvcc keeps only this GPU's
        "PYTORCH_NVCC": " ".join(shlex.quote(part) for part in (
            sys.executable, "-m", "ss4rec", "kernels", "nvcc", "--arch", sm, "--nvcc", machine.nvcc, "--")),
    })
    return Plan("build", f"building {names} from source: {estimate}", pair, steps, env)


# ----------------------------------------------------------------------------- nvcc, one arch

_GENCODE = re.compile(r"arch=compute_(\d+a?),code=(?:sm|compute)_(\d+a?)")


def keep_one_arch(args: list, arch: str) -> list:
    """nvcc arguments with every ``-gencode`` for another architecture than ``arch`` removed."""
    kept, index, found = [], 0, False
    while index < len(args):
        arg = args[index]
        value = None
        if arg in ("-gencode", "--generate-code") and index + 1 < len(args):
            value, step = args[index + 1], 2
        elif arg.startswith(("-gencode=", "--generate-code=")):
            value, step = arg.split("=", 1)[1], 1
        if value is None:
            kept.append(arg)
            index += 1
            continue
        match = _GENCODE.search(value)
        if match and match.group(1).rstrip("a") == arch:
            kept.extend(args[index:index + step])
            found = True
        index += step
    if not found:
        kept += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return kept


def run_nvcc(arch: str, nvcc: str, args: list) -> int:
    """Replace this process with ``nvcc`` compiling for ``arch`` only (``PYTORCH_NVCC``)."""
    args = keep_one_arch(args, arch)
    os.execv(nvcc, [nvcc, *args])
    return 1  # not reached


# ----------------------------------------------------------------------------- what loaded

@dataclass(frozen=True)
class LoadedKernels:
    """What mamba-ssm loaded in this process (read from its own module, not imported by us)."""

    mamba_ssm: Optional[str]            # installed mamba-ssm version (None: not installed)
    causal_conv1d: Optional[str]        # installed causal-conv1d version (None: not installed)
    conv_loaded: bool = False           # mamba-ssm loaded causal-conv1d's kernels
    mamba_inner_fn: Optional[Callable] = None
    selective_scan_fn: Optional[Callable] = None
    problem: Optional[str] = None       # why the kernels cannot be used (None: usable)

    @property
    def summary(self) -> str:
        if self.mamba_ssm is None:
            return "mamba-ssm not installed"
        if self.conv_loaded:
            return f"mamba-ssm {self.mamba_ssm} with causal-conv1d {self.causal_conv1d}"
        return f"mamba-ssm {self.mamba_ssm} without causal-conv1d"


def dist_version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def positional_arity(function) -> Optional[int]:
    """How many positional arguments ``function`` takes (a pybind11 function: from its docstring)."""
    try:
        parameters = inspect.signature(function).parameters.values()
        return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
    except (TypeError, ValueError):
        first = (getattr(function, "__doc__", None) or "").strip().splitlines()
        match = re.match(r"\w+\((.*)\)\s*->", first[0]) if first else None
        if not match:
            return None
        return len(re.findall(r"\barg\d+\s*:", match.group(1)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@functools.lru_cache(maxsize=None)
def loaded_kernels() -> LoadedKernels:
    """Import mamba-ssm once and report what it loaded, and whether that pair works.

    A broken pair is a ``problem``: mamba-ssm 2.2.2-2.2.4 with a causal-conv1d whose
    ``causal_conv1d_fwd`` does not take the 7 arguments they pass (causal-conv1d >= 1.5.1),
    or mamba-ssm >= 2.2.5 that could not load ``causal_conv1d.cpp_functions`` from an
    installed causal-conv1d (<= 1.5.0, or one built for another torch).
    """
    mamba_version, conv_version = dist_version("mamba-ssm"), dist_version("causal-conv1d")
    base = LoadedKernels(mamba_version, conv_version)
    try:
        interface = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception as exc:  # ImportError, or an OSError from a .so built for another torch
        if mamba_version is None and isinstance(exc, ModuleNotFoundError) and exc.name in ("mamba_ssm", None):
            why = "mamba-ssm is not installed"
        else:
            why = f"mamba-ssm {mamba_version} does not import ({_first_line(exc)})"
            if "undefined symbol" in str(exc) or "GLIBCXX" in str(exc):
                why += ": its kernels were built for another torch, CUDA or C++ ABI"
        return dataclasses.replace(base, problem=why)
    if getattr(interface, "selective_scan_cuda", True) is None:  # upstream main: opt-in kernels
        return dataclasses.replace(base, problem=(
            f"mamba-ssm {mamba_version} was installed without its Mamba-1 kernels "
            "(selective_scan_cuda; they need MAMBA_KEEP_CUDA_BUILD=TRUE)"))
    ops = dataclasses.replace(base, mamba_inner_fn=interface.mamba_inner_fn,
                              selective_scan_fn=interface.selective_scan_fn)
    pair = f"mamba-ssm {mamba_version} with causal-conv1d {conv_version}"
    if hasattr(interface, "causal_conv1d_fwd_function"):
        # mamba-ssm >= 2.2.5: causal_conv1d.cpp_functions (causal-conv1d >= 1.5.1), or None
        loaded = interface.causal_conv1d_fwd_function is not None
        if not loaded and conv_version is not None:
            return dataclasses.replace(ops, problem=(
                f"broken pair: {pair}: mamba-ssm could not load causal_conv1d.cpp_functions "
                "(mamba-ssm >= 2.2.5 needs causal-conv1d >= 1.5.1, built for this torch), so its "
                "mamba_inner_fn would fail (without causal-conv1d installed, mamba-ssm runs alone)"))
        return dataclasses.replace(ops, conv_loaded=loaded)
    # mamba-ssm 2.2.2-2.2.4: causal_conv1d_cuda.causal_conv1d_fwd(x, w, b, seq_idx,
    # initial_states, final_states_out, silu): 7 arguments
    extension = getattr(interface, "causal_conv1d_cuda", None)
    if extension is None:
        if conv_version is not None:
            return dataclasses.replace(ops, problem=(
                f"broken pair: {pair}: mamba-ssm could not load causal-conv1d's kernels "
                "(causal_conv1d_cuda; built for another torch? without causal-conv1d installed, "
                "mamba-ssm runs alone)"))
        return ops
    arity = positional_arity(getattr(extension, "causal_conv1d_fwd", None))
    if arity is None and conv_version is not None:
        arity = 8 if _version_tuple(conv_version) >= (1, 5, 1) else 7
    if arity is not None and arity != 7:
        return dataclasses.replace(ops, problem=(
            f"broken pair: {pair}: mamba-ssm {mamba_version} calls causal_conv1d_fwd with 7 "
            f"arguments, the loaded causal-conv1d takes {arity} (causal-conv1d >= 1.5.1 changed it)"))
    return dataclasses.replace(ops, conv_loaded=True)


def _version_tuple(version: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


# ----------------------------------------------------------------------------- install

def _pip(args: list, env: dict) -> int:
    command = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(shlex.quote(part) for part in command), flush=True)
    return subprocess.run(command, env=env).returncode


def _constraints(plan: Plan) -> str:
    """A pip constraints file: torch and ss4rec's pinned libraries stay as installed, and what
    the pair's releases cannot import with stays out."""
    lines = [f"{dist}=={version}" for dist in ("torch", "numpy", "pandas", "recbole", "setuptools")
             if (version := dist_version(dist))]
    lines += [line for step in plan.steps for line in step.release.constraints]
    handle, path = tempfile.mkstemp(prefix="ss4rec-kernels-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    return path


def verify_installed() -> tuple:
    """(ok, detail) from a fresh interpreter: do the installed kernels run on this GPU?"""
    proc = subprocess.run([sys.executable, "-m", "ss4rec", "kernels", "check", "--backend", "cuda"],
                          capture_output=True, text=True)
    lines = [line for line in (proc.stdout + proc.stderr).strip().splitlines() if line.strip()]
    return proc.returncode == 0, (lines[-1] if lines else f"exit {proc.returncode}")


def run_plan(plan: Plan) -> int:
    """Carry out a prebuilt/build plan with pip, then prove the kernels run. Returns the exit code."""
    print(plan.message, flush=True)
    for step in plan.steps:
        source = f"prebuilt wheel {step.wheel}" if step.how == "prebuilt" else "source build"
        print(f"  {step.release.pin}: {source}", flush=True)
    env = {**os.environ, **plan.env}
    # ninja (which the build uses) lands next to this interpreter, perhaps not on PATH
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    constraints = _constraints(plan)
    try:
        pins = [step.release.pin for step in plan.steps]
        already = all(dist_version(s.release.dist) == s.release.version for s in plan.steps)
        code = _pip(["install", "-c", constraints, *BUILD_TOOLS], env)
        if code == 0:
            code = _pip(["install", "--no-build-isolation", "--no-cache-dir", "-c", constraints, *pins], env)
        if code == 0 and already:  # same versions, but not running: reinstall them, not their deps
            code = _pip(["install", "--no-build-isolation", "--no-cache-dir", "--force-reinstall",
                         "--no-deps", *pins], env)
    finally:
        os.unlink(constraints)
    if code != 0:
        print(f"error: pip could not install {' and '.join(pins)} (exit {code}; its output is above). "
              + _ways_on(plan.pair), file=sys.stderr)
        return 1
    ok, detail = verify_installed()
    if not ok:
        print(f"error: {' and '.join(pins)} installed, but the kernels do not run here: {detail}. "
              + _ways_on(plan.pair), file=sys.stderr)
        return 1
    print(f"mamba-ssm kernels installed and running: {detail}")
    return 0


def install_command(command: str, build_kernels: bool = False, skip: Optional[str] = None,
                    assumptions: tuple = ()) -> int:
    """``ss4rec kernels plan|install``: decide, then (install) act. Returns the exit code."""
    machine = assume(machine_facts(), list(assumptions))
    # The kernels that are there already: proven in a fresh process (CUDA torch only).
    present = None
    if not assumptions and not skip and machine.cuda is not None and dist_version("mamba-ssm"):
        present = verify_installed()
        if not present[0]:
            print(f"mamba-ssm {dist_version('mamba-ssm')} is installed but its kernels do not run: "
                  f"{present[1]}", flush=True)
    plan = plan_install(machine, build_kernels=build_kernels, skip_reason=skip, present=present,
                        check_url=None if assumptions else url_exists)
    if plan.action in ("skip", "present"):
        print(plan.message)
        return 0
    if plan.action == "stop":
        print(plan.message, file=sys.stderr)
        return plan.exit_code
    if command == "plan" or assumptions:
        print(plan.message)
        for step in plan.steps:
            print(f"  {step.release.pin}: " + (f"prebuilt wheel {step.wheel}" if step.how == "prebuilt"
                                               else "source build"))
        for key, value in plan.env.items():
            print(f"  {key}={value}")
        return 0
    return run_plan(plan)
