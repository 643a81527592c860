"""Fixtures for the Space tests: the tiny model behind the app launched on 127.0.0.1 (once per session),
a spy on the processor that records what reached the model, and spoken clips from espeak-ng."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Screenshots and benchmark figures (reports/ is git-ignored); ENTROPY_ASR_ARTIFACTS overrides.
ARTIFACTS = Path(
    os.environ.get("ENTROPY_ASR_ARTIFACTS") or Path(__file__).resolve().parents[2] / "reports" / "space"
)
LOOPBACK = ("127.0.0.1", "::1", "localhost", "0.0.0.0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def speak(text: str, path: Path, voice: str = "en+f3") -> Path:
    """A spoken clip from espeak-ng (22.05 kHz wav); skips the test if espeak-ng is missing."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make system)")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return path


def write_wave(path: Path, wave: np.ndarray, sr: int = 16000) -> Path:
    sf.write(path, wave.astype(np.float32), sr, subtype="FLOAT")
    return path


class ProcessorSpy:
    """Wraps the processor: records the context and the prompt text (input_ids decoded, audio placeholders
    dropped) of every prompt it builds: the transcription's (`prompt_inputs`) and the entropy view's (a call with
    a transcript). Everything else is delegated."""

    def __init__(self, inner):
        self._inner = inner
        self.calls: list[dict] = []

    def _record(self, input_ids, attention_mask, context, transcript=None) -> None:
        ids = input_ids[0][attention_mask[0].bool()]
        prompt = self._inner.tokenizer.decode(ids).replace(self._inner.audio_token, "")
        self.calls.append({"context": context, "prompt": prompt, "transcript": transcript})

    def __call__(self, *args, **kwargs):
        out = self._inner(*args, **kwargs)
        self._record(out["input_ids"], out["attention_mask"], kwargs.get("context"), kwargs.get("transcript"))
        return out

    def prompt_inputs(self, counts, contexts=None, prefixes=None):
        input_ids, attention_mask = self._inner.prompt_inputs(counts, contexts, prefixes)
        self._record(input_ids, attention_mask, contexts)
        return input_ids, attention_mask

    def __getattr__(self, name):
        return getattr(self._inner, name)


@contextlib.contextmanager
def network_guard():
    """Refuse (and record) every connection/lookup to a host other than this machine."""
    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in LOOPBACK:
            attempts.append(f"connect {address}")
            raise OSError(f"network access refused in test: {address}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            attempts.append(f"lookup {host}")
            raise OSError(f"name lookup refused in test: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.getaddrinfo = real_connect, real_getaddrinfo


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("space_clips")
    return {
        "nav": speak("navigate to the nearest gas station", d / "nav.wav"),
        "call": speak("call john smith on his mobile", d / "call.wav"),
    }


@pytest.fixture(scope="session")
def examples_dir(clips, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("space_examples")
    shutil.copy(clips["call"], d / "call.wav")
    (d / "call.hotwords.txt").write_text("John Smith\n", encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def space_server(tiny_model_dir, examples_dir):
    """The app serving the tiny model on a free 127.0.0.1 port; yields a namespace with url, backend, spy,
    demo and the network attempts made while loading and launching (must be none)."""
    from types import SimpleNamespace

    from space import app

    with network_guard() as attempts:
        backend = app.load_backend(str(tiny_model_dir), device="cpu")
        spy = ProcessorSpy(backend.processor)
        backend.processor = backend.recognizer.processor = spy
        port = free_port()
        demo = app.launch(
            model=str(tiny_model_dir),
            port=port,
            host="127.0.0.1",
            examples_dir=examples_dir,
            block=False,
            backend=backend,
        )
    yield SimpleNamespace(
        url=f"http://127.0.0.1:{port}/",
        backend=backend,
        spy=spy,
        demo=demo,
        attempts=list(attempts),
    )
    demo.close()


@pytest.fixture(scope="session")
def client(space_server, tmp_path_factory):
    from gradio_client import Client

    return Client(
        space_server.url,
        verbose=False,
        analytics_enabled=False,
        download_files=str(tmp_path_factory.mktemp("client_downloads")),
    )
