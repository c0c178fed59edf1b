"""Settings are data, never code: a string from a YAML file, ``--set``, ``--models``, a
checkpoint or a run folder reaches RecBole as the same plain string (RecBole 1.2.1's
``Config`` would ``eval()`` it), and YAML inputs are size- and alias-bounded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ss4rec.cli import main as cli_main
from ss4rec.config.files import parse_sets
from ss4rec.config.safe_yaml import MAX_VALUES, load_yaml
from ss4rec.errors import ConfigError
from ss4rec.pipeline.settings import build_config
from ss4rec.training.checkpoint import load_checkpoint, save_checkpoint

SMALL = ["--config", "tiny", "--set", "d_state=8", "--set", "d_P=8", "--set", "expand=1", "--device", "cpu"]


def _planted(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


def _nothing_ran(marker: Path) -> None:
    assert not marker.exists(), f"a setting was run as code: {marker} exists"


def test_a_planted_string_in_a_yaml_file_stays_a_string(tmp_path, capsys):
    marker = tmp_path / "MARKER-yaml"
    code = _planted(marker)
    config_file = tmp_path / "shared.yaml"
    config_file.write_text(f'wandb_project: "{code}"\nuser_inter_num_interval: "[0,40]"\n', encoding="utf-8")
    config, _ = build_config("SS4Rec", "ml-100k", ["tiny", str(config_file)], {"d_state": 8}, device="cpu")
    _nothing_ran(marker)
    assert config["wandb_project"] == code and isinstance(config["wandb_project"], str)
    assert config["user_inter_num_interval"] == [0, 40]  # a literal: typed as RecBole types it, never run
    assert cli_main(["preflight", "--no-env", *SMALL, "--config", str(config_file)]) == 0
    _nothing_ran(marker)
    capsys.readouterr()


def test_a_planted_string_in_set_and_in_the_api_stays_a_string(tmp_path, capsys):
    marker = tmp_path / "MARKER-set"
    code = _planted(marker)
    settings = parse_sets([f"wandb_project={code}"])
    assert settings == {"wandb_project": code}
    config, _ = build_config("SASRec", "ml-100k", ["tiny"], settings, device="cpu")
    _nothing_ran(marker)
    assert config["wandb_project"] == code
    config, _ = build_config("SASRec", "ml-100k", ["tiny"], {"NEG_PREFIX": code}, device="cpu")
    _nothing_ran(marker)
    assert config["NEG_PREFIX"] == code
    assert cli_main(["preflight", "--no-env", *SMALL, "--set", f"wandb_project={code}"]) == 0
    _nothing_ran(marker)
    capsys.readouterr()


def test_a_planted_string_in_a_checkpoint_and_its_run_folder_stays_a_string(ss4rec_ce_run, tmp_path, capsys):
    """A checkpoint's SHA-256 is a content hash anyone can recompute, not a signature: a
    shared checkpoint with a planted setting must load as data."""
    from ss4rec.pipeline.runner import restore

    marker = tmp_path / "MARKER-ckpt"
    code = _planted(marker)
    source = Path(ss4rec_ce_run["checkpoint"])
    state = load_checkpoint(source)
    state["config"]["run_settings"]["config_dict"]["wandb_project"] = code
    state["config"]["wandb_project"] = code
    state.pop("checksum")
    planted = save_checkpoint(state, tmp_path / "run" / "checkpoints" / source.name)  # a valid checksum again
    restored = restore(planted, device="cpu")
    _nothing_ran(marker)
    assert restored.config["wandb_project"] == code
    assert cli_main(["evaluate", "--checkpoint", str(planted), "--output", str(tmp_path / "eval")]) == 0
    _nothing_ran(marker)
    # The run folder's results.json: report reads it as JSON, nothing more.
    results = dict(ss4rec_ce_run, config={**ss4rec_ce_run["config"], "wandb_project": code})
    (tmp_path / "run" / "results.json").write_text(json.dumps(results), encoding="utf-8")
    assert cli_main(["report", str(tmp_path / "run"), "--plot", str(tmp_path / "r.png")]) == 0
    _nothing_ran(marker)
    capsys.readouterr()


def test_only_literals_are_typed_and_code_stays_a_string():
    from ss4rec.training.distributed import literal_setting

    assert literal_setting("[0,40]") == [0, 40] and literal_setting("1e-8") == 1e-8
    assert literal_setting("true") is True and literal_setting("[5,inf)") == "[5,inf)"
    for code in ("__import__('os').system('x')", "open('/etc/passwd').read()", "(lambda: 1)()",
                 "[x for x in ().__class__.__base__.__subclasses__()]", "9**9**9", "exit()"):
        assert literal_setting(code) == code


def test_a_planted_string_in_a_compare_model_setting_is_refused_or_kept(tmp_path):
    from ss4rec.evaluation.compare import parse_models

    marker = tmp_path / "MARKER-models"
    code = _planted(marker).replace(":", "")  # --models splits NAME:KEY=VALUE at colons
    spec = parse_models(f"SASRec:wandb_project={code}")[0]
    assert spec.overrides == {"wandb_project": code}
    _nothing_ran(marker)


def test_yaml_bombs_and_oversized_files_are_refused(tmp_path, capsys):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert bomb.stat().st_size < 500  # a few hundred bytes standing for 10^9 values
    out = tmp_path / "run"
    assert cli_main(["train", *SMALL, "--config", str(bomb), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"over {MAX_VALUES:,} values" in err.strip().splitlines()[-1]
    assert not out.exists()
    with pytest.raises(ConfigError, match="nested deeper"):
        load_yaml("[" * 3000 + "]" * 3000, "--set x")
    with pytest.raises(ConfigError, match="refers to a value that contains it"):
        load_yaml("a: &x [*x]", "--set x")
    big = tmp_path / "big.yaml"
    big.write_text("epochs: 1\n" + "# padding\n" * 200_000, encoding="utf-8")
    assert cli_main(["train", *SMALL, "--config", str(big), "--output", str(out)]) == 2
    assert "bytes, over the" in capsys.readouterr().err
    assert not out.exists()


def test_a_yaml_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    config_file = tmp_path / "latin1.yaml"
    config_file.write_bytes("epochs: 1\nwandb_project: caf\xe9\n".encode("latin-1"))
    out = tmp_path / "run"
    assert cli_main(["train", *SMALL, "--config", str(config_file), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: config file {config_file}: line 2, column 19: byte 0xe9 is "
                                            "not UTF-8: save the file as UTF-8")
    assert not out.exists()
