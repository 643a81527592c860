"""Audio decoding for every data path in entropy-asr.

Everything the models see goes through `load_audio`: files (WAV/FLAC/MP3 and anything else
libsndfile reads), raw encoded bytes, Hugging Face `Audio(decode=False)` dicts, or in-memory arrays
are turned into 16 kHz mono float32 in [-1, 1]. Decoding and resampling go through librosa (`librosa.load`
reads with soundfile, so the data layer needs no FFmpeg or torchcodec; `librosa.resample` with soxr's high
quality filter).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

TARGET_SR = 16000

AudioInput = str | os.PathLike | bytes | np.ndarray | dict


class AudioDecodeError(ValueError):
    """Raised when an audio file or buffer cannot be decoded; the message names the source."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes of encoded audio>"
    if isinstance(source, dict):
        return str(source.get("path") or "<in-memory audio dict>")
    return f"<{type(source).__name__}>"


def to_float32(array: np.ndarray) -> np.ndarray:
    """Convert integer PCM (int16/int32/uint8) or float64 samples to float32 in [-1, 1]."""
    array = np.asarray(array)
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if array.dtype == np.int32:
        return (array.astype(np.float64) / 2147483648.0).astype(np.float32)
    if array.dtype == np.uint8:  # 8-bit WAV is unsigned with an offset of 128
        return (array.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return (array.astype(np.float64) / float(max(abs(info.min), info.max))).astype(np.float32)
    return array.astype(np.float32, copy=False)


def to_mono(array: np.ndarray) -> np.ndarray:
    """Average channels. 2-D input is (frames, channels) as soundfile returns it; an input whose first
    axis is small (<= 8) and shorter than the second is taken as (channels, frames) (torch layout)."""
    if array.ndim == 1:
        return array
    if array.ndim != 2:
        raise ValueError(f"audio must be 1-D or 2-D, got shape {array.shape}")
    if array.shape[0] <= 8 and array.shape[0] < array.shape[1]:
        array = array.T
    return array.mean(axis=1, dtype=np.float64).astype(array.dtype)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = TARGET_SR) -> np.ndarray:
    """`librosa.resample` with soxr's high-quality filter; output length is ceil(n * target / orig)."""
    if orig_sr == target_sr or wave.size == 0:
        return wave.astype(np.float32, copy=False)
    out = librosa.resample(wave, orig_sr=int(orig_sr), target_sr=int(target_sr), res_type="soxr_hq")
    return out.astype(np.float32, copy=False)


def _read(source: str | os.PathLike | bytes) -> tuple[np.ndarray, int]:
    """Samples at the file's own rate, (channels, frames) when it has several channels."""
    try:  # a file object, not a path: librosa reads it with soundfile, never falling back to audioread (deprecated)
        with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as f:
            data, sr = librosa.load(f, sr=None, mono=False)
    except Exception as err:  # soundfile raises LibsndfileError/RuntimeError/TypeError by backend
        raise AudioDecodeError(f"cannot decode audio {_describe(source)}: {err}") from err
    return data, int(sr)


def load_audio(
    path_or_array: AudioInput,
    sampling_rate: int | None = None,
    target_sr: int = TARGET_SR,
) -> np.ndarray:
    """Decode/convert audio to mono float32 at `target_sr` (16 kHz by default).

    Accepts a file path, encoded bytes, a Hugging Face audio dict (`{"bytes", "path"}` from
    `Audio(decode=False)` or `{"array", "sampling_rate"}`), or an array with its `sampling_rate`
    (an array without one is assumed to be at `target_sr` already). Raises `AudioDecodeError`
    naming the source when decoding fails.
    """
    source = path_or_array
    if isinstance(source, dict):
        if source.get("array") is not None:
            sampling_rate = int(source.get("sampling_rate") or sampling_rate or target_sr)
            source = np.asarray(source["array"])
        elif source.get("bytes") is not None:
            try:
                data, sampling_rate = _read(source["bytes"])
            except AudioDecodeError as err:
                raise AudioDecodeError(f"cannot decode audio {_describe(source)}: {err.__cause__}") from err
            source = data
        elif source.get("path"):
            source = source["path"]
        else:
            raise AudioDecodeError(f"audio dict has neither array, bytes nor path: keys {sorted(source)}")
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise AudioDecodeError(f"cannot decode audio {source}: file not found")
        source, sampling_rate = _read(source)
    elif isinstance(source, bytes):
        source, sampling_rate = _read(source)
    if not isinstance(source, np.ndarray):
        source = np.asarray(source)
    if sampling_rate is None:
        sampling_rate = target_sr
    wave = to_mono(to_float32(source))
    wave = resample(wave, int(sampling_rate), target_sr)
    if not np.all(np.isfinite(wave)):
        raise AudioDecodeError(f"audio {_describe(path_or_array)} contains NaN or Inf samples")
    return np.ascontiguousarray(wave, dtype=np.float32)


def encode_audio(wave: np.ndarray, sampling_rate: int = TARGET_SR, fmt: str = "FLAC") -> bytes:
    """Encode a float waveform as 16-bit PCM in `fmt` (FLAC or WAV) and return the bytes."""
    buf = io.BytesIO()
    clipped = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    sf.write(buf, clipped, sampling_rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()
