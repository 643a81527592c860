"""Evaluation-runner benchmark (run by `make bench`): decoding throughput of `entropy-asr evaluate` in
utterances/s on the tiny corpus test split with the tiny (random-weight) model, unbatched and batched.
Prints the figures; asserts only that every utterance was decoded.

Runs at the suite's one torch thread: on these 2 shared cores, 2 intra-op threads made small-model
generation 10-30x slower (OpenMP oversubscription while other processes run)."""

import time

import pytest
import torch

from eval.runners.evaluate import decode_utterances
from training.data.splits import load_split
from training.inference import load_pipeline

pytestmark = pytest.mark.slow


def test_evaluation_decoding_throughput(tiny_corpus, tiny_model_dir):
    utterances, _ = load_split(tiny_corpus / "dataset", "test")
    recognizer = load_pipeline(str(tiny_model_dir), "cpu")
    audio_seconds = sum(u.seconds for u in utterances)
    decode_utterances(recognizer, utterances[:2], batch_size=2, desc="warm-up")
    results = {}
    for batch_size in (1, 16):
        start = time.perf_counter()
        decoded = decode_utterances(recognizer, utterances, batch_size=batch_size, desc=f"batch {batch_size}")
        wall = time.perf_counter() - start
        assert len(decoded.predictions) == len(utterances) and decoded.rejected == 0
        results[batch_size] = decoded
        print(
            f"\nevaluate decoding, batch {batch_size:2d}: {len(utterances)} utterances ({audio_seconds:.1f} s audio) "
            f"in {decoded.seconds:.2f} s decode / {wall:.2f} s wall: "
            f"{len(utterances) / decoded.seconds:.2f} utterances/s, RTF {decoded.seconds / audio_seconds:.4f} "
            f"({torch.get_num_threads()} torch threads)"
        )
    same = sum(a == b for a, b in zip(results[1].predictions, results[16].predictions))
    print(f"batched and unbatched transcripts identical for {same}/{len(utterances)} utterances")
