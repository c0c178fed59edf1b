"""Distributed training (torch DDP) on CPU or GPU, started by ``--nproc N`` or by ``torchrun``.

RecBole 1.2.1's ``Config._init_device`` always joins an NCCL process group through
``tcp://ip:port`` on ``cuda:local_rank``: no CPU, no ``torchrun``, no second machine.
:class:`DistributedConfig` replaces only that step. Every process reads the standard
launcher environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), which ``torchrun`` sets and ``ss4rec train --nproc N`` sets for the
processes it spawns, and joins the group through ``env://``: ``nccl`` on CUDA (one GPU per
local rank), ``gloo`` on CPU. The rest stays RecBole's: its dataloaders shard training
batches with a ``DistributedSampler`` and its trainer all-reduces gradients.

What ss4rec adds on top (see :mod:`ss4rec.training.trainer` and :mod:`ss4rec.pipeline.runner`):

- one writer: global rank 0 alone writes the run folder (log, checkpoints,
  ``results.json``); other ranks log warnings to stderr and keep RecBole's scratch files in
  a temporary folder;
- exact evaluation: rank 0 evaluates every user and sends the result to the others
  (RecBole's sharded evaluation repeats users to even out the shards, rounds each rank's
  metrics and weights the ranks by their number of batches, so it differs slightly from a
  single process);
- guards decide on the loss averaged over all ranks, so every rank stops at the same step;
- a lost rank ends the others: ``gloo`` fails at once when a peer's connection closes, and
  every collective has a timeout (``ddp_timeout`` seconds) for a peer that hangs; the
  failure is reported in one line naming the rank (:func:`rank_failure`, :func:`lost_peer`).

Test hook: with ``$SS4REC_DDP_DUMP_DIR`` set, each rank writes its pid as training starts
and its weights after training there (:func:`note_pid`, :func:`dump_parameters`).
"""

from __future__ import annotations

import ast
import datetime
import os
import pickle
import re
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from recbole.config import Config
from torch.nn.parallel import DistributedDataParallel

from ss4rec.config.files import load_config_file
from ss4rec.errors import ConfigError, UserError

# ddp_timeout (seconds; a known key with its range in ss4rec.config.validation): how long a rank
# waits for the others at a collective (a gradient all-reduce, rank 0's evaluation result)
# before it gives up with an error.
DEFAULT_TIMEOUT_S = 1800  # torch's own default; rank 0 evaluates alone while the others wait

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def world_size() -> int:
    """Processes in this job according to the launcher's environment (1 when not launched)."""
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's global rank (0 when not launched)."""
    return _env_int("RANK", 0)


def is_distributed() -> bool:
    return world_size() > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise UserError(f"environment variable {name}={value!r} is not a whole number >= 0: "
                        "fix the launcher command (torchrun sets it)")
    return int(value)


def free_port() -> int:
    """A TCP port nobody listens on now (for --nproc on one machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_environment(nproc: int, local_rank: int, addr: str, port: int) -> dict:
    """What torchrun would set for process ``local_rank`` of ``nproc`` on this one machine.

    >>> env = rank_environment(2, 1, "127.0.0.1", 29500)
    >>> env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_PORT"]
    ('1', '2', '1', '29500')
    """
    return {"RANK": str(local_rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": addr, "MASTER_PORT": str(port)}


def check_world(nproc: int = 1, device: str | None = None) -> str:
    """Check the process layout before anything is built; return a one-line description.

    ``nproc`` is ``--nproc`` (processes to spawn on this machine); under ``torchrun`` the
    launcher's environment says the rest. A UserError names what is wrong and how to fix it.
    """

    if nproc < 1:
        raise UserError(f"--nproc {nproc}: use a whole number >= 1")
    launched = world_size()
    if launched > 1 and nproc > 1:
        raise UserError(f"--nproc {nproc} under torchrun (WORLD_SIZE={launched}): torchrun already "
                        "started the processes; drop --nproc and use torchrun's --nproc-per-node")
    world = max(nproc, launched)
    if world == 1:
        return "single process"
    if launched > 1:
        missing = [k for k in LAUNCH_ENV if not os.environ.get(k)]
        if missing:
            raise UserError(f"WORLD_SIZE={launched} but {', '.join(missing)} unset: start ss4rec with "
                            "torchrun (or set all of RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")
        if rank() >= launched:
            raise UserError(f"RANK={rank()} is not below WORLD_SIZE={launched}: fix the launcher's "
                            "--nnodes / --node-rank / --nproc-per-node")
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed: install a standard torch wheel "
                        "or train with --nproc 1")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cpu":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if nproc > cpus:
            raise UserError(f"--nproc {nproc} --device cpu: this machine gives this process {cpus} CPU(s); "
                            f"more processes than CPUs only wait for each other: use --nproc {cpus} or fewer")
        if not dist.is_gloo_available():
            raise UserError("CPU training over several processes needs torch's gloo backend, which "
                            "this torch build lacks: install a standard torch wheel")
        how = f"--nproc {nproc} on this machine" if nproc > 1 else "torchrun"
        return f"gloo on CPU, world size {world} ({how})"
    # CUDA asked for, or auto with --nproc: one GPU per process on this machine.
    local = nproc if nproc > 1 else _env_int("LOCAL_WORLD_SIZE", 1)
    if gpus < local:
        raise UserError(
            f"--nproc {local} needs {local} CUDA GPUs (one per process, NCCL), but torch sees "
            f"{gpus}: use --nproc {max(gpus, 1)}, a machine with {local} GPUs, or --device cpu "
            f"for {local} CPU processes (gloo)")
    if not dist.is_nccl_available():
        raise UserError("GPU training over several processes needs NCCL, which this torch build "
                        "lacks: install a CUDA build of torch")
    how = f"--nproc {nproc} on this machine" if nproc > 1 else "torchrun"
    return f"nccl on {local} GPU(s) here, world size {world} ({how})"


def _timeout_seconds(value) -> float:
    if value is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"ddp_timeout={value!r}: use a number of seconds > 0 (default {DEFAULT_TIMEOUT_S})")
    return float(value)


# The types RecBole keeps from its eval() of a string setting (else it keeps the string).
_LITERAL_TYPES = (str, int, float, list, tuple, dict, bool)


def literal_setting(value):
    """RecBole's typing of a string setting, without running it: a Python literal
    (``"[0,40]"``, ``"1e-8"``, ``"{'a': 1}"``) becomes its value, ``true``/``false`` a bool;
    anything else (a name, a call, code) stays the string. Non-strings pass unchanged.

    >>> literal_setting("[0,40]"), literal_setting("[5,inf)"), literal_setting("__import__('os')")
    ([0, 40], '[5,inf)', "__import__('os')")
    """
    if not isinstance(value, str):
        return value
    try:
        converted = ast.literal_eval(value)  # literals only: never calls, names or attributes
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        lowered = value.strip().lower()
        return {"true": True, "false": False}.get(lowered, value)
    return converted if converted is None or isinstance(converted, _LITERAL_TYPES) else value


class DistributedConfig(Config):
    """RecBole's ``Config`` with a device step that also runs on CPU and under torchrun, and
    settings that are data, never code.

    RecBole 1.2.1's ``_convert_config_dict`` runs ``eval()`` on every string value of
    ``config_dict`` and of ``sys.argv``'s ``--key=value`` pairs, so a setting such as
    ``wandb_project: "__import__('os').system(...)"`` from a shared YAML file, ``--set`` or a
    checkpoint's run settings would run. Here values arrive already typed (YAML and
    :mod:`ss4rec.config.validation`), and a string is converted only where it is a Python
    *literal* (:func:`literal_setting`: ``"[0,40]"`` becomes ``[0, 40]``, as RecBole's eval
    made it, so old runs' settings compare equal); anything else, code included, stays the
    plain string it was. ``sys.argv`` is never read (our CLI parses its own flags) and config
    files go through ss4rec's bounded safe YAML loader. RecBole's own defaults (its
    ``properties/`` YAML) load as before.

    The device step leaves ``CUDA_VISIBLE_DEVICES`` alone. RecBole's own step writes ``gpu_id``
    into it and then makes the process's first CUDA call; the driver reads the variable once,
    at that call, so a user's ``CUDA_VISIBLE_DEVICES=2`` would train on GPU 0. Here ``gpu_id``
    picks a GPU among the visible ones (``cuda:gpu_id``; RecBole's default ``0`` is the first
    visible GPU), ``gpu_id: ''`` or ``use_gpu: false`` train on the CPU.
    """

    def _convert_config_dict(self, config_dict):
        return {key: literal_setting(value) for key, value in config_dict.items()}

    def _load_cmd_line(self):
        return {}

    def _load_config_files(self, file_list):
        merged = {}
        for file in file_list or ():
            merged.update(load_config_file(file))
        return merged

    def _init_device(self):
        if not is_distributed():
            return self._init_single_device()

        cfg = self.final_config_dict
        local_rank = _env_int("LOCAL_RANK", 0)
        use_cuda = cfg.get("use_gpu", True) is not False and torch.cuda.is_available()
        if use_cuda:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            timeout = datetime.timedelta(seconds=_timeout_seconds(cfg.get("ddp_timeout")))
            dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                                    rank=rank(), world_size=world_size(), timeout=timeout)
        cfg["gpu_id"] = str(local_rank) if use_cuda else ""
        cfg["device"] = device
        cfg["single_spec"] = False
        # RecBole reads local_rank as "the rank": the one that saves checkpoints (rank 0) and
        # the seed offset. It gets the global rank, so across several machines exactly one
        # process writes; the GPU index stays LOCAL_RANK (in device).
        cfg["local_rank"] = rank()
        cfg["world_size"] = world_size()
        cfg["nproc"] = world_size()
        cfg["offset"] = 0
        if rank() != 0:
            cfg["show_progress"] = False
            cfg["verbose"] = False

    def _init_single_device(self):
        cfg = self.final_config_dict
        gpu_id = cfg.get("gpu_id")
        gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id or "")
        cfg["gpu_id"] = gpu_id
        cfg["single_spec"] = True
        cfg["local_rank"] = 0
        first = gpu_id.split(",")[0].strip()
        if cfg.get("use_gpu", True) is False or not first or not torch.cuda.is_available():
            cfg["device"] = torch.device("cpu")
            return
        visible = torch.cuda.device_count()
        if not first.isdigit() or int(first) >= visible:
            shown = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ConfigError(
                f"gpu_id={gpu_id!r}: torch sees {visible} GPU(s) here (CUDA_VISIBLE_DEVICES="
                f"{shown!r}), numbered 0..{visible - 1}; gpu_id picks among those. Choose the GPU with "
                "CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=2) and leave gpu_id at 0")
        device = torch.device("cuda", int(first))
        torch.cuda.set_device(device)  # code that uses "the current GPU" uses this one
        cfg["device"] = device


def is_writer(config=None) -> bool:
    """True for the one process that writes the run folder (always, outside DDP)."""
    if config is not None and not config["single_spec"]:
        return config["local_rank"] == 0
    return rank() == 0


# Complex parameters (S5's Lambda and C) are kept out of DDP and summed here through their
# real views (torch.view_as_real: the same memory), on every torch and backend:
# - NCCL has no complex type (NVIDIA/nccl#539); torch's Python collectives view complex
#   tensors as real since torch 1.8 (pytorch/pytorch#45879), but DDP calls the process group
#   from C++: its initial broadcast and gradient all-reduce failed with "Input tensor data type
#   is not supported for NCCL process group: ComplexFloat" (pytorch/pytorch#71613, the
#   complex-buffer failure in karpathy/llama2.c#37 on torch 2.0) until the C++ path learnt
#   the same trick (pytorch/pytorch#121045, March 2024);
# - with that in place, DDP was still reported to drop the imaginary part of complex
#   gradients on GPUs (pytorch/pytorch#158753, open since July 2025).
# So no torch floor is needed for DDP on GPUs, and no DDP code path touches a complex tensor.


def complex_parameter_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.is_complex()]


def wrap_model(model, device):
    """``model`` in DistributedDataParallel: its parameters start as rank 0's, and its
    gradients are averaged over all ranks (during backward; complex ones by
    :func:`average_complex_gradients`, which the trainer calls before each optimiser step)."""

    complex_names = complex_parameter_names(model)
    if complex_names:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, complex_names)
        for name, param in model.named_parameters():
            if param.is_complex():
                dist.broadcast(torch.view_as_real(param.data), src=0)  # rank 0's, as DDP does
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # as RecBole does
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)  # CPU: no device_ids


def average_complex_gradients(model) -> None:
    """Average the complex parameters' gradients over all ranks, as real numbers (one
    all-reduce of their real views, left on the device)."""

    grads = [p.grad for p in model.parameters() if p.is_complex() and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([torch.view_as_real(g).reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    at = 0
    for grad in grads:
        real = torch.view_as_real(grad)
        real.copy_(flat[at:at + real.numel()].view_as(real))
        at += real.numel()


def broadcast_from_rank0(obj):
    """``obj`` as rank 0 has it, on every rank (a picklable Python object)."""

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean over all ranks of each number in ``values`` (one small all-reduce), left on
    the device: on GPUs nothing waits for it until the caller reads it back."""

    total = values.to(torch.float64, copy=True)
    dist.all_reduce(total)
    return total / dist.get_world_size()


class RankFailed(UserError):
    """A DDP process failed or died; the others were stopped. The message names the rank and why."""


def _resume_hint(run_dir) -> str:
    last = sorted(Path(run_dir).glob("checkpoints/*-last.pth")) if run_dir else []
    return (f"; after fixing the cause, continue with --resume {last[0]}" if last
            else "; no epoch had finished, so nothing to resume")


def _user_error(trace: str) -> str | None:
    """The message of a UserError (or subclass) that ends the traceback text ``trace``, else None."""
    last = trace.strip().splitlines()[-1] if trace.strip() else ""
    kind, _, message = last.partition(": ")
    return message if kind.startswith(("ss4rec.errors.", "ss4rec.training.distributed.")) else None


def _rank0_user_error(error_files) -> str | None:
    """Rank 0's UserError message, if it raised one (spawn keeps each process's traceback)."""

    try:
        with open(error_files[0], "rb") as f:
            return _user_error(pickle.load(f))  # written by our own rank 0 (torch's _wrap)
    except (OSError, EOFError, pickle.UnpicklingError, TypeError, IndexError):
        return None


def rank_failure(exc, run_dir=None, error_files=None) -> RankFailed:
    """One line for ``torch.multiprocessing.spawn``'s report of the first process that failed.

    A UserError raised in a process (a guard stop, a bad setting) keeps its own message
    (rank 0's when it raised one too: it names the files it saved); anything else is shown
    with the process's traceback above the line.
    """


    rank_ = exc.error_index
    if isinstance(exc, mp.ProcessExitedException):
        why = f"signal {exc.signal_name}" if exc.signal_name else f"exit code {exc.exit_code}"
        return RankFailed(f"rank {rank_} (pid {exc.error_pid}) died ({why}); the other ranks were "
                          f"stopped{_resume_hint(run_dir)}")
    trace = exc.msg.strip()
    last = trace.splitlines()[-1] if trace else str(exc)
    message = _user_error(trace)
    if message is not None:
        first = _rank0_user_error(error_files) if rank_ != 0 and error_files else None
        return RankFailed(f"rank 0: {first}" if first else f"rank {rank_}: {message}")
    print(trace, file=sys.stderr)
    return RankFailed(f"rank {rank_} failed with {last} (traceback above); the other ranks were "
                      f"stopped{_resume_hint(run_dir)}")


# What a collective says when a peer is gone: torch's DistError family, or gloo's and NCCL's
# RuntimeErrors (gloo: "Connection reset by peer" / "closed by peer" within a second or two).
_PEER_SIGNS = ("Connection reset by peer", "Connection closed by peer", "gloo/transport", "NCCL",
               "timed out", "Timed out")


def is_peer_failure(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in _PEER_SIGNS)


def lost_peer(exc) -> RankFailed:
    """One line for a collective that failed here because another process died or hung."""

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". This is typically")[0]  # gloo's source path, advice
    return RankFailed(f"rank {rank()} lost contact with the other ranks ({first[:300]}): another "
                      "process died or stopped answering; its own output (or the launcher's "
                      "report) names the cause")


DUMP_ENV = "SS4REC_DDP_DUMP_DIR"


def note_pid(config) -> None:
    """Test hook: with ``$SS4REC_DDP_DUMP_DIR`` set, each DDP rank writes ``rank-K.pid`` there
    as training starts (a test kills one rank mid-epoch by this pid)."""
    folder = os.environ.get(DUMP_ENV)
    if folder and not config["single_spec"]:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"rank-{config['local_rank']}.pid"), "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))


def dump_parameters(model, config) -> None:
    """Test hook: with ``$SS4REC_DDP_DUMP_DIR`` set, each DDP rank saves its trained weights
    there as ``rank-K.pth`` (after fit, before the test), so a test can compare the ranks."""
    folder = os.environ.get(DUMP_ENV)
    if not folder or config["single_spec"]:
        return

    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(folder, f"rank-{config['local_rank']}.pth"))


def shutdown() -> None:
    """Leave the process group (end of a run), so the process exits cleanly."""

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
