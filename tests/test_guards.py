"""Training guards: each failure is injected into a real RecBole run and must stop it at once.

Runs use the packaged ``tiny`` config shrunk further (ML-100K users with at most 25 ratings:
~3,000 interactions, 11 batches of 256 per epoch) and GRU4Rec, whose speed suits tests.
Failures are injected with small subclasses of RecBole's real GRU4Rec (named like it, so
RecBole loads GRU4Rec's defaults), never with mocks.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from recbole.model.sequential_recommender import GRU4Rec as RecBoleGRU4Rec

import ss4rec
from ss4rec.training.checkpoint import load_checkpoint
from ss4rec.config.files import check_keys
from ss4rec.errors import ConfigError, TrainingGuardError
from ss4rec.training.guards import GUARD_DEFAULTS, LRSchedule, guard_settings, optimizer_steps

SMALL = {"user_inter_num_interval": "[0,25]", "train_batch_size": 256, "epochs": 2}
BATCHES_PER_EPOCH = 11  # ~2,700 training sequences / 256


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two shared cores: torch's default thread pool makes these tiny runs 10x slower.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def train(tmp_path, model="GRU4Rec", **settings):
    return ss4rec.run(model=model, dataset="ml-100k", config_files=["tiny"],
                      config_dict={**SMALL, **settings}, output_dir=tmp_path / "run", device="cpu")


def nan_loss_model(at_batch: int):
    class GRU4Rec(RecBoleGRU4Rec):
        """GRU4Rec whose training loss is NaN at batch ``at_batch`` of the first epoch."""

        batches = 0

        def calculate_loss(self, interaction):
            loss = super().calculate_loss(interaction)
            self.batches += 1
            return loss * float("nan") if self.batches == at_batch + 1 else loss

    return GRU4Rec


def inf_grad_model(at_batch: int):
    class GRU4Rec(RecBoleGRU4Rec):
        """GRU4Rec whose output layer gets an infinite gradient at batch ``at_batch``."""

        def __init__(self, config, dataset):
            super().__init__(config, dataset)
            self.batches = 0
            self.dense.weight.register_hook(self._poison)

        def _poison(self, grad):
            return torch.full_like(grad, float("inf")) if self.batches == at_batch + 1 else grad

        def calculate_loss(self, interaction):
            self.batches += 1
            return super().calculate_loss(interaction)

    return GRU4Rec


def test_nan_loss_stops_at_once_and_saves_last_good_weights_and_debug_bundle(tmp_path):
    with pytest.raises(TrainingGuardError, match=r"non-finite training loss \(nan\) at epoch 0, batch 3 "):
        train(tmp_path, model=nan_loss_model(at_batch=3))
    folder = tmp_path / "run" / "checkpoints"
    bundle = json.loads((folder / "GRU4Rec-guard-debug.json").read_text())
    assert bundle["where"].startswith("epoch 0, batch 3")
    assert len(bundle["batch_ids"]["user_id"]) == 256  # the failing batch, for replay
    assert [r["step"] for r in bundle["step_history"]] == [0, 1, 2]  # the 3 good steps
    assert bundle["config"]["model"] == "GRU4Rec" and bundle["weights_finite"] is True
    good = load_checkpoint(folder / "GRU4Rec-lastgood.pth")  # weights_only load
    assert good["optim_step"] == 3 and "non-finite" in good["guard_stop"]["error"]
    assert all(torch.isfinite(t).all() for t in good["state_dict"].values())


def test_inf_gradient_names_epoch_batch_and_first_bad_parameter(tmp_path):
    with pytest.raises(TrainingGuardError) as err:
        train(tmp_path, model=inf_grad_model(at_batch=2))
    message = str(err.value)
    assert "non-finite gradient" in message and "epoch 0, batch 2" in message
    assert "first parameter with a non-finite gradient: dense.weight" in message
    assert "GRU4Rec-lastgood.pth" in message and "GRU4Rec-guard-debug.json" in message


def test_guards_reading_back_every_few_batches_still_name_the_failing_batch(tmp_path):
    # What a GPU run does (guard_check_batches ~ = 100 there): losses and gradient norms stay on
    # the device and are read back every 4 batches here. The run stops at the read-back after
    # batch 3 (batch 4), naming batch 3, with batch 3's ids; the step at batch 3 already ran.
    with pytest.raises(TrainingGuardError, match=r"non-finite training loss \(nan\) at epoch 0, batch 3 ") as err:
        train(tmp_path, model=nan_loss_model(at_batch=3), guard_check_batches=4)
    folder = tmp_path / "run" / "checkpoints"
    bundle = json.loads((folder / "GRU4Rec-guard-debug.json").read_text())
    assert bundle["where"].startswith("epoch 0, batch 3")
    assert len(bundle["batch_ids"]["user_id"]) == 256
    assert [r["step"] for r in bundle["step_history"]] == [0, 1, 2]  # the good steps before it
    assert bundle["weights_finite"] is False and "lastgood" not in str(err.value)  # NaN step ran
    with pytest.raises(TrainingGuardError) as err:
        train(tmp_path / "grad", model=inf_grad_model(at_batch=2), guard_check_batches=4)
    assert "non-finite gradient" in str(err.value) and "epoch 0, batch 2" in str(err.value)
    assert "first parameter with a non-finite gradient: dense.weight" in str(err.value)


def test_lr_schedule_ending_before_training_is_caught(tmp_path):
    # 11 batches, accumulation 2 -> 6 optimiser steps per epoch, 12 in 2 epochs. A schedule
    # sized for 6 steps (e.g. counted for one epoch, or in the wrong unit) hits LR 0 at step 5.
    with pytest.raises(TrainingGuardError, match=r"learning rate is 0 at epoch 0, batch 10 \(optimiser "
                                                 r"step 5\) with 6 of 12 optimiser steps left"):
        train(tmp_path, grad_accum_steps=2, lr_scheduler="linear", lr_schedule_steps=6)


def test_loss_stuck_at_random_baseline_warns_then_fails(tmp_path):
    with pytest.raises(TrainingGuardError, match="stuck at the random baseline") as err:
        train(tmp_path, learning_rate=0.0, guard_lr_zero=False,
              guard_baseline_warn_steps=10, guard_baseline_fail_steps=15)
    assert "after 15 steps, at epoch 1, batch 3" in str(err.value)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "WARNING training loss is stuck at the random baseline" in log  # the warning came first
    assert "after 10 steps" in log


def test_identical_metrics_across_evaluations_fail_as_frozen(tmp_path):
    with pytest.raises(TrainingGuardError, match="metrics frozen: the last 2 evaluations .up to epoch 1."):
        train(tmp_path, epochs=3, learning_rate=0.0, guard_lr_zero=False, guard_baseline_loss=False,
              guard_frozen_metrics_evals=2)


def test_schedule_with_accumulation_ends_exactly_at_last_optimiser_step():
    total = optimizer_steps(batches_per_epoch=10, grad_accum_steps=4, epochs=3)
    assert total == 9  # 4 + 4 + 2 batches per epoch -> 3 steps, not 10 / 4 * 3 = 7.5
    for kind in ("linear", "cosine"):
        schedule = LRSchedule(kind, total_steps=total, warmup_steps=2, min_ratio=0.1)
        factors = [schedule.factor(s) for s in range(total + 2)]
        assert factors[0] < factors[1] < factors[2] == 1.0  # warmup, then the peak
        assert all(a > b for a, b in zip(factors[2:total - 1], factors[3:total]))  # decays
        assert factors[total - 1] == pytest.approx(0.1, abs=1e-12)  # final value at the last step
        assert factors[total - 2] > 0.1 + 1e-3
        assert factors[total:] == [factors[total - 1]] * 2  # and stays there


def test_schedule_with_accumulation_in_a_real_run_ends_at_its_last_step(tmp_path):
    # 11 batches, accumulation 3 -> 4 optimiser steps per epoch (3 + 3 + 3 + 2 batches).
    result = train(tmp_path, grad_accum_steps=3, lr_scheduler="cosine", lr_warmup_steps=1, lr_min_ratio=0.1)
    training = result["training"]
    assert training["optimizer_steps"] == training["planned_optimizer_steps"] == 8
    assert training["lr_schedule"]["total_steps"] == 8
    lr_final = 0.005 * 0.1  # tiny.yaml's learning_rate * lr_min_ratio
    assert training["lr_last_steps"][-1] == pytest.approx(lr_final, rel=1e-12)
    assert training["lr_last_steps"][-2] > lr_final * 1.01
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 1: 4 optimiser steps (run: 8/8)" in log and "grad norm (pre-clip)" in log
    assert result["config"]["guard_nonfinite"] is True  # defaults from guards.yaml are recorded


def test_guard_keys_are_known_and_checked():
    check_keys({key: value for key, value in GUARD_DEFAULTS.items()}, model="GRU4Rec")
    with pytest.raises(ConfigError, match="did you mean 'grad_accum_steps'"):
        check_keys({"grad_acum_steps": 2}, model="GRU4Rec")
    assert guard_settings({})["guard_frozen_metrics_evals"] == GUARD_DEFAULTS["guard_frozen_metrics_evals"]
    for bad in ({"grad_accum_steps": 0}, {"lr_scheduler": "step"}, {"lr_min_ratio": 2.0},
                {"guard_frozen_metrics_evals": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            guard_settings(bad)
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        LRSchedule("cosine", total_steps=4, warmup_steps=4)
    assert math.isclose(LRSchedule("none", 5, warmup_steps=1).factor(3), 1.0)
