"""Evaluation splits as decoded clips: `Utterance` rows of a split (an evenly spaced subset keeps both languages
of a split stored in language order), the clips a processor accepts, and batches of similar length. Used by the
evaluation runners, the demo and the no-speech calibration."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data.audio import TARGET_SR
from training.data.loading import SkipCounter, SpeechDataset, load_speech_dataset

logger = logging.getLogger(__name__)


@dataclass
class Utterance:
    """One decoded evaluation row."""

    id: str
    audio: np.ndarray  # (n,) float32 mono at TARGET_SR (16 kHz)
    text: str
    language: str | None
    index: int  # row index in the split
    hotwords: list[str] = field(default_factory=list)  # the row's `entities` (names the transcript mentions)
    phonemes: str | list[str] | None = None  # the row's `phonemes` column (space-separated or a list), if any

    @property
    def seconds(self) -> float:
        return len(self.audio) / TARGET_SR


def subset_indices(n_rows: int, max_utterances: int | None) -> list[int]:
    """All rows, or `max_utterances` evenly spaced rows (first and last included): a split stored in
    language order (all English, then all Mandarin) keeps both languages in a small subset."""
    if max_utterances is None or max_utterances >= n_rows:
        return list(range(n_rows))
    if max_utterances <= 0:
        raise ValueError(f"max_utterances must be positive, got {max_utterances}")
    if max_utterances == 1:
        return [0]
    return sorted({round(i * (n_rows - 1) / (max_utterances - 1)) for i in range(max_utterances)})


def load_split(
    data: str | Path,
    split: str,
    max_utterances: int | None = None,
    allow_empty: bool = False,
) -> tuple[list[Utterance], SkipCounter]:
    """Decoded rows of one split (an evenly spaced subset with `max_utterances`); undecodable rows and,
    unless `allow_empty`, rows with an empty transcript are skipped and counted (SpeechDataset)."""
    ds = load_speech_dataset(data, split=split)
    ds = ds.select(subset_indices(len(ds), max_utterances))
    speech = SpeechDataset(ds, allow_empty=allow_empty)
    utterances = [
        Utterance(
            id=str(row.get("id") or f"{split}-{row['index']:05d}"),
            audio=np.asarray(row["audio"], dtype=np.float32),
            text=row["text"],
            language=row.get("language"),
            index=int(row["index"]),
            hotwords=[w for w in (row.get("entities") or []) if w],
            phonemes=row.get("phonemes") or None,
        )
        for row in speech
    ]
    return utterances, speech.counter


def usable_utterances(processor: Any, utterances: Sequence[Utterance]) -> tuple[list[Utterance], int]:
    """The utterances whose audio the processor accepts (length limits), and how many it rejected."""
    usable, rejected = [], 0
    for utt in utterances:
        try:
            processor.prepare_audio(utt.audio)
        except ValueError as err:  # AudioInputError
            logger.warning("skipping %s: %s", utt.id, err)
            rejected += 1
            continue
        usable.append(utt)
    return usable, rejected


def dataset_splits(data: str | Path) -> list[str]:
    """Split names of a dataset (one unnamed split counts as "train", as `load_speech_dataset` treats it)."""
    loaded = load_speech_dataset(data)
    return list(loaded) if hasattr(loaded, "keys") else ["train"]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of `lengths` in batches of `batch_size`, shortest first (similar lengths together: less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
