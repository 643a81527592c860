"""Data-layer benchmarks (run by `make bench`): corpus build time (tiny, small) and data-loading throughput
(decode FLAC -> two augmented views with noise -> 80-bin log-mel via ParakeetFeatureExtractor) on 2 cores."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from training.data.augment import AugmentConfig, Augmenter
from training.data.corpus import build_corpus
from training.data.loading import SpeechDataset, collate_skip_none, load_speech_dataset

pytestmark = pytest.mark.slow
WORKERS = 2


@pytest.fixture(scope="module")
def build_times(tmp_path_factory) -> dict[str, tuple[float, int, object]]:
    out: dict[str, tuple[float, int, object]] = {}
    for size in ("tiny", "small"):
        path = tmp_path_factory.mktemp(f"corpus_{size}")
        t0 = time.perf_counter()
        dataset = build_corpus(path, size=size, seed=0, workers=WORKERS)
        out[size] = (time.perf_counter() - t0, sum(len(split) for split in dataset.values()), path)
    return out


def test_corpus_build_time(build_times):
    for size, (seconds, clips, _) in build_times.items():
        print(
            f"\n[bench_data] make-corpus --size {size}: {seconds:.1f} s for {clips} clips "
            f"({clips / seconds:.1f} clips/s, {WORKERS} workers, {os.cpu_count()} CPUs)"
        )
    assert build_times["tiny"][0] < 60.0, "tiny must build in under a minute"


class _Transform:
    """Decode is done by SpeechDataset; this adds two augmented views and their log-mel features."""

    def __init__(self, noise_prob: float, others: list[np.ndarray]):
        from transformers import ParakeetFeatureExtractor

        self.augmenter = Augmenter(AugmentConfig(noise_prob=noise_prob))
        self.extractor = ParakeetFeatureExtractor()
        self.others = others

    def __call__(self, row: dict) -> dict:
        rng = np.random.default_rng([0, row["index"]])
        views = self.augmenter.two_views(row["audio"], rng, others=self.others)
        feats = self.extractor(list(views), sampling_rate=16000, return_tensors="pt")["input_features"]
        return {"features": feats, "seconds": len(row["audio"]) / 16000}


def _throughput(
    dataset, noise_prob: float, num_workers: int, others: list[np.ndarray]
) -> tuple[float, float]:
    torch_ds = SpeechDataset(dataset, transform=_Transform(noise_prob, others))
    loader = torch.utils.data.DataLoader(
        torch_ds, batch_size=8, num_workers=num_workers, collate_fn=collate_skip_none(lambda b: b)
    )
    t0 = time.perf_counter()
    n, audio_s = 0, 0.0
    for batch in loader:
        n += len(batch)
        audio_s += sum(item["seconds"] for item in batch)
    elapsed = time.perf_counter() - t0
    return n / elapsed, audio_s / elapsed


def test_loading_throughput(build_times):
    torch.set_num_threads(1)
    dataset = load_speech_dataset(build_times["small"][2] / "dataset", split="train").select(range(400))
    others = [SpeechDataset(dataset)[i]["audio"] for i in range(0, 400, 40)]
    for noise_prob in (0.2, 1.0):
        for num_workers in (0, WORKERS):
            utt_s, audio_x = _throughput(dataset, noise_prob, num_workers, others)
            print(
                f"\n[bench_data] load+decode+2 views (noise_prob={noise_prob}) + log-mel, "
                f"DataLoader workers={num_workers}: {utt_s:.1f} utt/s ({audio_x:.0f}x real time)"
            )
            assert utt_s > 5.0
