"""The README's quickstart and .ci/run stay in sync; documented packaged configs exist."""

from __future__ import annotations

import re
from pathlib import Path

from ss4rec.config.files import resolve_config_file

ROOT = Path(__file__).resolve().parent.parent


def _quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_is_exactly_two_commands_and_ci_runs_the_test_one():
    commands = _quickstart_commands()
    assert len(commands) == 2
    train, test = commands
    assert "pip install torch==2.13.0" in train and "ss4rec train" in train and "ml-100k" in train
    assert "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, "the README's test command must be the one .ci/run runs"


def test_packaged_configs_named_in_the_readme_exist():
    for name in ("ss4rec", "ml-100k-quick", "tiny"):
        assert resolve_config_file(name).is_file()


def test_top_level_configs_folder_is_the_packaged_one():
    top = ROOT / "configs"
    assert top.resolve() == (ROOT / "src" / "ss4rec" / "configs").resolve()
    assert sorted(p.name for p in top.glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "src" / "ss4rec" / "configs").glob("*.yaml"))
    assert (top / "ml-100k-quick.yaml").is_file()


def test_quickstart_training_runs_as_written_and_prints_its_metric(tmp_path):
    """README command 1's training part, through the CLI, on the bundled ML-100K.

    The README's time budget is for people and benchmarks; here it only bounds the wait
    (ten times over: CI machines are slower and shared).
    """
    import json
    import shlex
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    budget_minutes = int(re.search(r"# 1\..*?~(\d+) minutes of training", readme).group(1))
    train = _quickstart_commands()[0].split("&& ss4rec train", 1)[1]
    args = shlex.split(train)
    args[args.index("--output") + 1] = str(tmp_path / "quickstart")
    proc = subprocess.run([sys.executable, "-m", "ss4rec", "train", *args], capture_output=True,
                          text=True, timeout=budget_minutes * 60 * 10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert printed["test"]["ndcg@10"] > 0.03  # well above random (~0.003); README: about 0.058
    assert "expected with ml-100k-quick: test NDCG@10" in proc.stdout
    assert (tmp_path / "quickstart" / "curves.png").is_file()
