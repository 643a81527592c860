"""CTC forced alignment on the phoneme head, and word timestamps from it (torch + stdlib only).

`ctc_forced_align` finds the single most likely CTC path for a known target sequence (the model's own phoneme
head gives the log-probabilities) and returns, per frame, the index of the target token the frame emits, or -1
for a blank frame. `unit_timestamps` aligns the phonemes of a transcript, grouped by semantic unit (an English
word, one Hanzi, a digit string), and turns the path into each unit's (start, end) in seconds;
`encoder_frame_seconds` says how long an encoder frame is for a given model config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate

import torch

from .configuration_entropy_asr import EntropyASRConfig

BLANK_FRAME = -1


def encoder_frame_seconds(config: EntropyASRConfig) -> float:
    """Seconds per encoder (CTC) frame: the feature hop times the strides of the encoder's subsampling
    convolutions (Parakeet with 4x subsampling at 10 ms hop: 0.04 s; Whisper: 0.02 s)."""
    stride = math.prod(stride for _kernel, stride, _padding in config.encoder_frame_rule["conv_layers"])
    return config.hop_length * stride / config.sampling_rate


def _log_probs_tensor(log_probs) -> torch.Tensor:
    """(T, V) float64 CPU tensor from a tensor or anything `torch.as_tensor` reads (numpy arrays, lists)."""
    lp = log_probs.detach() if isinstance(log_probs, torch.Tensor) else torch.as_tensor(log_probs)
    lp = lp.to(device="cpu", dtype=torch.float64)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (T, V), got shape {tuple(lp.shape)}")
    return lp


def ctc_forced_align(log_probs, targets: Sequence[int], blank: int = 0) -> list[int]:
    """Viterbi CTC alignment of `targets` to frame log-probabilities `log_probs` (T, V).

    Returns a list of length T: for each frame the index (0..L-1) of the target token it emits, or -1 if
    the frame is a blank. Consecutive equal targets need a blank frame between them, so T must be at least
    L + (number of adjacent repeats); a shorter T, a target equal to `blank` or out of the vocabulary, or
    a target sequence with zero probability raises ValueError. Dynamic programming over frames in float64,
    vectorised over the 2L+1 extended states (O(T L) time, O(T L) int8 back-pointers). Ties go to staying in
    a state, then to the previous state, then to the skip; the path ends in the trailing blank unless the last
    token scores higher.
    """
    lp = _log_probs_tensor(log_probs)
    n_frames, vocab = lp.shape
    tgt = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    n_tok = len(tgt)
    if n_tok == 0:
        return [BLANK_FRAME] * n_frames
    if bool((tgt == blank).any()):
        raise ValueError(f"targets contain the blank id {blank}")
    lo, hi = int(tgt.min()), int(tgt.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"target ids must lie in [0, {vocab}), got range [{lo}, {hi}]")
    repeats = int((tgt[1:] == tgt[:-1]).sum())
    if n_frames < n_tok + repeats:
        raise ValueError(
            f"cannot align {n_tok} targets ({repeats} adjacent repeats need a blank between) "
            f"to {n_frames} frames: need at least {n_tok + repeats}"
        )

    # extended sequence: blank, t0, blank, t1, ..., t_{L-1}, blank  (S = 2L + 1 states)
    n_states = 2 * n_tok + 1
    ext = torch.full((n_states,), blank, dtype=torch.long)
    ext[1::2] = tgt
    # a skip s-2 -> s is allowed into a token state whose token differs from the previous token
    skip_penalty = torch.full((n_states,), -math.inf, dtype=torch.float64)  # 0 where the skip is allowed
    skip_penalty[3::2] = torch.where(tgt[1:] != tgt[:-1], 0.0, -math.inf)

    emit = lp[:, ext]  # (T, S)
    # padded[2:] is alpha; padded[1:-1] and padded[:-2] are alpha shifted by one and two states
    padded = torch.full((n_states + 2,), -math.inf, dtype=torch.float64)
    alpha = padded[2:]
    alpha[:2] = emit[0, :2]
    back = torch.zeros((n_frames, n_states), dtype=torch.int8)  # 0 stay, 1 from s-1, 2 from s-2
    cand = torch.empty((3, n_states), dtype=torch.float64)  # rows: stay, from s-1, from s-2
    best = torch.empty(n_states, dtype=torch.float64)
    best_move = torch.empty(n_states, dtype=torch.long)
    for t in range(1, n_frames):
        cand[0] = alpha
        cand[1] = padded[1:-1]
        torch.add(padded[:-2], skip_penalty, out=cand[2])
        torch.max(cand, dim=0, out=(best, best_move))  # (S,) the first maximum wins
        back[t] = best_move
        torch.add(best, emit[t], out=alpha)

    # the path ends in the last token or the trailing blank
    end = n_states - 1 if alpha[-1] >= alpha[-2] else n_states - 2
    if not math.isfinite(float(alpha[end])):
        raise ValueError("the target sequence has zero probability under log_probs (all paths are -inf)")
    moves = back.tolist()
    path = [BLANK_FRAME] * n_frames
    s = end
    for t in range(n_frames - 1, -1, -1):
        if s % 2 == 1:
            path[t] = (s - 1) // 2
        s -= moves[t][s]
    return path


def _token_frames(path: list[int], n_tokens: int) -> list[tuple[int, int]]:
    """First and last frame of each target token's emission (a run of consecutive frames in a CTC path)."""
    spans: list[list[int]] = [[-1, -1] for _ in range(n_tokens)]
    for frame, token in enumerate(path):
        if token != BLANK_FRAME:
            if spans[token][0] < 0:
                spans[token][0] = frame
            spans[token][1] = frame
    return [(first, last) for first, last in spans]


def _core_frames(tokens: list[tuple[int, int]], max_gap_frames: float) -> tuple[int, int]:
    """First and last emitting frame of a unit whose targets emit at `tokens` (first, last frame each), after
    dropping its first and then its last target where more than `max_gap_frames` separate it from the unit's
    other targets (never the only one left)."""
    first, last = 0, len(tokens) - 1
    if last > first and tokens[first + 1][0] - tokens[first][1] > max_gap_frames:
        first += 1
    if last > first and tokens[last][0] - tokens[last - 1][1] > max_gap_frames:
        last -= 1
    return tokens[first][0], tokens[last][1]


def unit_timestamps(
    log_probs,
    unit_targets: Sequence[Sequence[int]],
    frame_seconds: float,
    blank: int = 0,
    duration: float | None = None,
    *,
    min_duration: float = 0.4,
    tail: float = 0.08,
    stray_gap: float = 0.3,
) -> list[tuple[float, float] | None]:
    """(start, end) in seconds of each semantic unit of a transcript, from the CTC forced alignment of its
    targets to `log_probs` (T, V) (the phoneme head's log-probabilities of one clip, frames `frame_seconds`
    long: see `encoder_frame_seconds`).

    `unit_targets` holds one sequence of CTC target ids per unit (an English word, one Hanzi, a digit string),
    in transcript order. A unit without targets (nothing to hear) gets None; the others get (start, end) with
    0 <= start <= end <= next unit's start <= `duration` (default: T frames).

    The rule, chosen by measuring boundary errors on espeak-ng words joined by known silences
    (tests/benchmarks/bench_timestamps.py): the phoneme head's spikes sit at the onset of what they label (a
    Mandarin syllable's initial and final both spike within its first ~80 ms), so the first spike is a good
    start, but the last spike is no end (it comes 120 ms, in Mandarin 280 ms, before the end at the median, and
    the blank posterior barely differs between a vowel's remainder and silence).
    - a unit's emissions: the frames where the path emits one of its targets, less its first or last target
      where that target's emission lies more than `stray_gap` seconds from the unit's other targets (the head
      often emits a word's first phoneme at the end of the previous word, before a pause);
    - start: the centre of the unit's first emitting frame;
    - end: `tail` seconds after the centre of its last emitting frame, but at least `min_duration` after its
      start (what a spoken word or syllable lasts), and never past the next unit's start or `duration`.
    On the demo model, median / max absolute error: English start 17 / 250 ms, end 52 / 223 ms; Mandarin start
    21 ms, end 91 ms, but that head emits the last syllables of a sentence up to ~1.7 s late, in the trailing
    silence, which no rule on its posteriors can undo. "First to last spike" gave ends off by 116 / 283 ms.
    Raises ValueError as `ctc_forced_align` does when the targets cannot be aligned to the frames.
    """
    lp = _log_probs_tensor(log_probs)
    n_frames = lp.shape[0]
    if frame_seconds <= 0:
        raise ValueError(f"frame_seconds must be positive, got {frame_seconds}")
    duration = n_frames * frame_seconds if duration is None else float(duration)
    sizes = [len(unit) for unit in unit_targets]
    path = ctc_forced_align(lp, [t for unit in unit_targets for t in unit], blank=blank)
    tokens = _token_frames(path, sum(sizes))
    ends = list(accumulate(sizes))  # unit u's targets are tokens[ends[u] - sizes[u] : ends[u]]
    spoken = [u for u, size in enumerate(sizes) if size]
    core = {u: _core_frames(tokens[ends[u] - sizes[u] : ends[u]], stray_gap / frame_seconds) for u in spoken}
    starts = {u: (core[u][0] + 0.5) * frame_seconds for u in spoken}
    out: list[tuple[float, float] | None] = [None] * len(sizes)
    for i, u in enumerate(spoken):
        limit = starts[spoken[i + 1]] if i + 1 < len(spoken) else duration
        end = min(max((core[u][1] + 0.5) * frame_seconds + tail, starts[u] + min_duration), limit)
        start = min(max(starts[u], 0.0), duration)
        out[u] = (start, min(max(end, start), duration))
    return out
