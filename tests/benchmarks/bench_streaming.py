"""Streaming (run by `make bench`): the demo's exported model through `model.stream` with its shipped options, the
first 60 English and 60 Mandarin test clips pushed 0.64 s at a time. Prints the figures the streaming issue asks
for: the final transcripts' error against the offline decoder's (the same by construction: `finish()` decodes the
whole recording once more), the error of the last partial before `finish()` (what a user reads while the final
pass runs), the compute per pushed chunk (median and p95), the time from `finish()` to the final transcript, and
the delay of the first partial after speech starts. It needs `make demo` to have run (ENTROPY_ASR_DEMO_DIR names
another checkout whose demo has)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests.benchmarks.bench_decoding import _clips, _rates, model_dir, needs_demo  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow
SR = 16000
CHUNK = 0.64


def speech_start(wave: np.ndarray, quiet_db: float = -35.0) -> float:
    """The first 10 ms frame within `quiet_db` of the clip's loud level (its 95th-percentile frame energy), in s."""
    frames = wave[: wave.size // 160 * 160].reshape(-1, 160)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.percentile(energy, 95)
    return float(np.argmax(energy > loud + quiet_db)) * 0.01


def _pipeline(folder, chunk_frames: int | None):
    """The exported model's pipeline; with `chunk_frames`, its encoder switched to chunk mode (the same weights:
    the shipped recipes pretrain with dynamic chunks), so that sessions encode each frame once."""
    from training.inference import load_pipeline

    torch.set_num_threads(2)
    pipe = load_pipeline(folder, "cpu")
    if chunk_frames:
        if pipe.processor.feature_stats is None:
            pytest.skip("this demo model normalises each clip by itself: it cannot stream natively")
        pipe.model.config.encoder_chunk_frames = chunk_frames
    return pipe


@needs_demo
@pytest.mark.parametrize("chunk_frames", [None, 16], ids=["offline-encoder", "encoder-in-640ms-chunks"])
def test_streaming_against_offline(model_dir, chunk_frames):  # noqa: F811
    pipe = _pipeline(model_dir, chunk_frames)
    model, processor = pipe.model, pipe.processor
    utterances = _clips("test", 60)
    waves = [processor.prepare_audio(u.audio).numpy() for u in utterances]
    offline = [r["text"] for r in pipe(waves, batch_size=16)]
    finals, lasts, per_chunk, to_final, first_delays, empty_first = [], [], [], [], [], 0
    step = int(CHUNK * SR)
    for wave in waves:
        session = model.stream(processor, chunk_seconds=CHUNK)
        first = None
        for at in range(0, wave.size, step):
            partial = session.push(wave[at : at + step], SR)
            if partial and first is None:
                first = min(at + step, wave.size) / SR
        lasts.append(session.partial)
        per_chunk += [took for _, took in session.decodes]
        start = time.perf_counter()
        finals.append(session.finish())
        to_final.append(time.perf_counter() - start)
        if first is None:
            empty_first += 1
        else:
            first_delays.append(first - speech_start(wave))
    same = sum(a == b for a, b in zip(finals, offline))
    rates, last_rates = _rates(finals, utterances), _rates(lasts, utterances)
    offline_rates = _rates(offline, utterances)
    seconds = np.mean([w.size / SR for w in waves])
    print(
        f"\n[bench_streaming] encoder chunk frames {chunk_frames} (None: full context; a session re-encodes the "
        f"segment at each decode), {len(waves)} test clips of {seconds:.1f} s on average, {CHUNK} s chunks, "
        f"{torch.get_num_threads()} threads: final transcripts equal to the offline decoder's on {same} of "
        f"{len(waves)}; WER en / CER zh offline {100 * offline_rates['en']:.2f}% / {100 * offline_rates['zh']:.2f}%, "
        f"streaming (final) {100 * rates['en']:.2f}% / {100 * rates['zh']:.2f}%, last partial before finish() "
        f"{100 * last_rates['en']:.2f}% / {100 * last_rates['zh']:.2f}%; compute per pushed chunk median "
        f"{1000 * np.median(per_chunk):.0f} ms, p95 {1000 * np.percentile(per_chunk, 95):.0f} ms "
        f"({len(per_chunk)} decodes); finish() to the final transcript median {1000 * np.median(to_final):.0f} ms, "
        f"p95 {1000 * np.percentile(to_final, 95):.0f} ms; first partial {np.median(first_delays):.2f} s after speech "
        f"starts (median; p95 {np.percentile(first_delays, 95):.2f} s; {empty_first} clips had no partial before "
        "finish())"
    )
    assert same == len(waves)
    assert (
        rates["en"] <= 1.15 * offline_rates["en"] + 1e-9 and rates["zh"] <= 1.15 * offline_rates["zh"] + 1e-9
    )


@needs_demo
@pytest.mark.parametrize("chunk_frames", [None, 16], ids=["offline-encoder", "encoder-in-640ms-chunks"])
def test_compute_per_chunk_along_a_long_stream(model_dir, chunk_frames):  # noqa: F811
    """Test clips joined with 0.4 s pauses into one stream of about 30 s, pushed 0.64 s at a time: the compute
    of each decode by where in the stream it falls (what a long dictation costs as it goes on)."""
    pipe = _pipeline(model_dir, chunk_frames)
    model, processor = pipe.model, pipe.processor
    pause = np.zeros(int(0.4 * SR), dtype=np.float32)
    pieces = []
    for u in _clips("test", 5):
        pieces += [processor.prepare_audio(u.audio).numpy(), pause]
    stream = np.concatenate(pieces)
    session = model.stream(processor, chunk_seconds=CHUNK)
    step = int(CHUNK * SR)
    for at in range(0, stream.size, step):
        session.push(stream[at : at + step], SR)
    session.finish()
    bands = {}
    for heard, took in session.decodes:
        bands.setdefault(int(heard // 10) * 10, []).append(took)
    print(
        f"\n[bench_streaming] one stream of {stream.size / SR:.1f} s, encoder chunk frames {chunk_frames}, "
        f"{CHUNK} s chunks, {torch.get_num_threads()} threads: compute per decode (median / max) by audio heard: "
        + "; ".join(
            f"{start}-{start + 10} s {1000 * np.median(t):.0f} / {1000 * max(t):.0f} ms ({len(t)})"
            for start, t in sorted(bands.items())
        )
    )
    assert session.result["text"]
