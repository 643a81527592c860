"""Streaming sessions (`model.stream`): partial transcripts while audio arrives, the final one equal to the offline
decoder's, settled words that never change, bad pushes refused clearly, long streams cut at pauses."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from modeling.generation_entropy_asr import DecodingOptionError, join_transcripts, pause_pieces
from modeling.processing_entropy_asr import AudioInputError
from tests.conftest import synth_clip
from tests.modeling.test_long_form import speech_with_pauses

SR = 16000
FAST = {"beam_size": 2, "max_new_tokens": 4}  # the untrained model's search kept short


def push_in_chunks(session, wave: np.ndarray, seconds: float, rate: int = SR) -> list[str]:
    step = int(seconds * rate)
    return [session.push(wave[i : i + step], rate) for i in range(0, wave.size, step)]


@pytest.mark.parametrize(
    "options", [FAST, {**FAST, "ctc_weight": 0.0}, {**FAST, "return_timestamps": "word"}]
)
def test_the_final_transcript_is_the_offline_decoders(tiny_model_and_processor, options):
    model, processor = tiny_model_and_processor
    clip = synth_clip(3.1, seed=2)
    session = model.stream(processor, chunk_seconds=0.64, **options)
    partials = push_in_chunks(session, clip, 0.3)
    offline = model.transcribe(clip, processor, **options)[0]
    assert session.finish() == offline["text"] and session.result == offline
    assert partials[0] == ""  # 0.3 s: nothing decoded yet
    assert [round(heard, 2) for heard, _ in session.decodes] == [0.9, 1.8, 2.7]  # every 0.64 s of new audio
    assert session.seconds == pytest.approx(3.1)


def test_a_natively_streaming_model_decodes_from_its_cached_encoder(streaming_model, monkeypatch):
    """A model with chunk-limited encoding and fixed feature statistics: the session encodes each piece of audio
    once (its `StreamingEncoder`), writes the partials a session re-encoding the segment at every decode writes, and
    ends with the offline decoder's transcript."""
    from modeling.encoder_entropy_asr import StreamingEncoder
    from modeling.generation_entropy_asr import PromptCache
    from modeling.streaming_entropy_asr import StreamingSession

    model, processor = streaming_model
    clip = synth_clip(3.1, seed=2)
    session = model.stream(processor, chunk_seconds=0.64, **FAST)
    assert isinstance(session._encoder, StreamingEncoder)
    partials = push_in_chunks(session, clip, 0.3)
    assert session._encoder.final_frames > 0  # the cached encoder did the decodes' encoding
    offline = model.transcribe(clip, processor, **FAST)[0]
    assert session.finish() == offline["text"] and session.result == offline
    # the LLM's keys and values of the prompt up to the final audio were kept between decodes
    stack = model.config.stack_factor
    held = session._prompt.ids
    assert held is not None and int((held == model.config.audio_token_id).sum()) == (
        session._encoder.final_states // stack
    )
    monkeypatch.setattr(PromptCache, "keep", lambda self, *args: None)  # nothing kept: the same partials
    uncached = model.stream(processor, chunk_seconds=0.64, **FAST)
    assert push_in_chunks(uncached, clip, 0.3) == partials and uncached._prompt.ids is None
    monkeypatch.setattr(StreamingSession, "_new_encoder", lambda self: None)
    again = model.stream(processor, chunk_seconds=0.64, **FAST)
    assert again._encoder is None and push_in_chunks(again, clip, 0.3) == partials


def scripted(monkeypatch, model, decodes: list[list[tuple[str, float]]], prefixes: list | None = None):
    """The decoder (`transcribe`, and `_transcribe_waves` that sessions call while streaming) replaced by one that
    returns the next scripted decode: (word, end time) pairs, each word 0.1 s long; the offline (final) decode is
    the last one. Returns the lengths (s) of the audio each call decoded; `prefixes` gets the settled text each
    streaming decode was asked to begin with."""
    heard: list[float] = []

    def fake(self, audio, processor, options=None, **changes):
        heard.append(round(audio[0].numel() / SR, 3))
        words = decodes[min(len(heard), len(decodes)) - 1]
        chunks = [{"text": w, "timestamp": (round(end - 0.1, 3), end)} for w, end in words]
        result = {"text": join_transcripts(w for w, _ in words)}
        return [{**result, "chunks": chunks} if options.return_timestamps else result]

    def fake_waves(self, waves, processor, options, encoded=None, prefixes_=None, prompt_cache=None):
        if prefixes is not None:
            prefixes.append(prefixes_)
        return fake(self, waves, processor, options)

    monkeypatch.setattr(type(model), "transcribe", fake)
    monkeypatch.setattr(type(model), "_transcribe_waves", fake_waves)
    return heard


def test_words_settle_once_two_decodes_agree_and_the_audio_has_moved_past_them(
    monkeypatch, tiny_model_and_processor
):
    model, processor = tiny_model_and_processor
    decodes = [
        [("call", 0.3), ("mary", 0.6)],  # 0.64 s heard: nothing to agree with yet
        [("call", 0.3), ("marie", 0.7), ("brown", 1.2)],  # 1.28 s: "call" agreed and 0.98 s behind the end
        [("fall", 0.3), ("marie", 0.7), ("brown", 1.25)],  # revises the settled "call": it stands
        [("call", 0.3), ("marie", 0.7), ("brown", 1.3), ("now", 2.4)],  # "marie brown" settle after it
        [("call", 0.3), ("marie", 0.7), ("brown", 1.3), ("now", 3.0)],  # "now" ends too close to 3.2 s
    ]
    prefixes = []
    heard = scripted(monkeypatch, model, decodes, prefixes)
    session = model.stream(processor, chunk_seconds=0.64)
    partials = push_in_chunks(session, synth_clip(3.2), 0.64)
    assert heard == [0.64, 1.28, 1.92, 2.56, 3.2]
    # each decode begins with the words settled before it (the search goes on after them)
    assert prefixes == [None, None, ["call"], ["call"], ["call"]]
    assert partials == [
        "call mary",
        "call marie brown",
        "call marie brown",  # the settled word kept, the decode's words after it
        "call marie brown now",
        "call marie brown now",
    ]
    assert session._settled == ["call", "marie", "brown"]
    assert session.finish() == "call marie brown now"  # the final decode of the whole recording


def test_silence_keeps_the_partial_empty(tiny_model_and_processor):
    """The model's gates decide: with a speech-confidence floor the untrained head never reaches, every decode of
    silence (and the final one) is empty."""
    model, processor = tiny_model_and_processor
    session = model.stream(processor, min_speech_confidence=0.5, **FAST)
    assert set(push_in_chunks(session, np.zeros(3 * SR, np.float32), 0.32)) == {""}
    assert len(session.decodes) == 4 and session.finish() == ""


def test_pushes_of_any_size_and_sample_type(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    clip = synth_clip(2.0, seed=4)
    pcm = np.round(clip * 20000).astype(np.int16)
    session = model.stream(processor, **FAST)
    assert session.push(pcm[:1]) == "" and session.decodes == []  # one sample: kept, nothing to decode
    session.push(pcm[1:], np.int64(SR))  # the rest at once (the rate a numpy int): one decode
    assert len(session.decodes) == 1
    as_float = model.stream(processor, **FAST)
    as_float.push(pcm.astype(np.float32) / 32768.0)
    assert session.finish() == as_float.finish() == model.transcribe(pcm, processor, **FAST)[0]["text"]
    # 10 s in one push; stereo (2, n) is mixed down
    long = model.stream(processor, **FAST)
    long.push(np.stack([synth_clip(10.0), synth_clip(10.0)]))
    assert long.seconds == pytest.approx(10.0) and len(long.decodes) == 1
    # another rate: kept at it, resampled as the offline decoder resamples the whole recording
    slow = model.stream(processor, **FAST)
    at_8k = synth_clip(2.0, seed=5, sr=8000)
    push_in_chunks(slow, at_8k, 0.25, rate=8000)
    whole = model.transcribe({"array": at_8k, "sampling_rate": 8000}, processor, **FAST)[0]["text"]
    assert slow.finish() == whole


def test_bad_pushes_and_options_get_clear_errors(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    session = model.stream(processor, **FAST)
    session.push(synth_clip(0.5), 16000)
    with pytest.raises(AudioInputError, match="at 16000 Hz; push every chunk at that rate"):
        session.push(synth_clip(0.5, sr=8000), 8000)
    with pytest.raises(AudioInputError, match="Invalid sampling rate"):
        session.push(synth_clip(0.5), 0)
    with pytest.raises(AudioInputError, match="Invalid sampling rate"):
        session.push(synth_clip(0.5), 16000.0)
    with pytest.raises(AudioInputError, match="Unsupported sample type"):
        session.push(np.zeros(100, np.int64))
    with pytest.raises(AudioInputError, match="NaN"):
        session.push(np.full(100, np.nan, np.float32))
    session.finish()
    with pytest.raises(RuntimeError, match="this stream is finished"):
        session.push(synth_clip(0.5))
    with pytest.raises(RuntimeError, match="already called"):
        session.finish()
    with pytest.raises(ValueError, match="chunk_seconds must be a positive number"):
        model.stream(processor, chunk_seconds=0)
    with pytest.raises(DecodingOptionError, match="beam_size"):
        model.stream(processor, beam_size=0)
    with pytest.raises(DecodingOptionError):  # a misspelt option, not silently ignored
        model.stream(processor, ctc_weigth=0.3)
    assert model.stream(processor).finish() == ""  # nothing pushed


def test_a_long_stream_is_cut_at_pauses_and_each_decode_stays_within_the_limit(tiny_model_and_processor):
    """The processor's limit lowered to 3 s: a 9.7 s stream is decoded in segments no longer than the limit plus a
    chunk, its pieces before the last final as soon as they are cut; the final transcript joins the pieces."""
    model, _ = tiny_model_and_processor
    processor = copy.copy(tiny_model_and_processor[1])
    processor.max_audio_seconds = 3.0
    wave, _ = speech_with_pauses([2.5, 2.0, 2.5], [0.7, 0.9])
    options = {**FAST, "ctc_weight": 0.0}
    session = model.stream(processor, chunk_seconds=0.5, **options)
    seen: list[float] = []
    transcribe = model.transcribe

    def recording(audio, processor, options=None, **changes):
        seen.append(audio[0].numel() / SR)
        return transcribe(audio, processor, options, **changes)

    model.transcribe = recording
    try:
        push_in_chunks(session, wave, 0.25)
        final = session.finish()
    finally:
        del model.transcribe
    assert max(seen) <= 3.0 + 0.5 + 1e-6
    assert len(session._done) >= 2 and session._done[1][0] == pytest.approx(
        2.95, abs=0.02
    )  # at the first pause
    done = join_transcripts(r["text"] for _, r in session._done)
    assert final == session.result["text"] and final.startswith(done)


def test_a_stream_is_cut_as_soon_as_speech_goes_on_after_a_pause(tiny_model_and_processor):
    """Two sentences with a pause, well under the limit: once the second begins, the first is final (decoded once
    more on its own) and the session decodes only the second; the final transcript is the offline decoder's,
    which cuts the recording at the same pause."""
    model, processor = tiny_model_and_processor
    wave, middles = speech_with_pauses([1.6, 1.4], [0.8])
    options = {**FAST, "ctc_weight": 0.0}
    session = model.stream(processor, chunk_seconds=0.32, **options)
    push_in_chunks(session, wave[: middles[0]], 0.32)
    assert session._done == []  # a pause at the end of what was heard is not a cut yet
    push_in_chunks(session, wave[middles[0] :], 0.32)
    assert len(session._done) == 1 and session._start == pytest.approx(middles[0] / SR, abs=0.2)
    assert max(heard for heard, _ in session.decodes) == pytest.approx(wave.size / SR, abs=0.33)
    offline = model.transcribe(wave, processor, **options)[0]
    assert session.finish() == offline["text"]
    (a, b), _ = pause_pieces(torch.from_numpy(wave), SR, processor.max_audio_seconds)
    assert session._done[0][1]["text"] == model.transcribe(wave[a:b], processor, **options)[0]["text"]


@pytest.mark.parametrize("ctc_weight", [0.3, 0.0])
def test_a_prompt_cache_gives_the_transcript_of_a_full_prefill(streaming_model, ctc_weight):
    """`PromptCache`: a decode keeps the prompt's keys and values up to its final audio; the next decode of the
    same (or longer) audio starts its prefill after them and writes what a full prefill writes."""
    from modeling.generation_entropy_asr import PromptCache

    model, processor = streaming_model
    wave = processor.prepare_audio({"array": synth_clip(2.5, seed=3), "sampling_rate": SR}, long_form=True)
    opts = model.decoding_options(None, **FAST, ctc_weight=ctc_weight)
    plain = model._transcribe_waves([wave], processor, opts)[0]
    cache = PromptCache()
    cache.final_audio = 5
    first = model._transcribe_waves([wave], processor, opts, prompt_cache=cache)[0]
    audio = int((cache.ids == model.config.audio_token_id).sum())
    assert first == plain and audio == 5 and cache.ids.numel() > 5
    held = cache.ids.numel()
    cache.final_audio = 8
    second = model._transcribe_waves([wave], processor, opts, prompt_cache=cache)[0]
    assert second == plain and cache.ids.numel() == held + 3
    with pytest.raises(ValueError, match="one clip"):
        model._transcribe_waves([wave, wave], processor, opts, prompt_cache=cache)
