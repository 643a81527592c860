"""Shared fixtures for the evaluation-library tests: offline Hub, a synthetic phoneme/word corpus."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # evaluate.load must never reach the Hub in tests

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

EVAL_DIR = Path(__file__).resolve().parents[2] / "eval"


@dataclass
class Corpus:
    """Frame-level labels of a synthetic corpus: words are phoneme strings, phonemes last 1-4 frames."""

    phonemes: np.ndarray  # (N,) int
    units: np.ndarray  # (N,) int, word id
    utterance_ids: np.ndarray  # (N,) str
    n_phonemes: int
    n_words: int
    pronunciations: np.ndarray  # (N,) int, the word's lexicon entry: homophones share one


def make_corpus(
    n_utts: int = 120, n_phonemes: int = 20, n_words: int = 40, seed: int = 0, homophones: int = 1
) -> Corpus:
    """Words w = 0..n_words-1 are pronounced as lexicon entry w // homophones (a random phoneme string)."""
    rng = np.random.default_rng(seed)
    lexicon = [rng.integers(0, n_phonemes, rng.integers(2, 6)) for _ in range(n_words // homophones)]
    phonemes, units, utts = [], [], []
    for u in range(n_utts):
        for w in rng.integers(0, n_words, rng.integers(5, 11)):
            for p in lexicon[w // homophones]:
                k = int(rng.integers(1, 5))
                phonemes += [p] * k
                units += [w] * k
                utts += [f"utt{u:04d}"] * k
    units = np.array(units)
    return Corpus(np.array(phonemes), units, np.array(utts), n_phonemes, n_words, units // homophones)


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return make_corpus()


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    return EVAL_DIR


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small probes run fastest single-threaded, especially on a shared CPU; restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
