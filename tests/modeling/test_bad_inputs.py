"""Every kind of bad input gets its specific, readable error (or is handled correctly)."""

import numpy as np
import pytest
import torch

from modeling import AudioInputError
from tests.conftest import synth_clip


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros(100, dtype=np.float32), "shorter than one audio frame"),
        (np.full(300, 0.1, dtype=np.float32), "shorter than one audio frame"),
        (np.array([0.1, np.nan] * 8000, dtype=np.float32), "NaN or infinite"),
        (np.array([0.1, np.inf] * 8000, dtype=np.float32), "NaN or infinite"),
        (np.zeros((2, 2, 100), dtype=np.float32), "must be 1-D"),
        (np.zeros(16000, dtype=np.int8), "Unsupported sample type"),
        (np.zeros(16000 * 21, dtype=np.float32), "limit is 20 s"),
        (None, "No audio"),
    ],
)
def test_bad_audio(tiny_model_and_processor, audio, message):
    _, processor = tiny_model_and_processor
    with pytest.raises(AudioInputError, match=message):
        processor(audio=[audio] if audio is not None else [None])


def test_corrupt_file(tiny_model_and_processor, tmp_path):
    _, processor = tiny_model_and_processor
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(AudioInputError, match="Could not decode audio file"):
        processor(audio=str(bad))
    # a path that does not exist says so (transformers' loader would read it as a URL or base64 data)
    with pytest.raises(AudioInputError, match="No such audio file: 'missing.wav'"):
        processor(audio="missing.wav")


def test_sample_formats_and_channels_are_converted(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    ref = synth_clip(1.0)
    pcm16 = np.round(ref * 32767).astype(np.int16)
    pcm32 = (ref.astype(np.float64) * 2147483647).astype(np.int32)
    for variant in (
        pcm16,
        pcm32,
        ref.astype(np.float64),
        np.stack([ref, ref]),
        np.stack([ref, ref], axis=1),
        torch.from_numpy(ref),
    ):
        wave = processor.prepare_audio(variant)
        assert wave.dtype == torch.float32 and wave.shape == (16000,)
        assert torch.allclose(wave, torch.from_numpy(ref), atol=1e-4)


def test_wrong_sampling_rate_is_resampled(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    sr = 8000
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    wave = processor.prepare_audio(tone, sampling_rate=sr)
    assert wave.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins over one second
    with pytest.raises(AudioInputError, match="Invalid sampling rate"):
        processor.prepare_audio(tone, sampling_rate=-1)


@pytest.mark.parametrize("text, found", [("Transcribe this.", 0), ("<speech> and <speech>", 2)])
def test_placeholder_count(tiny_model_and_processor, text, found):
    _, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match=f"exactly one '<speech>' placeholder; found {found}"):
        processor(audio=synth_clip(1.0), text=text)


def test_mismatched_batch_sizes(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match="2 transcript entries for 3 audio clips"):
        processor(audio=[synth_clip(1.0)] * 3, transcript=["a", "b"])
    with pytest.raises(ValueError, match="Empty batch"):
        processor(audio=[])


def test_very_different_lengths_in_one_batch(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    clips = [synth_clip(0.2), synth_clip(12.0, 1)]
    inputs = processor(audio=clips)
    counts = (inputs["input_ids"] == model.config.audio_token_id).sum(-1).tolist()
    assert counts == [processor.num_audio_tokens(c.size) for c in clips] == [2, 75]
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.logits).all()
