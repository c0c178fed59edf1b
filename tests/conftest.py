"""Shared fixtures: small real runs on the bundled MovieLens-100K.

Every training run here is real RecBole training on real data: the packaged ``tiny``
config keeps the bundled ML-100K users with at most 40 ratings (305 users, 8,390
interactions), short histories and a small model, so one epoch takes seconds.
"""

from __future__ import annotations

import math
import os

# One intra-op thread, here and in every subprocess the tests start: on a small or shared
# machine, torch's default (one thread per core) oversubscribes the cores and a tiny epoch
# measured 10x slower (43 s instead of 4 s on 2 busy cores).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# SS4Rec at a small width for tests (the official shape is hidden 64, d_state 32, d_P 32).
TINY_SS4REC = {"d_state": 8, "d_P": 8, "expand": 1}


def random_hit10(n_items: int) -> float:
    """HR@10 of a random ranking over the real items (item 0 is padding)."""
    return 10 / (n_items - 1)


def assert_metrics_finite_above_random(result: dict) -> None:
    test = result["test"]
    assert test, "no test metrics"
    assert all(math.isfinite(v) for v in test.values()), test
    assert test["hit@10"] > random_hit10(result["n_items"]), (test, result["n_items"])


@pytest.fixture(scope="session")
def ss4rec_ce_run(tmp_path_factory):
    """One epoch of SS4Rec with CE loss on tiny ML-100K (shared by several tests)."""
    import ss4rec

    out = tmp_path_factory.mktemp("ss4rec-ce")
    return ss4rec.run(model="SS4Rec", dataset="ml-100k", config_files=["tiny"],
                      config_dict=dict(TINY_SS4REC), output_dir=out, device="cpu")


@pytest.fixture(scope="session")
def tiny_config_and_dataset():
    """RecBole Config and the built (augmented) training SS4RecDataset for tiny ML-100K."""
    from recbole.data import create_dataset, data_preparation

    from ss4rec.pipeline.settings import build_config

    config, _ = build_config("SS4Rec", "ml-100k", ["tiny"], dict(TINY_SS4REC), device="cpu")
    train_data, _, _ = data_preparation(config, create_dataset(config))
    return config, train_data._dataset
