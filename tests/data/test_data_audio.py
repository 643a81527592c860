"""load_audio: formats, sample rates, channel layouts, dtypes and errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from training.data.audio import AudioDecodeError, encode_audio, load_audio, resample, to_float32


def _tone(sr: int, seconds: float = 1.0, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, sr: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "MP3"])
@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_decode_formats_and_rates_to_16k_mono(tmp_path, fmt, sr):
    path = tmp_path / f"tone_{sr}.{fmt.lower()}"
    sf.write(path, _tone(sr, seconds=1.5), sr, format=fmt)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 24000) <= 0.01 * 24000
    assert abs(_peak_hz(wave) - 440.0) < 5.0
    assert 0.3 < np.abs(wave).max() <= 1.0


def test_stereo_file_is_averaged(tmp_path):
    left, right = np.full(16000, 0.5, np.float32), np.full(16000, 0.1, np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.shape == (16000,)
    np.testing.assert_allclose(wave, 0.3, atol=1e-6)


def test_channels_first_array_is_downmixed():
    stereo = np.stack([_tone(16000), -_tone(16000)])  # (channels, frames): opposite phases cancel
    np.testing.assert_allclose(load_audio(stereo, sampling_rate=16000), 0.0, atol=1e-7)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([32767, -32768, 0], dtype=np.int16), [32767 / 32768, -1.0, 0.0]),
        (np.array([2**31 - 1, -(2**31)], dtype=np.int32), [1.0, -1.0]),
        (np.array([0.25, -0.5], dtype=np.float64), [0.25, -0.5]),
    ],
)
def test_integer_and_float64_conversion(array, expected):
    out = to_float32(array)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert load_audio(array, sampling_rate=16000).dtype == np.float32


@pytest.mark.parametrize(("sr", "n"), [(8000, 8000), (22050, 22050), (48000, 1), (16000, 0)])
def test_array_resampling_length(sr, n):
    out = load_audio(np.zeros(n, np.float32), sampling_rate=sr)
    assert len(out) == int(np.ceil(n * 16000 / sr))


def test_bytes_and_hf_dict_inputs():
    data = encode_audio(_tone(16000), 16000, fmt="FLAC")
    from_bytes = load_audio(data)
    from_dict = load_audio({"bytes": data, "path": "x.flac"})
    from_array_dict = load_audio({"array": _tone(8000), "sampling_rate": 8000})
    np.testing.assert_array_equal(from_bytes, from_dict)
    assert len(from_bytes) == 16000 and len(from_array_dict) == 16000
    assert np.abs(from_bytes - _tone(16000)).max() < 1e-3  # 16-bit quantisation only


def test_resample_identity_and_ratio():
    x = _tone(22050)
    assert resample(x, 16000, 16000) is not None and np.array_equal(resample(x, 16000, 16000), x)
    assert len(resample(x, 22050, 16000)) == 16000
    assert len(resample(x[:1001], 22050, 16000)) == 727  # ceil(1001 * 16000 / 22050)


def test_resampling_keeps_the_band_and_removes_what_lies_above_the_new_nyquist():
    t = np.arange(48000) / 48000
    kept, aliased = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 12000 * t)  # 12 kHz > 8 kHz Nyquist
    out = resample((0.5 * kept + 0.5 * aliased).astype(np.float32), 48000, 16000)
    spectrum = np.abs(np.fft.rfft(out[1000:-1000] * np.hanning(len(out) - 2000)))
    freqs = np.fft.rfftfreq(len(out) - 2000, 1 / 16000)
    assert abs(freqs[spectrum.argmax()] - 1000) < 5
    alias = spectrum[np.abs(freqs - 4000) < 20].max()  # where 12 kHz would fold to
    assert alias < 1e-3 * spectrum.max()
    target = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(out[1000:-1000] - target[1000:-1000]).max() < 1e-2


def test_corrupt_and_missing_files_raise_naming_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF" + b"\x00garbage" * 20)
    with pytest.raises(AudioDecodeError, match="broken.wav"):
        load_audio(bad)
    with pytest.raises(AudioDecodeError, match="nowhere.flac"):
        load_audio(tmp_path / "nowhere.flac")
    with pytest.raises(AudioDecodeError, match="bad.mp3"):
        load_audio({"bytes": b"not audio at all", "path": "bad.mp3"})
    assert issubclass(AudioDecodeError, ValueError)


def test_encode_audio_wav_roundtrip():
    data = encode_audio(_tone(16000), fmt="WAV")
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
