"""SS4Rec's time scale: each time_unit / time_transform gives the S5 step scale it documents.

Units read from the data (``auto``, ``normalized``) are checked against the bundled ML-100K
file read independently with pandas; every option also runs a real training on ``tiny``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import recbole
import torch

import ss4rec
from ss4rec import ssm
from ss4rec.errors import ConfigError
from ss4rec.models.ss4rec import TIME_UNITS, scaled_gaps, state_kept, time_intervals, time_unit_seconds
from tests.test_model import make_model

ML100K = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"


def _tiny_log() -> pd.DataFrame:
    """The interactions ``tiny`` keeps (users with at most 40), each user's in time order."""
    log = pd.read_csv(ML100K, sep="\t", usecols=["user_id:token", "timestamp:float"])
    log.columns = ["user", "time"]
    log = log[log.groupby("user")["user"].transform("size") <= 40]
    return log.sort_values("time", kind="stable").sort_values("user", kind="stable")


@pytest.mark.parametrize("unit, seconds", [(name, s) for name, s in TIME_UNITS.items()] + [(1000, 1000.0), (0.5, 0.5)])
def test_fixed_units_divide_the_gap(unit, seconds):
    gaps = torch.tensor([0.0, 1.0, 60.0, 3600.0, 86400.0], dtype=torch.float64)
    per_unit = time_unit_seconds(unit)
    assert per_unit == seconds
    assert torch.equal(scaled_gaps(gaps, per_unit, "linear"), gaps / seconds)


def test_log1p_compresses_long_gaps_and_keeps_zero():
    gaps = torch.tensor([0.0, 60.0, 3600.0, 86400.0 * 30], dtype=torch.float64)
    scaled = scaled_gaps(gaps, 60.0, "log1p")
    assert torch.allclose(scaled, torch.log(1 + gaps / 60.0))
    assert scaled[0] == 0 and scaled[1] == pytest.approx(math.log(2))
    assert scaled[3] < 11  # 30 days is ~10.7 units, not 43,200
    with pytest.raises(ConfigError, match="time_transform"):
        scaled_gaps(gaps, 1.0, "sqrt")


def test_auto_and_normalized_units_are_read_from_the_training_data(tiny_config_and_dataset):
    log = _tiny_log()
    gaps = []
    for _, times in log.groupby("user", sort=False)["time"]:
        t = times.to_numpy(dtype=np.float64)
        gaps.extend(np.diff(t)[: len(t) - 3])  # training targets: not the first, not valid / test
    gaps = np.array(gaps)
    config, dataset = tiny_config_and_dataset
    assert time_unit_seconds("auto", dataset) == float(np.median(gaps[gaps > 0]))
    assert time_unit_seconds("normalized", dataset) == float(log["time"].max() - log["time"].min())
    with pytest.raises(ConfigError, match="read from the data"):
        time_unit_seconds("auto")
    for model_unit in ("auto", "normalized", "hours"):
        model = make_model(tiny_config_and_dataset, time_unit=model_unit)
        assert model.time_scale == {"time_unit": model_unit, "seconds_per_unit": time_unit_seconds(model_unit, dataset),
                                    "time_transform": "linear"}


def test_the_model_feeds_s5_the_scaled_gaps(tiny_config_and_dataset):
    """What reaches S5 is s(gap): checked by capturing the step the first S5 layer receives."""
    seen = {}
    for unit, transform in (("seconds", "linear"), ("hours", "linear"), ("auto", "log1p"), ("normalized", "linear")):
        model = make_model(tiny_config_and_dataset, time_unit=unit, time_transform=transform)
        captured = []
        hook = model.model[0].S5.register_forward_hook(lambda mod, args, out: captured.append(args[1]))
        times = torch.tensor([[0.0, 30.0, 30.0, 3630.0]], dtype=torch.float64) + 1.6e9
        items = torch.tensor([[1, 2, 3, 4]])
        model.sequence_output(items, torch.tensor([4]), times, torch.tensor([1.6e9 + 90030.0], dtype=torch.float64))
        hook.remove()
        gaps = time_intervals(times, torch.tensor([4]), torch.tensor([1.6e9 + 90030.0], dtype=torch.float64))
        assert gaps.tolist() == [[30.0, 0.0, 3600.0, 86400.0]]
        expected = scaled_gaps(gaps, model.time_unit, transform).float()
        assert torch.equal(captured[0], expected)
        seen[(unit, transform)] = captured[0]
    assert torch.allclose(seen[("seconds", "linear")], seen[("hours", "linear")] * 3600)


def test_a_zero_gap_item_does_not_enter_the_s5_state():
    """Δ = 0: Λ̄ = 1 and B̄ = 0, so the state after it is unchanged by which item it was."""
    torch.manual_seed(0)
    layer = ssm.S5(width=8, state_width=4).double().eval()
    u = torch.randn(1, 5, 8, dtype=torch.float64)
    other = u.clone()
    other[0, 2] = torch.randn(8, dtype=torch.float64)  # a different item at position 2
    dt = torch.tensor([[3.0, 1.0, 0.0, 2.0, 5.0]], dtype=torch.float64)  # position 2: zero gap
    y, y_other = layer(u, dt), layer(other, dt)
    assert torch.allclose(y[0, 3:], y_other[0, 3:], atol=1e-12)  # later positions: same state
    assert not torch.allclose(y[0, 2], y_other[0, 2])  # position 2 itself: only through D
    assert torch.allclose(y[0, 2] - y_other[0, 2], layer.seq.D * (u[0, 2] - other[0, 2]))
    dt[0, 2] = 1.0  # a positive gap: the item enters the state
    assert not torch.allclose(layer(u, dt)[0, 3:], layer(other, dt)[0, 3:])


def test_state_kept_across_a_gap():
    # seconds, 1 hour, median initial step 0.01: exp(-0.5 * 3600 * 0.01) = exp(-18)
    largest, median, smallest = state_kept(3600, 1.0)
    assert median == pytest.approx(math.exp(-18)) and largest < median < smallest
    assert state_kept(3600, 3600.0)[1] == pytest.approx(math.exp(-0.005))
    assert state_kept(0, 1.0) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("settings", [
    {"time_unit": "seconds"}, {"time_unit": "minutes"}, {"time_unit": "hours"}, {"time_unit": "days"},
    {"time_unit": 600.0}, {"time_unit": "auto"}, {"time_unit": "normalized"},
    {"time_unit": "auto", "time_transform": "log1p"}, {"time_unit": "seconds", "time_transform": "log1p"},
], ids=lambda s: "-".join(str(v) for v in s.values()))
def test_every_time_scale_trains_on_tiny(settings, tmp_path):
    result = ss4rec.run(model="SS4Rec", dataset="ml-100k", config_files=["tiny"],
                        config_dict={"d_state": 8, "d_P": 8, "MAX_ITEM_LIST_LENGTH": 10, **settings},
                        output_dir=str(tmp_path / "run"), device="cpu")
    assert all(math.isfinite(v) for v in result["test"].values())
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    scale = saved["time_scale"]
    assert scale["time_unit"] == settings["time_unit"]
    assert scale["time_transform"] == settings.get("time_transform", "linear")
    assert scale["seconds_per_unit"] > 0
    if isinstance(settings["time_unit"], float) or settings["time_unit"] in TIME_UNITS:
        assert scale["seconds_per_unit"] == time_unit_seconds(settings["time_unit"])


def test_a_bad_time_scale_is_a_clear_error(tmp_path, capsys):
    from ss4rec.cli import main as cli_main

    for bad, word in (("time_unit=fortnight", "time_unit"), ("time_transform=sqrt", "time_transform")):
        code = cli_main(["train", "--model", "SS4Rec", "--dataset", "ml-100k", "--config", "tiny", "--set", bad,
                         "--device", "cpu", "--output", str(tmp_path / bad.split("=")[0])])
        err = capsys.readouterr().err
        assert code == 2 and word in err and "Traceback" not in err
