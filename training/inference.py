"""Transcription for the project's commands (`entropy-asr transcribe`, `evaluate`, the stages' calibration): the
model folder's own pipeline, `pipeline("automatic-speech-recognition", model=dir, trust_remote_code=True)`, which
decodes with the model's `transcribe` and its saved decoding options. Nothing here decodes by itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import pipeline

from training.data.splits import length_batches

logger = logging.getLogger(__name__)


def load_pipeline(model: str, device: str | None = None):
    """The model folder's (or Hub repo's) speech-recognition pipeline, with its remote code."""

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipeline("automatic-speech-recognition", model=str(model), trust_remote_code=True, device=device)


def transcribe_batches(
    pipe, waves: Sequence[torch.Tensor], batch_size: int = 16, **options: Any
) -> list[dict]:
    """The pipeline's results for clips already through `processor.prepare_audio`, in their order, decoded in
    batches of similar length."""
    results: list[dict | None] = [None] * len(waves)
    for batch in length_batches([len(w) for w in waves], batch_size):
        out = pipe([waves[i] for i in batch], batch_size=len(batch), **options)
        for i, result in zip(batch, out):
            results[i] = result
    return results
