"""runpod_entrypoint.sh, run for real with bash on CPU.

One debug training run (with a live webhook on 127.0.0.1) serves the end-to-end
assertions and the start/finish notification; the failure cases stop before training,
most of them in the script itself or at the start of preflight, so they are quick.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from localserver import local_http_server

from ss4rec.config.files import _recbole_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "runpod_entrypoint.sh"


def run_script(*args, cwd: Path, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("SS4REC_NOTIFY_URL", None)  # only the webhooks a test starts
    env.update(env_extra or {})
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def last_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc.stdout
    return lines[-1]


def printed_run_folder(proc) -> Path:
    folders = [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("run folder: ")]
    assert folders, proc.stdout
    return Path(folders[-1])


class Webhook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append(json.loads(body)["text"])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook():
    with local_http_server(Webhook, deadline_s=1200, posts=[]) as httpd:
        httpd.url = f"http://127.0.0.1:{httpd.server_port}/services/T0/B0/secret"
        yield httpd


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory, webhook):
    """The smoke preset of .ci/run, with a webhook: trained end to end once for this module."""
    cwd = tmp_path_factory.mktemp("pod")
    proc = run_script("--model", "ss4rec-official", "--dataset", "ml-100k", "--debug", "--device", "cpu",
                      "--notify", webhook.url, cwd=cwd)
    return proc, cwd, list(webhook.posts)


# ---- the script file ------------------------------------------------------------------------

def test_script_is_lf_strict_bash_and_kept_lf_by_git():
    data = SCRIPT.read_bytes()
    assert b"\r" not in data, "runpod_entrypoint.sh has CR (CRLF) line endings: bash would fail on them"
    lines = data.decode().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    code = [line for line in lines[1:] if line.strip() and not line.startswith("#")]
    assert code[0] == "set -euo pipefail", "the first command must be `set -euo pipefail`"
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    attrs = subprocess.run(["git", "check-attr", "eol", "--", "runpod_entrypoint.sh"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    assert attrs.strip().endswith("eol: lf")


def test_help_lists_every_option(tmp_path):
    proc = run_script("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for option in ["--model", "--dataset", "--data-dir", "--raw", "--config", "--set", "--test-ml1m",
                   "--debug", "--production", "--dry-run", "--device", "--nproc", "--resume", "--wandb",
                   "--no-wandb", "--install", "--build-kernels", "--notify", "ss4rec-official", "mamba4rec", "ml-32m"]:
        assert option in proc.stdout, option


# ---- a full run ------------------------------------------------------------------------------

def test_debug_run_completes_with_results_in_the_printed_run_folder(debug_run):
    proc, cwd, _ = debug_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # environment block first, then the preflight table, then training
    assert out.index("environment\n") < out.index("preflight PASS") < out.index('"test"')
    assert "mamba kernels" in out and "causal-conv1d" in out
    run_dir = printed_run_folder(proc)
    assert run_dir.parent == cwd / "runs" and run_dir.name.endswith("-debug")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"] == "SS4Rec" and results["epochs_run"] == 1
    assert results["config"]["MAX_ITEM_LIST_LENGTH"] == 20 and results["config"]["d_state"] == 8
    assert results["test"]["hit@10"] >= 0
    for name in ["train.log", "preflight.json", "plan.txt", "checkpoints/SS4Rec-best.pth"]:
        assert (run_dir / name).is_file(), name
    assert "secret" not in (run_dir / "plan.txt").read_text()  # the webhook URL stays off disk


def test_debug_run_notifies_start_and_finish(debug_run):
    _, _, posts = debug_run
    assert len(posts) == 2, posts
    assert posts[0].startswith("ss4rec started: SS4Rec on ml-100k | device cpu")
    assert posts[1].startswith("ss4rec finished: SS4Rec on ml-100k") and "ndcg@10" in posts[1]


def test_dry_run_runs_preflight_and_trains_nothing(tmp_path):
    proc = run_script("--model", "sasrec", "--debug", "--device", "cpu", "--dry-run", "--output", "r",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preflight PASS" in proc.stdout and "nothing trained" in proc.stdout
    assert (tmp_path / "r" / "preflight.json").is_file()
    assert not (tmp_path / "r" / "results.json").exists() and not (tmp_path / "r" / "checkpoints").exists()


# ---- failures: non-zero exit, one line naming the fix, nothing trained ----------------------

@pytest.mark.parametrize("args, expected", [
    (["--epochs", "3"], ["unknown option '--epochs'", "--help"]),
    (["--model", "transformer"], ["unknown model 'transformer'", "sasrec"]),
    (["--dataset", "ml-20m"], ["ml-20m not found", "--raw PATH/TO/ml-20m.zip"]),
    (["--nproc", "two"], ["--nproc 'two'"]),
    (["--production", "--debug"], ["exclude each other"]),
])
def test_bad_arguments_fail_in_the_script(args, expected, tmp_path):
    proc = run_script(*args, cwd=tmp_path)
    assert proc.returncode == 2
    for text in expected:
        assert text in last_error(proc)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, expected", [
    (["--config", "BAD"], ["preflight config/keys and values", "unknown config key 'num_epochs'", "'epochs'"]),
    (["--device", "cuda"], ["preflight environment/device", "--device cpu"]),
    (["--set", "mamba_backend=cuda", "--device", "cpu"], ["preflight environment/mamba kernels",
                                                          "--set mamba_backend=torch"]),
])
def test_preflight_failures_stop_before_training(args, expected, tmp_path):
    import torch

    if "cuda" in args and args[args.index("--device") + 1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_epochs: 3\n")
    args = [str(bad) if a == "BAD" else a for a in args]
    proc = run_script("--debug", *args, "--output", "r", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    for text in expected:
        assert text in last_error(proc)
    assert "preflight FAIL" in proc.stdout
    assert not (tmp_path / "r" / "results.json").exists()


def test_test_ml1m_without_files_says_how_to_supply_them(tmp_path):
    proc = run_script("--test-ml1m", "--debug", "--data-dir", "nodata", cwd=tmp_path)
    assert proc.returncode != 0
    cause = last_error(proc)
    assert "ml-1m not found at nodata/ml-1m/ml-1m.inter" in cause
    assert "--raw PATH/TO/ml-1m.zip" in cause and "files.grouplens.org/datasets/movielens/ml-1m.zip" in cause
    assert not (tmp_path / "runs").exists()


def test_install_when_installed_only_looks_at_the_kernels(tmp_path):
    proc = run_script("--install", "--model", "nope", cwd=tmp_path)
    assert "unknown model 'nope'" in last_error(proc)  # arguments are checked first, nothing installed
    proc = run_script("--install", "--build-kernels", "--dataset", "ml-25m", cwd=tmp_path)
    assert "ss4rec is already installed" in proc.stdout and proc.returncode == 2
    # the CPU torch here: the kernels are skipped in one line, saying why
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("mamba-ssm kernels skipped: ")]
    assert len(skipped) == 1 and "CPU build" in skipped[0], proc.stdout
    proc = run_script("--install", "--model", "sasrec", "--dataset", "ml-25m", cwd=tmp_path)
    assert "mamba-ssm kernels skipped: sasrec has no Mamba layer" in proc.stdout
    proc = run_script("--build-kernels", cwd=tmp_path)
    assert proc.returncode == 2 and "add --install" in last_error(proc)


def test_wandb_without_a_key_fails_and_a_dotenv_key_is_never_printed(tmp_path):
    env = {"WANDB_API_KEY": ""}
    proc = run_script("--wandb", "--debug", "--dry-run", "--config", "missing.yaml", cwd=tmp_path, env_extra=env)
    assert proc.returncode == 2 and "WANDB_API_KEY" in last_error(proc)
    (tmp_path / ".env").write_text('WANDB_API_KEY="k3y-from-dotenv-0123456789"\n')
    proc = run_script("--wandb", "--debug", "--dry-run", "--config", "missing.yaml", cwd=tmp_path, env_extra=env)
    assert "k3y-from-dotenv" not in proc.stdout + proc.stderr
    assert "log_wandb=True" in proc.stdout
    assert proc.returncode == 1 and "config file missing.yaml not found" in last_error(proc)


def test_wandb_offline_needs_no_key(tmp_path):
    env = {"WANDB_API_KEY": "", "WANDB_MODE": "offline"}
    proc = run_script("--wandb", "--debug", "--dry-run", "--config", "missing.yaml", cwd=tmp_path, env_extra=env)
    assert "log_wandb=True" in proc.stdout  # accepted: it gets as far as the config
    assert proc.returncode == 1 and "config file missing.yaml not found" in last_error(proc)


# ---- --raw URL: download, convert, preflight ---------------------------------------------------

def grouplens_zip(path: Path, rows: int = 3000) -> Path:
    """A small ML-100K-layout zip (ml-100k/u.data) cut from RecBole's bundled copy."""
    inter = (_recbole_dir() / "dataset_example" / "ml-100k" / "ml-100k.inter").read_text().splitlines()[1:rows + 1]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-100k/u.data", "\n".join(inter) + "\n")
    return path


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.folder, httpd.base = served, f"http://127.0.0.1:{httpd.server_port}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_convert_accepts_a_url_with_checksum_and_cache(file_server, tmp_path):
    import hashlib

    zip_path = grouplens_zip(file_server.folder / "mini.zip")
    sha = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    cmd = [sys.executable, "-m", "ss4rec", "convert", f"{file_server.base}/mini.zip", str(tmp_path / "data"),
           "--name", "mini", "--sha256", sha, "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "checksum verified" in proc.stderr and "3,000 ratings" in proc.stdout
    assert (tmp_path / "data" / "mini" / "mini.inter").is_file()
    assert list((tmp_path / "cache").glob("*/mini.zip"))
    zip_path.unlink()  # second time: from the cache, no server file needed
    again = [str(tmp_path / "data2") if part == str(tmp_path / "data") else part for part in cmd]
    proc = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "using cached" in proc.stderr
    grouplens_zip(zip_path)
    bad = subprocess.run(again[:-4] + ["--sha256", "0" * 64, "--cache-dir", str(tmp_path / "c2"), "--overwrite"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "checksum mismatch" in bad.stderr


def test_raw_url_is_downloaded_converted_and_preflighted(file_server, tmp_path):
    grouplens_zip(file_server.folder / "mini.zip")
    proc = run_script("--model", "sasrec", "--dataset", "mini", "--raw", f"{file_server.base}/mini.zip",
                      "--data-dir", "data", "--debug", "--device", "cpu", "--dry-run", cwd=tmp_path,
                      env_extra={"SS4REC_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "data" / "mini" / "mini.inter").is_file()
    out = proc.stdout
    assert out.index("environment\n") < out.index("wrote data/mini/mini.inter") < out.index("preflight PASS")
    assert out.count("environment\n") == 1
