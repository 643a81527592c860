"""Data augmentation for stages 1-5 (method.md section 3): SpecAugment, speed perturbation, and on a
fraction of samples silence padding (Beta-distributed length per side) followed by additive noise
(babble, vehicle, music, white, pink) at SNR ~ Normal(10 dB, 5 dB).

Every random choice draws from a `numpy.random.Generator` passed in by the caller; there is no global
RNG, so a seed reproduces an augmentation exactly. Waveforms are 16 kHz mono float32; the noise
generators return unit-RMS float32 noise that `add_noise` scales to the requested SNR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from scipy.signal import butter, resample_poly, sosfilt

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NOISE_KINDS = ("babble", "vehicle", "music", "white", "pink")


# ----------------------------------------------------------------------------------------------
# Feature-level
# ----------------------------------------------------------------------------------------------


def spec_augment(
    features: torch.Tensor,
    rng: np.random.Generator,
    num_freq_masks: int = 2,
    freq_width: int = 27,
    num_time_masks: int = 2,
    time_width_ratio: float = 0.05,
) -> torch.Tensor:
    """SpecAugment masking on (T, F) features, returning a masked copy.

    Each frequency mask has width ~ U{0..freq_width}, each time mask width ~ U{0..ratio*T}; masked
    cells are set to 0, which is the mean after global mean/variance normalisation (so apply this to
    normalised features). No time warping.
    """
    if features.dim() != 2:
        raise ValueError(f"spec_augment expects (T, F) features, got shape {tuple(features.shape)}")
    out = features.clone()
    num_frames, num_bins = out.shape
    for _ in range(num_freq_masks):
        width = int(rng.integers(0, min(freq_width, num_bins) + 1))
        start = int(rng.integers(0, num_bins - width + 1))
        out[:, start : start + width] = 0.0
    max_time = int(time_width_ratio * num_frames)
    for _ in range(num_time_masks):
        width = int(rng.integers(0, max_time + 1))
        start = int(rng.integers(0, num_frames - width + 1))
        out[start : start + width, :] = 0.0
    return out


# ----------------------------------------------------------------------------------------------
# Wave-level
# ----------------------------------------------------------------------------------------------


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Resample so the clip plays `factor` times faster (pitch moves with it, Kaldi-style)."""
    if factor == 1.0:
        return np.asarray(wave, dtype=np.float32)
    ratio = Fraction(factor).limit_denominator(100)
    # Playing faster by `factor` = resampling to 1/factor of the samples at the same rate.
    return resample_poly(wave, ratio.denominator, ratio.numerator).astype(np.float32)


def speed_perturb(
    wave: np.ndarray, rng: np.random.Generator, factors: Sequence[float] = (0.9, 1.0, 1.1)
) -> np.ndarray:
    """Speed perturbation with a factor drawn uniformly from `factors`."""
    return change_speed(wave, float(factors[int(rng.integers(len(factors)))]))


def sample_pad_lengths(
    rng: np.random.Generator, sr: int = SAMPLE_RATE, max_s: float = 1.0, a: float = 1.0, b: float = 3.0
) -> tuple[int, int]:
    """Leading and trailing silence in samples, each Beta(a, b) * max_s seconds."""
    lead, trail = rng.beta(a, b, size=2) * max_s * sr
    return int(round(lead)), int(round(trail))


def pad_silence(
    wave: np.ndarray,
    rng: np.random.Generator,
    sr: int = SAMPLE_RATE,
    max_s: float = 1.0,
    a: float = 1.0,
    b: float = 3.0,
) -> np.ndarray:
    """Pad digital silence before and after; each side ~ Beta(a, b) * max_s seconds."""
    lead, trail = sample_pad_lengths(rng, sr, max_s, a, b)
    return np.pad(np.asarray(wave, dtype=np.float32), (lead, trail))


def _unit_rms(noise: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(noise, dtype=np.float64)))) if noise.size else 0.0
    return (noise / rms).astype(np.float32) if rms > 0 else noise.astype(np.float32)


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise, unit RMS."""
    return _unit_rms(rng.standard_normal(n))


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f (pink) noise by spectral shaping of white noise, unit RMS."""
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    return _unit_rms(np.fft.irfft(spectrum / np.sqrt(freqs), n))


def vehicle_noise(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Cabin-like noise: low-passed brown noise (cut-off 150-400 Hz) plus a faint engine hum
    (fundamental 25-60 Hz with harmonics, slowly varying), unit RMS."""
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.linspace(brown[0], brown[-1], n)  # remove the random-walk drift
    cutoff = float(rng.uniform(150.0, 400.0))
    rumble = sosfilt(butter(4, cutoff, btype="low", fs=sr, output="sos"), brown)
    t = np.arange(n) / sr
    f0 = float(rng.uniform(25.0, 60.0))
    wobble = 1.0 + 0.02 * np.sin(2 * np.pi * float(rng.uniform(0.1, 0.5)) * t)
    hum = sum(np.sin(2 * np.pi * f0 * k * wobble * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
    rumble = _unit_rms(rumble)
    return _unit_rms(rumble + float(rng.uniform(0.1, 0.4)) * _unit_rms(hum))


def music_noise(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Synthetic music: a sequence of chords (3-4 notes from a random major/minor triad plus octave),
    each note with harmonics and an attack-decay envelope, at a random tempo; unit RMS."""
    out = np.zeros(n, dtype=np.float64)
    if n == 0:
        return out.astype(np.float32)
    note_len = int(sr * 60.0 / float(rng.uniform(70, 160)))  # one beat
    start = 0
    while start < n:
        length = min(note_len * int(rng.integers(1, 3)), n - start)
        root = int(rng.integers(45, 70))  # MIDI note number
        third = 4 if rng.random() < 0.5 else 3
        notes = [root, root + third, root + 7] + ([root + 12] if rng.random() < 0.5 else [])
        t = np.arange(length) / sr
        envelope = np.minimum(t / 0.01, 1.0) * np.exp(-t * float(rng.uniform(2.0, 6.0)))
        for note in notes:
            freq = 440.0 * 2 ** ((note - 69) / 12)
            for harmonic, gain in ((1, 1.0), (2, 0.4), (3, 0.2)):
                out[start : start + length] += gain * envelope * np.sin(2 * np.pi * freq * harmonic * t)
        start += length
    return _unit_rms(out)


def babble(others: Sequence[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Babble: the sum of 3-6 other utterances (drawn from `others`, with replacement if fewer),
    each looped to length n, randomly offset and normalised to unit RMS; unit RMS overall."""
    usable = [np.asarray(o, dtype=np.float32) for o in others if len(o) > 0 and np.any(o)]
    if not usable:
        raise ValueError("babble needs at least one non-silent utterance in `others`")
    out = np.zeros(n, dtype=np.float64)
    count = int(rng.integers(3, 7))
    picks = rng.choice(len(usable), size=count, replace=len(usable) < count)
    for pick in picks:
        talker = _unit_rms(usable[int(pick)])
        offset = int(rng.integers(0, len(talker)))
        out += np.resize(np.roll(talker, -offset), n)
    return _unit_rms(out)


def make_noise(
    kind: str,
    n: int,
    rng: np.random.Generator,
    others: Sequence[np.ndarray] | None = None,
    sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """Unit-RMS noise of a named kind (one of NOISE_KINDS)."""
    if kind == "babble":
        return babble(others or [], n, rng)
    if kind == "vehicle":
        return vehicle_noise(n, rng, sr)
    if kind == "music":
        return music_noise(n, rng, sr)
    if kind == "white":
        return white_noise(n, rng)
    if kind == "pink":
        return pink_noise(n, rng)
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")


def signal_power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


def add_noise(
    wave: np.ndarray, noise: np.ndarray, snr_db: float, silent_noise_rms: float = 0.03
) -> np.ndarray:
    """Mix `noise` (looped/cropped to the wave's length) into `wave` at exactly `snr_db`, with SNR
    defined on power over the whole clip. If the mixture would clip, both parts are scaled down
    together (the SNR is unchanged). A silent wave has no defined SNR: the noise is then added at
    RMS `silent_noise_rms`. A silent noise leaves the wave unchanged."""
    wave = np.asarray(wave, dtype=np.float32)
    noise = np.resize(np.asarray(noise, dtype=np.float64), wave.shape[0])
    p_noise = signal_power(noise)
    if p_noise == 0.0:
        return wave.copy()
    p_signal = signal_power(wave)
    if p_signal == 0.0:
        gain = silent_noise_rms / np.sqrt(p_noise)
    else:
        gain = np.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    mixed = wave.astype(np.float64) + gain * noise
    peak = float(np.max(np.abs(mixed)))
    if peak > 1.0:
        mixed /= peak
    return mixed.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Switches and parameters of the augmentation pipeline (defaults follow method.md section 3)."""

    speed_perturb: bool = True
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    spec_augment: bool = True
    num_freq_masks: int = 2
    freq_width: int = 27
    num_time_masks: int = 2
    time_width_ratio: float = 0.05
    noise_prob: float = 0.2
    snr_mean: float = 10.0
    snr_std: float = 5.0
    noise_kinds: list[str] = field(default_factory=lambda: ["babble", "vehicle", "music"])
    pad_silence: bool = True
    pad_max_s: float = 1.0
    pad_beta_a: float = 1.0
    pad_beta_b: float = 3.0
    sample_rate: int = SAMPLE_RATE
    # two_views: share the length-changing steps (speed, padding) so both views have equal frame
    # counts, as CR-CTC's frame-wise consistency loss requires.
    two_views_share_length: bool = True
    # Non-speech examples: with this probability a training example is replaced by `nonspeech_seconds` of
    # silence or noise (the noise kinds above, or white) at a random level, with an empty transcript, so the
    # model learns to end its turn at once when there is no speech (the hallucination probes).
    nonspeech_prob: float = 0.0
    nonspeech_seconds: tuple[float, float] = (0.5, 4.0)
    # Babble is mixed from other utterances: a training stage decodes this many of its training clips (seeded
    # draw) once as the talkers to mix. 0: no babble, even when "babble" is among `noise_kinds`.
    babble_talkers: int = 64

    def __post_init__(self) -> None:
        unknown = [k for k in self.noise_kinds if k not in NOISE_KINDS]
        if unknown:
            raise ValueError(f"unknown noise kinds {unknown}; expected a subset of {NOISE_KINDS}")
        for name in ("noise_prob", "nonspeech_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.babble_talkers < 0:
            raise ValueError(f"babble_talkers must be >= 0, got {self.babble_talkers}")

    @property
    def uses_babble(self) -> bool:
        """Whether babble can be drawn (as additive noise or as a non-speech clip) once talkers are given."""
        return (
            "babble" in self.noise_kinds
            and self.babble_talkers > 0
            and (self.noise_prob > 0 or self.nonspeech_prob > 0)
        )


class Augmenter:
    """Applies `AugmentConfig` to waveforms (`augment_wave`, `two_views`) and features (`augment_features`)."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()

    def _noise_kind(self, rng: np.random.Generator, others: Sequence[np.ndarray] | None) -> str | None:
        kinds = [k for k in self.config.noise_kinds if k != "babble" or others]
        if not kinds:
            return None
        return kinds[int(rng.integers(len(kinds)))]

    def _speed(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.config.speed_perturb:
            return speed_perturb(wave, rng, self.config.speed_factors)
        return np.asarray(wave, dtype=np.float32)

    def _pad(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        if not c.pad_silence:
            return wave
        return pad_silence(wave, rng, c.sample_rate, c.pad_max_s, c.pad_beta_a, c.pad_beta_b)

    def _add_noise(
        self, wave: np.ndarray, rng: np.random.Generator, others: Sequence[np.ndarray] | None
    ) -> np.ndarray:
        kind = self._noise_kind(rng, others)
        if kind is None:
            return wave
        snr = float(rng.normal(self.config.snr_mean, self.config.snr_std))
        noise = make_noise(kind, len(wave), rng, others, self.config.sample_rate)
        return add_noise(wave, noise, snr)

    def augment_wave(
        self, wave: np.ndarray, rng: np.random.Generator, others: Sequence[np.ndarray] | None = None
    ) -> np.ndarray:
        """Speed perturbation, then with probability `noise_prob`: pad silence and add noise.
        `others` (other utterances) enable babble noise; without them babble is not drawn."""
        wave = self._speed(wave, rng)
        if rng.random() < self.config.noise_prob:
            wave = self._add_noise(self._pad(wave, rng), rng, others)
        return wave

    def nonspeech(self, rng: np.random.Generator, others: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """A clip without speech: silence or one noise kind (white included), RMS 10^U(-3, -0.7)."""
        c = self.config
        lo, hi = c.nonspeech_seconds
        n = int(rng.uniform(lo, hi) * c.sample_rate)
        kinds = ["silence", "white", *[k for k in c.noise_kinds if k != "babble" or others]]
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "silence":
            return np.zeros(n, dtype=np.float32)
        noise = make_noise(kind, n, rng, others, c.sample_rate)
        return (noise * 10 ** rng.uniform(-3.0, -0.7)).astype(np.float32)

    def augment_features(self, features: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """SpecAugment on normalised (T, F) features when enabled; otherwise the input unchanged."""
        c = self.config
        if not c.spec_augment:
            return features
        return spec_augment(
            features, rng, c.num_freq_masks, c.freq_width, c.num_time_masks, c.time_width_ratio
        )

    def two_views(
        self,
        wave: np.ndarray,
        rng: np.random.Generator,
        others: Sequence[np.ndarray] | None = None,
        feature_fn: Callable[[np.ndarray], torch.Tensor] | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented views of one utterance, for CR-CTC.

        With `two_views_share_length` (default) the speed factor and the padding decision/lengths are
        drawn once, so both views have the same length; each view then draws its own noise (kind, SNR,
        realisation). With `feature_fn` (wave -> normalised (T, F) features) the views are returned as
        features with independent SpecAugment masks.
        """
        if self.config.two_views_share_length:
            base = self._speed(wave, rng)
            noisy = rng.random() < self.config.noise_prob
            if noisy:
                base = self._pad(base, rng)
                views = [self._add_noise(base, rng, others) for _ in range(2)]
            else:
                views = [base, base.copy()]
        else:
            views = [self.augment_wave(wave, rng, others) for _ in range(2)]
        if feature_fn is None:
            return views[0], views[1]
        feats = [self.augment_features(feature_fn(v), rng) for v in views]
        return feats[0], feats[1]
