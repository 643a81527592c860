"""CTC Viterbi forced alignment and the frame-labelling rule of method.md section 4.

`ctc_forced_align` (from the model's remote code, `modeling/alignment_entropy_asr.py`, which also turns a path
into word timestamps) finds the single most likely CTC path for a known target sequence (the model's own
phoneme head gives the log-probabilities) and returns, per frame, the index of the target token the frame
emits, or -1 for a blank frame. `frame_labels` turns that path into per-frame (phoneme, unit) labels:

- a frame emitting token k (including repeated emissions of k) takes token k's labels;
- a blank frame after the last emission of token k and before the first emission of token k+1 lies in
  token k's segment and takes token k's labels;
- leading blank frames (before token 0) and trailing blank frames (after the last emission of the last
  token) are dropped (`keep` is False for them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from modeling.alignment_entropy_asr import BLANK_FRAME, ctc_forced_align

__all__ = ["BLANK_FRAME", "FrameLabels", "align_frame_labels", "ctc_forced_align", "frame_labels"]


class FrameLabels(NamedTuple):
    """Per-frame labels of the kept frames, plus the (T,) keep mask and token index per kept frame."""

    phonemes: np.ndarray  # (M,) int64, M = keep.sum()
    units: np.ndarray  # (M,) int64
    keep: np.ndarray  # (T,) bool
    token_index: np.ndarray  # (M,) int64, index into targets


def frame_labels(
    path: list[int] | np.ndarray,
    targets: list[int] | np.ndarray,
    target_units: list[int] | np.ndarray,
) -> FrameLabels:
    """Label frames from a forced-alignment `path` (see the module docstring for the rule).

    path: (T,) target index per frame or -1 (blank), as returned by `ctc_forced_align`.
    targets: (L,) phoneme id per target token; target_units: (L,) semantic unit id (word or character
    index) per target token.
    """
    path = np.asarray(path, dtype=np.int64).reshape(-1)
    tgt = np.asarray(targets, dtype=np.int64).reshape(-1)
    units = np.asarray(target_units, dtype=np.int64).reshape(-1)
    if len(tgt) != len(units):
        raise ValueError(f"targets ({len(tgt)}) and target_units ({len(units)}) differ in length")
    if len(path) and (path.max() >= len(tgt) or path.min() < BLANK_FRAME):
        raise ValueError("path refers to a target index outside targets")
    emitted = path >= 0
    if not emitted.any():
        empty = np.zeros(0, dtype=np.int64)
        return FrameLabels(empty, empty, np.zeros(len(path), dtype=bool), empty)
    # carry the last emitted token index forward over blanks: blanks inside token k's segment -> k
    last = np.maximum.accumulate(np.where(emitted, np.arange(len(path)), -1))
    token = np.where(last >= 0, path[np.maximum(last, 0)], BLANK_FRAME)
    final_emit = np.flatnonzero(emitted)[-1]
    keep = (token >= 0) & ~(
        (np.arange(len(path)) > final_emit) & ~emitted
    )  # drop leading and trailing blanks
    token = token[keep]
    return FrameLabels(tgt[token], units[token], keep, token)


def align_frame_labels(
    log_probs: Any,
    targets: list[int] | np.ndarray,
    target_units: list[int] | np.ndarray,
    blank: int = 0,
) -> FrameLabels:
    """`ctc_forced_align` followed by `frame_labels` for one utterance."""
    return frame_labels(ctc_forced_align(log_probs, targets, blank=blank), targets, target_units)
