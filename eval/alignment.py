"""CTC Viterbi forced alignment and the frame-labelling rule of method.md section 4.

`ctc_forced_align` finds the single most likely CTC path for a known target sequence (the model's own
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
import torch

BLANK_FRAME = -1


def _log_probs_array(log_probs: Any) -> np.ndarray:
    if isinstance(log_probs, torch.Tensor):
        log_probs = log_probs.detach().float().cpu().numpy()
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (T, V), got shape {lp.shape}")
    return lp


def ctc_forced_align(log_probs: Any, targets: list[int] | np.ndarray, blank: int = 0) -> list[int]:
    """Viterbi CTC alignment of `targets` to frame log-probabilities `log_probs` (T, V).

    Returns a list of length T: for each frame the index (0..L-1) of the target token it emits, or -1 if
    the frame is a blank. Consecutive equal targets need a blank frame between them, so T must be at least
    L + (number of adjacent repeats); a shorter T, a target equal to `blank` or out of the vocabulary, or
    a target sequence with zero probability raises ValueError. Dynamic programming over frames, vectorised
    over the 2L+1 extended states (O(T L) time, O(T L) int8 back-pointers).
    """
    lp = _log_probs_array(log_probs)
    n_frames, vocab = lp.shape
    tgt = np.asarray(targets, dtype=np.int64).reshape(-1)
    n_tok = len(tgt)
    if n_tok == 0:
        return [BLANK_FRAME] * n_frames
    if (tgt == blank).any():
        raise ValueError(f"targets contain the blank id {blank}")
    if tgt.min() < 0 or tgt.max() >= vocab:
        raise ValueError(f"target ids must lie in [0, {vocab}), got range [{tgt.min()}, {tgt.max()}]")
    repeats = int((tgt[1:] == tgt[:-1]).sum())
    if n_frames < n_tok + repeats:
        raise ValueError(
            f"cannot align {n_tok} targets ({repeats} adjacent repeats need a blank between) "
            f"to {n_frames} frames: need at least {n_tok + repeats}"
        )

    # extended sequence: blank, t0, blank, t1, ..., t_{L-1}, blank  (S = 2L + 1 states)
    n_states = 2 * n_tok + 1
    ext = np.full(n_states, blank, dtype=np.int64)
    ext[1::2] = tgt
    # a skip s-2 -> s is allowed into a token state whose token differs from the previous token
    can_skip = np.zeros(n_states, dtype=bool)
    can_skip[3::2] = tgt[1:] != tgt[:-1]

    emit = lp[:, ext]  # (T, S)
    neg_inf = -np.inf
    alpha = np.full(n_states, neg_inf)
    alpha[:2] = emit[0, :2]
    back = np.zeros((n_frames, n_states), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    cand = np.full((3, n_states), neg_inf)  # rows: stay, from s-1, from s-2
    cols = np.arange(n_states)
    skip_to = np.flatnonzero(can_skip)
    for t in range(1, n_frames):
        cand[0] = alpha
        cand[1, 1:] = alpha[:-1]
        cand[2, skip_to] = alpha[skip_to - 2]
        best = cand.argmax(axis=0)  # (S,) first max wins: prefer staying, then s-1
        back[t] = best
        alpha = cand[best, cols] + emit[t]

    # the path ends in the last token or the trailing blank
    end = n_states - 1 if alpha[-1] >= alpha[-2] else n_states - 2
    if not np.isfinite(alpha[end]):
        raise ValueError("the target sequence has zero probability under log_probs (all paths are -inf)")
    states = np.empty(n_frames, dtype=np.int64)
    s = end
    for t in range(n_frames - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    path = np.where(states % 2 == 1, (states - 1) // 2, BLANK_FRAME)
    return path.tolist()


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
