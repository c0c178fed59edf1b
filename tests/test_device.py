"""The GPU path, proven on the CPU: devices, resume across devices, device choice, DDP sums.

A CPU machine cannot run CUDA, but it can show the mistakes that break a GPU run:

* the ``meta`` device stands in for ``cuda``: tensors there have a device but no data, so a
  model that creates a tensor on the wrong device, or a checkpoint loader that puts the
  random generators' states on the GPU, fails there just as it would on a GPU;
* every ``torch.cuda`` entry point a run can reach is wrapped (a recorder that calls the
  real function) to see the ``CUDA_VISIBLE_DEVICES`` each call saw: the CUDA driver reads
  the variable once, at the process's first CUDA call;
* DDP's gradient sum of S5's complex parameters runs over two real gloo processes.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ss4rec
from ss4rec.data.loaders import create_dataset, prepare_data
from ss4rec.models.ss4rec import MODEL_TYPES
from ss4rec.pipeline.settings import build_config
from ss4rec.training.checkpoint import load_checkpoint, set_rng_state
from ss4rec.training.trainer import SS4RecTrainer

from conftest import TINY_SS4REC

META = torch.device("meta")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class DeviceRecorder(TorchDispatchMode):
    """Records the device of every tensor every op produces (no change to what runs)."""

    def __init__(self):
        super().__init__()
        self.devices: dict[str, set] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.devices.setdefault(value.device.type, set()).add(str(func))
        return out


# ---- a model on the meta device: forward, backward and full ranking create nothing elsewhere ----

def _meta_batch(model_name: str, settings: dict):
    config, model_class = build_config(model_name, "ml-100k", ["tiny"], settings, device="cpu")
    train, _, _ = prepare_data(config, create_dataset(config))
    return config, model_class, train._dataset, next(iter(train))


@pytest.fixture(scope="module")
def ss4rec_on_meta():
    return _meta_batch("SS4Rec", {**TINY_SS4REC, "mamba_backend": "torch"})


def _check_on_meta(net, batch):
    net = net.to(META).train()
    batch = batch.to(META)
    with DeviceRecorder() as recorder:
        loss = net.calculate_loss(batch)
        loss.backward()
        scores = net.full_sort_predict(batch)
    assert loss.device == META and scores.device == META
    assert scores.shape == (len(batch), net.n_items)
    assert all(p.grad is not None and p.grad.device == META for p in net.parameters() if p.requires_grad)
    assert "meta" in recorder.devices  # the recorder saw the ops
    wrong = {device: sorted(ops)[:5] for device, ops in recorder.devices.items() if device != "meta"}
    assert not wrong, f"tensors created off the model's device: {wrong}"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_ss4rec_model_type_runs_on_meta_without_a_tensor_elsewhere(ss4rec_on_meta, model_type):
    config, model_class, dataset, batch = ss4rec_on_meta
    config["model_type"] = model_type
    try:
        net = model_class(config, dataset)
    finally:
        config["model_type"] = "SS4Rec"
    _check_on_meta(net, batch)


def test_tisasrec_runs_on_meta_without_a_tensor_elsewhere():
    config, model_class, dataset, batch = _meta_batch("TiSASRec", {"MAX_ITEM_LIST_LENGTH": 12})
    _check_on_meta(model_class(config, dataset), batch)


# ---- resume: random generators come back from CPU tensors, whatever the device ----

@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-epoch") / "run"
    ss4rec.run(model="GRU4Rec", dataset="ml-100k", config_files=["tiny"],
               config_dict={"user_inter_num_interval": "[0,25]", "train_batch_size": 256, "epochs": 2},
               output_dir=out, device="cpu")
    return out / "checkpoints" / "GRU4Rec-last.pth"


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _draws_from(rng: dict):
    set_rng_state(rng)
    return _draws()


def test_checkpoint_mapped_to_meta_keeps_rng_states_on_the_cpu(one_epoch_run):
    on_cpu = load_checkpoint(one_epoch_run)
    on_meta = load_checkpoint(one_epoch_run, map_location="meta")
    assert all(t.device == META for t in on_meta["state_dict"].values())
    assert on_meta["rng"]["torch"].device.type == "cpu"
    assert on_meta["rng"]["numpy"]["keys"].device.type == "cpu"
    assert on_meta["dataloader_generator"].device.type == "cpu"
    assert _draws_from(on_meta["rng"]) == _draws_from(on_cpu["rng"])  # the same streams


def test_resume_on_a_non_cpu_device_restores_rng_and_continues(tmp_path, one_epoch_run):
    # The trainer of a run on the meta device: it maps the checkpoint there (as a GPU run maps
    # it to cuda), restores every random stream from CPU tensors and takes its next step there.
    config, model_class = build_config("GRU4Rec", "ml-100k", ["tiny"],
                                       {"user_inter_num_interval": "[0,25]", "train_batch_size": 256,
                                        "epochs": 3}, device="cpu", output_dir=tmp_path / "resumed")
    train, _, _ = prepare_data(config, create_dataset(config))
    config["device"] = META
    trainer = SS4RecTrainer(config, model_class(config, train._dataset).to(META))
    try:
        trainer.resume_checkpoint(one_epoch_run)
        saved = load_checkpoint(one_epoch_run)
        assert trainer.start_epoch == saved["epoch"] + 1 == 2
        assert all(p.device == META for p in trainer.model.parameters())
        assert all(t.device == META for state in trainer.optimizer.state.values()
                   for t in state.values() if isinstance(t, torch.Tensor) and t.dim() > 0)
        random.random(), np.random.rand(), torch.rand(5)  # move every generator on
        trainer._prepare_fit(train, None, saved=False)  # where fit restores the generators
        expected_loader = saved["dataloader_generator"]
        assert torch.equal(train.generator.get_state(), expected_loader)
        restored = _draws()
        assert restored == _draws_from(saved["rng"])
        # ... and training continues there: one step of the resumed optimiser on the device
        batch = next(iter(train)).to(META)
        trainer.optimizer.zero_grad()
        trainer.model.calculate_loss(batch).backward()
        trainer.optimizer.step()
        assert all(p.device == META for p in trainer.model.parameters())
    finally:
        trainer.close()


# ---- device choice: CUDA_VISIBLE_DEVICES is the user's at every CUDA call ----

CUDA_ENTRY_POINTS = (
    "is_available", "device_count", "init", "_lazy_init", "set_device", "current_device",
    "get_device_properties", "get_device_capability", "get_rng_state", "set_rng_state",
    "get_rng_state_all", "set_rng_state_all", "manual_seed", "manual_seed_all", "seed_all",
    "is_bf16_supported", "max_memory_allocated", "reset_peak_memory_stats", "synchronize",
    "mem_get_info", "empty_cache",
)


@pytest.fixture
def cuda_calls(monkeypatch):
    """Every call into torch.cuda's entry points, with the CUDA_VISIBLE_DEVICES it saw."""
    calls = []

    def recorder(name, real):
        def call(*args, **kwargs):
            calls.append((name, os.environ.get("CUDA_VISIBLE_DEVICES")))
            return real(*args, **kwargs)
        return call

    for name in CUDA_ENTRY_POINTS:
        real = getattr(torch.cuda, name, None)
        if callable(real):
            monkeypatch.setattr(torch.cuda, name, recorder(name, real))
    if hasattr(torch._C, "_cuda_init"):
        monkeypatch.setattr(torch._C, "_cuda_init", recorder("_C._cuda_init", torch._C._cuda_init))
    return calls


@pytest.mark.parametrize("visible", ["2", None])
def test_every_cuda_call_sees_the_users_cuda_visible_devices(tmp_path, monkeypatch, cuda_calls, visible):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    # No --device: RecBole's choice (GPU when there is one), gpu_id at RecBole's default "0".
    result = ss4rec.run(model="GRU4Rec", dataset="ml-100k", config_files=["tiny"],
                        config_dict={"user_inter_num_interval": "[0,25]", "train_batch_size": 256},
                        output_dir=tmp_path / "run")
    assert result["config"]["gpu_id"] == "0"
    assert cuda_calls, "the run made no torch.cuda call: nothing was checked"
    assert {seen for _, seen in cuda_calls} == {visible}, cuda_calls[:5]
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible


# ---- DDP: S5's complex gradients are averaged over ranks as real numbers ----

def _tiny_ss4rec():
    config, model_class = build_config("SS4Rec", "ml-100k", ["tiny"], {**TINY_SS4REC, "mamba_backend": "torch"},
                                       device="cpu")
    train, _, _ = prepare_data(config, create_dataset(config))
    torch.manual_seed(0)
    net = model_class(config, train._dataset).eval()  # no dropout: the ranks' maths is exact
    return net, next(iter(train))


def _halves(batch: dict) -> list:
    half = len(next(iter(batch.values()))) // 2
    return [Interaction({k: v[:half] for k, v in batch.items()}),
            Interaction({k: v[half:2 * half] for k, v in batch.items()})]


def _rank_gradients(rank: int, world: int, port: int, folder: str) -> None:
    """One DDP rank: gloo group, the model wrapped as the trainer wraps it, one backward on this
    rank's half of the batch, complex gradients averaged; its gradients saved in ``folder``.
    Weights and batch come from the test process (``start.pt``)."""
    import torch.distributed as dist

    from ss4rec.training import distributed

    torch.set_num_threads(1)
    os.environ.update(distributed.rank_environment(world, rank, "127.0.0.1", port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net, _ = _tiny_ss4rec()
        start = torch.load(os.path.join(folder, "start.pt"), weights_only=True)
        net.load_state_dict(start["weights"])
        if rank == 1:  # a different start on rank 1: the wrap must give it rank 0's weights
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(1.0)
        ddp = distributed.wrap_model(net, torch.device("cpu"))
        forward, net.forward = net.forward, (lambda x: x)
        ddp(torch.zeros(1, dtype=torch.long))  # what the trainer's set_reduce_hook does
        net.forward = forward
        sync = sum(torch.view_as_real(p).sum() * 0 if p.is_complex() else p.sum() * 0 for p in net.parameters())
        (net.calculate_loss(_halves(start["batch"])[rank]) + sync).backward()
        distributed.average_complex_gradients(net)
        torch.save({n: p.grad for n, p in net.named_parameters()}, os.path.join(folder, f"rank-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_averages_complex_gradients_exactly_as_one_process(tmp_path):
    import torch.multiprocessing as mp

    from ss4rec.training.distributed import free_port

    net, batch = _tiny_ss4rec()
    batch = dict(batch.interaction)
    torch.save({"weights": net.state_dict(), "batch": batch}, tmp_path / "start.pt")
    mp.spawn(_rank_gradients, args=(2, free_port(), str(tmp_path)), nprocs=2)
    expected = {}
    for half in _halves(batch):
        net.zero_grad()
        net.calculate_loss(half).backward()
        for name, p in net.named_parameters():
            expected[name] = expected.get(name, 0) + p.grad / 2
    assert any(g.is_complex() for g in expected.values())
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"rank-{rank}.pt", weights_only=True)
        for name, grad in grads.items():
            assert torch.allclose(grad, expected[name], rtol=1e-4, atol=1e-7), (rank, name)
