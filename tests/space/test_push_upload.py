"""`entropy-asr push` uploads: every failure (offline mode, no token, unreachable Hub, someone else's repo,
a refused upload) exits non-zero with a message saying what to do, never shows the token, and leaves the
assembled folders in place. No network is used: the Hub calls are replaced, or pointed at a closed port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from tests.conftest import REPO

TOKEN = "hf_testtoken_DO_NOT_PRINT_0123456789"


def push_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["push", "--model", str(model_dir), "--repo-id", "me/entropy-asr-tiny", "--out", str(out), *extra]


def assert_folders_intact(out: Path) -> None:
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "README.md").is_file()
    assert (out / "space" / "app.py").is_file()


@pytest.fixture
def online(monkeypatch):
    """Online mode with a token, and Hub calls that must be replaced by each test (recorded here)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: TOKEN)
    calls: list[tuple] = []

    def refuse(*args, **kwargs):
        raise AssertionError("unexpected Hub call")

    monkeypatch.setattr(HfApi, "whoami", lambda self, *a, **k: {"name": "me", "orgs": [{"name": "my-org"}]})
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    return SimpleNamespace(calls=calls, monkeypatch=monkeypatch)


def test_offline_mode_is_reported(tiny_model_dir, tmp_path, caplog, monkeypatch):
    from training.commands.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(push_args(tiny_model_dir, tmp_path)) == 1
    assert "HF_HUB_OFFLINE is set" in caplog.text and "HF_HUB_OFFLINE=0" in caplog.text
    assert "assembled folders are kept in" in caplog.text
    assert_folders_intact(tmp_path)


def test_someone_elses_namespace_is_refused_before_any_upload(
    online, tiny_model_dir, tmp_path, caplog, capsys
):
    from training.commands.cli import main

    rc = main(push_args(tiny_model_dir, tmp_path, "--space-id", "someone-else/demo"))
    assert rc == 1
    assert "someone-else/demo is in the namespace 'someone-else'" in caplog.text
    assert "cannot write to" in caplog.text and "me/demo" in caplog.text
    output = caplog.text + "".join(capsys.readouterr())
    assert TOKEN not in output
    assert_folders_intact(tmp_path)


def test_refused_upload_says_what_to_do(online, tiny_model_dir, tmp_path, caplog, capsys):
    from training.commands.cli import main

    response = SimpleNamespace(status_code=403, headers={}, request=None)
    online.monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)

    def upload_folder(self, **kwargs):
        raise HfHubHTTPError(
            f"403 Forbidden: you cannot write to me/entropy-asr-tiny ({TOKEN})", response=response
        )

    online.monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert main(push_args(tiny_model_dir, tmp_path)) == 1
    assert "no write access" in caplog.text and "choose a repo id in your own namespace" in caplog.text
    assert TOKEN not in caplog.text + "".join(capsys.readouterr())
    assert_folders_intact(tmp_path)


def test_successful_push_uploads_each_folder(online, tiny_model_dir, tmp_path, caplog, capsys):
    from training.commands.cli import main

    def create_repo(self, repo_id, **kwargs):
        online.calls.append(
            ("create", repo_id, kwargs["repo_type"], kwargs.get("space_sdk"), kwargs["private"])
        )

    def upload_folder(self, **kwargs):
        online.calls.append(
            ("upload", kwargs["repo_id"], kwargs["repo_type"], Path(kwargs["folder_path"]).name)
        )

    online.monkeypatch.setattr(HfApi, "create_repo", create_repo)
    online.monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    extra = ["--space-id", "me/entropy-asr-demo", "--metric-id", "my-org/entropy_allocation", "--private"]
    if not (REPO / "eval" / "entropy_allocation").is_dir():
        extra = extra[:2] + ["--private"]
    assert main(push_args(tiny_model_dir, tmp_path, *extra)) == 0
    expected = [
        ("create", "me/entropy-asr-tiny", "model", None, True),
        ("upload", "me/entropy-asr-tiny", "model", "model"),
        ("create", "me/entropy-asr-demo", "space", "gradio", True),
        ("upload", "me/entropy-asr-demo", "space", "space"),
        ("create", "my-org/entropy_allocation", "space", "gradio", True),
        ("upload", "my-org/entropy_allocation", "space", "metric"),
    ]
    assert online.calls == expected[: len(online.calls)] and len(online.calls) in (4, 6)
    out = capsys.readouterr().out
    assert "uploaded model: https://huggingface.co/me/entropy-asr-tiny" in out
    assert "uploaded space: https://huggingface.co/spaces/me/entropy-asr-demo" in out
    assert TOKEN not in out + caplog.text


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.Popen(
        [sys.executable, "-m", "training.commands.cli", *args],
        cwd=REPO,
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_no_token_and_unreachable_hub_in_a_real_process(tiny_model_dir, tmp_path):
    """The real command and environment: no token at all, and a token but a Hub on a closed port."""
    closed = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    # both at once (two interpreters that mostly import, on two cores), each with an HF_HOME of its own, no login
    no_token = start_cli(
        push_args(tiny_model_dir, tmp_path / "a"), {**closed, "HF_HOME": str(tmp_path / "hf_a")}
    )
    unreachable = start_cli(
        push_args(tiny_model_dir, tmp_path / "b"),
        {**closed, "HF_HOME": str(tmp_path / "hf_b"), "HF_TOKEN": TOKEN},
    )
    _, stderr = no_token.communicate(timeout=300)
    assert no_token.returncode == 1, stderr
    assert "No Hugging Face token found" in stderr and "hf auth login" in stderr
    assert_folders_intact(tmp_path / "a")

    stdout, stderr = unreachable.communicate(timeout=300)
    assert unreachable.returncode == 1, stderr
    assert "could not reach http://127.0.0.1:9" in stderr and "check your network connection" in stderr
    assert TOKEN not in stdout + stderr
    assert_folders_intact(tmp_path / "b")
