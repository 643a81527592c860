"""Shared fixtures: a tiny EntropyASR model folder built once per session from configs/model/tiny.yaml with a
locally trained tokenizer (no downloads)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread: the suite shares 2 cores with subprocesses it starts (servers, fresh interpreters),
# and oversubscribed OpenMP threads slow training steps down by an order of magnitude.
torch.set_num_threads(int(os.environ.get("ENTROPY_ASR_TORCH_THREADS", "1")))  # `make bench` uses both cores

TOKENIZER_TEXTS = [
    "navigate to the nearest gas station",
    "play yellow submarine by the beatles",
    "call john smith on his mobile",
    "set the temperature to twenty two degrees",
    "open the driver window halfway",
    "导航到最近的加油站",
    "播放周杰伦的稻香",
    "打电话给张伟",
    "把空调温度调到二十二度",
    "打开主驾驶车窗",
] * 20


def spy_lean_loop(monkeypatch) -> list[int]:
    """Record each call of the model's lean greedy decoding loop (one entry per call) for the test's duration."""
    from modeling import modeling_entropy_asr as M

    calls: list[int] = []
    greedy = M.EntropyASRForConditionalGeneration._greedy_generate
    monkeypatch.setattr(
        M.EntropyASRForConditionalGeneration,
        "_greedy_generate",
        lambda self, *a, **k: calls.append(1) or greedy(self, *a, **k),
    )
    return calls


def synth_clip(seconds: float, seed: int = 0, sr: int = 16000) -> np.ndarray:
    """Speech-like test signal: harmonic tones with a syllable-rate envelope plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * rng.random()
    wave = sum(np.sin(2 * np.pi * f0 * k * t + rng.random() * 6) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.random() * 6))
    return (0.1 * wave * envelope + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_model_and_processor():
    from training.build import build_model_and_processor, load_yaml

    torch.manual_seed(0)
    model, processor = build_model_and_processor(load_yaml(REPO / "configs/model/tiny.yaml"), TOKENIZER_TEXTS)
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model_and_processor):
    from training.build import save_model_folder

    model, processor = tiny_model_and_processor
    return save_model_folder(model, processor, tmp_path_factory.mktemp("tiny_model"))


def run_python(code: str, cwd: Path | None = None, timeout: int = 300) -> str:
    """Run `code` in a fresh interpreter (offline); return stdout, raising with stderr on failure."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd or "/", env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The built-in corpus at `tiny` size, built once per session (about 10-20 s on 2 cores)."""
    from training.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("tiny_corpus")
    build_corpus(out, size="tiny", seed=7, workers=2)
    return out
