"""Clips with known word boundaries, for measuring word timestamps.

Each word (English; the article "a" together with the word after it) or short run of 1-2 Hanzi (Mandarin) of a
sentence is synthesized on its own with espeak-ng in the sentence's speaker (the corpus voices; Mandarin read
from tone-numbered pinyin), resampled to 16 kHz, and trimmed of its leading and trailing silence (every sample
below 1% of the piece's peak, -40 dB); the pieces are joined with silences of known length, so each piece's true
start and end are known to the sample. A gap may be zero (the pieces abut, as in connected speech), which makes
the boundary between them known as well. Caveat: a word said on its own is longer than in running speech
(phrase-final lengthening), which makes the ends before a pause harder to place than in connected speech.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
TRIM_DB = (
    -40.0
)  # a piece starts at its first sample above this level relative to its peak and ends after its last
_SPEAKER_RE = re.compile(r"^(?P<voice>.+)-p(?P<pitch>\d+)-s(?P<speed>\d+)$")


@dataclass
class TimedClip:
    """A clip, its transcript, and the true (start, end) in seconds of each piece that was synthesized."""

    audio: np.ndarray  # (n,) float32 at 16 kHz
    text: str  # the transcript: English pieces joined by spaces, Mandarin pieces joined without
    language: str
    pieces: list[str]
    spans: list[tuple[float, float]]  # per piece
    piece_units: list[
        list[int]
    ]  # per piece, the indices of its units in `training.data.g2p.split_units(text)`

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@lru_cache(maxsize=1)
def _engine():
    """One synthesizer per process (libespeak-ng cannot be reset in place; what it says is deterministic given
    what it said before, so a fixed order of calls gives the same clips)."""
    from training.data.corpus import Espeak

    return Espeak()


def speak(text: str, language: str, speaker: str) -> np.ndarray:
    """`text` (English, or Hanzi read from pinyin) in the corpus speaker `speaker` ('voice+variant-pP-sS'),
    16 kHz float32, untrimmed."""
    from training.data.audio import resample
    from training.data.corpus import tts_input

    match = _SPEAKER_RE.match(speaker)
    if match is None:
        raise ValueError(f"speaker {speaker!r} is not 'voice+variant-pPITCH-sSPEED'")
    engine = _engine()
    wave = engine.say(tts_input(text, language), match["voice"], int(match["pitch"]), int(match["speed"]))
    return resample(wave, engine.sample_rate, SAMPLE_RATE)


def trim(wave: np.ndarray, db: float = TRIM_DB) -> np.ndarray:
    """`wave` from its first to its last sample whose magnitude reaches `db` relative to the peak."""
    loud = np.flatnonzero(np.abs(wave) >= np.abs(wave).max() * 10 ** (db / 20))
    return wave[loud[0] : loud[-1] + 1]


def split_pieces(text: str, language: str, rng: np.random.Generator) -> list[str]:
    """English: the words, the article "a" joined to the next (espeak-ng reads a lone "a" as the letter's name).
    Mandarin: runs of 1 or 2 consecutive Hanzi (drawn at random)."""
    if language == "en":
        pieces: list[str] = []
        for word in text.split():
            if pieces and pieces[-1] == "a":
                pieces[-1] = f"a {word}"
            else:
                pieces.append(word)
        return pieces
    chars, pieces = list(text.replace(" ", "")), []
    while chars:
        size = min(len(chars), int(rng.integers(1, 3)))
        pieces.append("".join(chars[:size]))
        chars = chars[size:]
    return pieces


def make_timed_clip(
    pieces: list[str],
    language: str,
    speaker: str,
    gaps: list[float],
    edges: tuple[float, float] = (0.2, 0.2),
) -> TimedClip:
    """`pieces` synthesized one at a time, trimmed, joined with `gaps[i]` seconds of silence after piece i
    (len(pieces) - 1 gaps), with `edges` seconds of silence before the first and after the last; the clip is
    scaled to a peak of 0.9 like the corpus."""
    from modeling.phonemizer_entropy_asr import split_units

    if len(gaps) != len(pieces) - 1:
        raise ValueError(f"{len(pieces)} pieces need {len(pieces) - 1} gaps, got {len(gaps)}")
    silence = [edges[0], *gaps, edges[1]]
    parts, spans, at = [], [], 0
    for i, piece in enumerate(pieces):
        quiet = np.zeros(int(round(silence[i] * SAMPLE_RATE)), np.float32)
        word = trim(speak(piece, language, speaker))
        parts += [quiet, word]
        at += len(quiet)
        spans.append((at / SAMPLE_RATE, (at + len(word)) / SAMPLE_RATE))
        at += len(word)
    parts.append(np.zeros(int(round(silence[-1] * SAMPLE_RATE)), np.float32))
    audio = np.concatenate(parts)
    audio = (audio * (0.9 / np.abs(audio).max())).astype(np.float32)
    text = (" " if language == "en" else "").join(pieces)
    piece_units, next_unit = [], 0
    for piece in pieces:
        count = len(split_units(piece))
        piece_units.append(list(range(next_unit, next_unit + count)))
        next_unit += count
    if next_unit != len(split_units(text)):
        raise ValueError(f"the pieces of {text!r} do not split into whole units")
    return TimedClip(audio, text, language, list(pieces), spans, piece_units)


def random_timed_clip(
    text: str,
    language: str,
    speaker: str,
    rng: np.random.Generator,
    gap_range: tuple[float, float] = (0.1, 0.6),
    abut: float = 0.2,
) -> TimedClip:
    """The sentence `text` as a timed clip: gaps drawn uniformly from `gap_range` seconds, or zero (abutting
    pieces) with probability `abut`; 0.1-0.4 s of silence before and after."""
    pieces = split_pieces(text, language, rng)
    gaps = [0.0 if rng.random() < abut else float(rng.uniform(*gap_range)) for _ in pieces[1:]]
    edges = (float(rng.uniform(0.1, 0.4)), float(rng.uniform(0.1, 0.4)))
    return make_timed_clip(pieces, language, speaker, gaps, edges)
