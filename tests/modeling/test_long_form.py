"""Long-form audio: clips with pauses (several sentences, or longer than the processor's `max_audio_seconds`) are
cut at them, decoded in pieces and joined, with word timestamps from the start of the clip."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from modeling.generation_entropy_asr import LONG_FORM_BATCH, join_transcripts, pause_pieces
from modeling.processing_entropy_asr import AudioInputError
from tests.conftest import synth_clip

SR = 16000


def speech_with_pauses(
    talks: list[float], pauses: list[float], seed: int = 0
) -> tuple[np.ndarray, list[int]]:
    """Synthetic speech-like stretches of `talks` seconds with `pauses` seconds of faint noise between them, and
    the sample index of each pause's middle."""
    rng = np.random.default_rng(seed)
    parts, middles, at = [], [], 0
    for i, seconds in enumerate(talks):
        parts.append(synth_clip(seconds, seed=seed + i))
        at += parts[-1].size
        if i < len(pauses):
            n = int(pauses[i] * SR)
            parts.append((1e-4 * rng.standard_normal(n)).astype(np.float32))
            middles.append(at + n // 2)
            at += n
    return np.concatenate(parts), middles


def test_pieces_are_cut_at_every_long_enough_pause_keeping_a_little_of_it_on_each_side():
    wave, middles = speech_with_pauses([2.0, 1.5, 2.5, 1.0], [0.6, 0.2, 1.0])
    pieces = pause_pieces(torch.from_numpy(wave), SR, max_seconds=30.0, keep_seconds=0.2)
    assert pieces[0][0] == 0 and pieces[-1][1] == wave.size
    # the 0.6 s and 1.0 s pauses are cut, the 0.2 s one is not a pause; each side keeps 0.2 s of the pause
    assert len(pieces) == 3
    for (_, end), (start, _), middle, pause in zip(pieces, pieces[1:], [middles[0], middles[2]], [0.6, 1.0]):
        assert abs((middle - end) / SR - (pause / 2 - 0.2)) <= 0.02  # 10 ms frames
        assert abs((start - middle) / SR - (pause / 2 - 0.2)) <= 0.02
    # a pause shorter than twice the kept silence is cut in its middle, nothing left out
    halves = pause_pieces(torch.from_numpy(wave), SR, max_seconds=30.0, keep_seconds=0.6)
    assert all(a == b for (_, a), (b, _) in zip(halves, halves[1:]))
    assert abs(halves[1][0] - middles[0]) <= 0.02 * SR and abs(halves[2][0] - middles[2]) <= 0.02 * SR


def test_a_piece_longer_than_the_limit_is_cut_again_at_its_longest_shorter_pause():
    wave, middles = speech_with_pauses([2.0, 2.0, 2.0], [0.15, 0.25])  # 6.4 s, no pause of 0.3 s
    pieces = pause_pieces(torch.from_numpy(wave), SR, max_seconds=5.0)
    assert all(b - a <= 5.0 * SR for a, b in pieces)
    assert len(pieces) == 2 and abs(pieces[1][0] - middles[1]) <= 0.02 * SR  # the longer of the two
    # no quiet frame at all: cut at the quietest frame, once per excess, every piece within the limit
    talk = synth_clip(12.0, seed=3)
    pieces = pause_pieces(torch.from_numpy(talk), SR, max_seconds=5.0)
    assert len(pieces) >= 3 and all(b - a <= 5.0 * SR for a, b in pieces)
    assert pieces[0][0] == 0 and pieces[-1][1] == talk.size


@pytest.mark.parametrize(
    ("texts", "joined"),
    [
        (["hello there", "", " general kenobi "], "hello there general kenobi"),
        (["导航到", "人民广场"], "导航到人民广场"),
        (["打电话给", "mary brown"], "打电话给 mary brown"),
        (["play", "夏天的风"], "play 夏天的风"),
        ([], ""),
    ],
)
def test_join_transcripts_puts_a_space_between_pieces_but_not_between_hanzi(texts, joined):
    assert join_transcripts(texts) == joined


def fake_pieces(monkeypatch, model):
    """`_transcribe_waves` replaced by one that names each piece by its length and gives it one word spanning it
    (0.1 s in from each end): what the long-form join does with the pieces is then visible exactly."""
    calls: list[int] = []

    def fake(waves, processor, opts):
        calls.append(len(waves))
        out = []
        for w in waves:
            seconds = w.numel() / SR
            chunks = [{"text": f"w{w.numel()}", "timestamp": (0.1, round(seconds - 0.1, 3))}]
            out.append({"text": f"w{w.numel()}", "chunks": chunks, "phonemes": "P", "hotwords": ["x"]})
        return out

    monkeypatch.setattr(type(model), "_transcribe_waves", lambda self, *a: fake(*a))
    return calls


def test_ten_minutes_come_back_as_one_transcript_with_ordered_timestamps_over_the_whole_file(
    monkeypatch, tiny_model_and_processor, tiny_pipeline
):
    model, processor = tiny_model_and_processor
    rng = np.random.default_rng(1)
    talks = list(rng.uniform(1.5, 4.0, 200))
    wave, _ = speech_with_pauses(talks, list(rng.uniform(0.4, 1.2, 199)))
    assert wave.size / SR > 600
    calls = fake_pieces(monkeypatch, model)
    (result,) = model.transcribe(wave, processor, return_timestamps="word")
    pieces = pause_pieces(torch.from_numpy(wave), SR, processor.max_audio_seconds)
    assert len(pieces) == 200  # one per stretch: every pause is long enough
    assert calls == [LONG_FORM_BATCH] * (200 // LONG_FORM_BATCH) + (
        [200 % LONG_FORM_BATCH] if 200 % 8 else []
    )
    assert result["text"] == " ".join(f"w{b - a}" for a, b in pieces)
    stamps = [c["timestamp"] for c in result["chunks"]]
    assert len(stamps) == 200
    for (start, end), (a, b) in zip(stamps, pieces):  # each word where its piece lies in the file
        assert start == pytest.approx(a / SR + 0.1, abs=1e-3) and end == pytest.approx(b / SR - 0.1, abs=1e-3)
    assert all(s1 < e1 <= s2 for (s1, e1), (s2, _) in zip(stamps, stamps[1:]))
    assert stamps[0][0] < 1.0 and stamps[-1][1] > wave.size / SR - 1.0
    assert all(b <= c for (_, b), (c, _) in zip(pieces, pieces[1:]))  # in order, none overlapping
    assert result["hotwords"] == ["x"] and result["phonemes"] == " ".join(["P"] * 200)
    # the pipeline takes it too
    piped = tiny_pipeline({"array": wave, "sampling_rate": SR}, return_timestamps="word")
    assert piped == result


def test_a_short_clip_is_decoded_whole_and_a_long_one_beside_it_in_pieces(
    monkeypatch, tiny_model_and_processor
):
    model, processor = tiny_model_and_processor
    calls = fake_pieces(monkeypatch, model)
    limit = processor.max_audio_seconds
    long, _ = speech_with_pauses([0.8 * limit, 0.6 * limit], [0.8])
    short = synth_clip(2.0)
    results = model.transcribe([short, long], processor)
    assert calls == [1, 2]  # the short clip alone, then the long one's two pieces together
    assert results[0]["text"] == f"w{short.size}" and len(results[1]["text"].split()) == 2


def test_a_clip_within_the_limit_is_cut_at_its_pauses_too(monkeypatch, tiny_model_and_processor):
    """Several sentences under the limit are decoded one by one (the model was trained on single utterances:
    decoded as one clip, the demo's model wrote 51% WER on such recordings, 4.2% in pieces); a pause-free clip
    beside them stays whole, and a stretch too short to hold a pause is never cut."""
    model, processor = tiny_model_and_processor
    calls = fake_pieces(monkeypatch, model)
    sentences, _ = speech_with_pauses([1.5, 1.0, 1.2], [0.6, 0.8])
    assert sentences.size / SR < processor.max_audio_seconds
    short = synth_clip(2.0)
    results = model.transcribe([short, sentences], processor)
    assert calls == [1, 3]  # the pause-free clip, then the three sentences together
    pieces = pause_pieces(torch.from_numpy(sentences), SR, processor.max_audio_seconds)
    assert results[1]["text"] == " ".join(f"w{b - a}" for a, b in pieces) and len(pieces) == 3
    assert results[0]["text"] == f"w{short.size}"
    assert pause_pieces(torch.zeros(100), SR, 30.0) == [(0, 100)]


def test_long_audio_through_the_pipeline_decodes_each_piece_as_a_clip_of_its_own(tiny_pipeline):
    """Real decoding, the limit lowered to 3 s on a copy of the processor: a 9.7 s clip's transcript is the join
    of its pieces' transcripts decoded one by one, and its word timestamps are theirs shifted to the piece."""
    processor = copy.copy(tiny_pipeline.processor)
    processor.max_audio_seconds = 3.0
    model = tiny_pipeline.model
    wave, _ = speech_with_pauses([2.5, 2.0, 2.5], [0.7, 0.9])
    options = {"ctc_weight": 0.0, "max_new_tokens": 3, "return_timestamps": "word"}
    (whole,) = model.transcribe(wave, processor, **options)
    pieces = pause_pieces(torch.from_numpy(wave), SR, 3.0)
    assert len(pieces) == 3
    alone = [model.transcribe(wave[a:b], processor, **options)[0] for a, b in pieces]
    assert whole["text"] == join_transcripts(r["text"] for r in alone)
    shifted = [
        tuple(None if t is None else round(t + a / SR, 3) for t in c["timestamp"])
        for r, (a, _) in zip(alone, pieces)
        for c in r["chunks"]
    ]
    assert [c["timestamp"] for c in whole["chunks"]] == shifted
    with pytest.raises(AudioInputError, match="the limit is 3 s for one clip"):
        processor.prepare_audio(wave)  # one clip for training features: still limited
