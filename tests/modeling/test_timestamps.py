"""Word timestamps from the phoneme CTC head (modeling/alignment_entropy_asr.py): the torch Viterbi against brute
force, the boundary rule on a planted CTC head, the frame duration from the config, and the timed clips that
tests/benchmarks/bench_timestamps.py measures with."""

from __future__ import annotations

import itertools
import math
import shutil

import numpy as np
import pytest
import torch

from modeling import EntropyASRConfig
from modeling.alignment_entropy_asr import (
    BLANK_FRAME,
    ctc_forced_align,
    encoder_frame_seconds,
    unit_timestamps,
)

FS = 0.04  # frame seconds of the planted heads


# ------------------------------------------------------------------------------------ forced alignment


def _brute_force_path(log_probs: np.ndarray, targets: list[int]) -> list[int] | None:
    """The best CTC path by enumerating every per-frame labelling (target index or -1), None if none is valid."""
    n_frames, n_tok = len(log_probs), len(targets)
    best, best_score = None, -math.inf
    for path in itertools.product(range(-1, n_tok), repeat=n_frames):
        last, after_blank, valid = -1, False, True
        for k in path:
            if k == BLANK_FRAME:
                after_blank = True
                continue
            # stay on token `last` without a blank between, or move on to the next token; a repeated id needs a
            # blank before it
            stay = k == last and not after_blank
            step = k == last + 1 and (last < 0 or targets[k] != targets[last] or after_blank)
            if not (stay or step):
                valid = False
                break
            last, after_blank = k, False
        if not valid or last != n_tok - 1:
            continue
        score = sum(log_probs[t, 0 if k < 0 else targets[k]] for t, k in enumerate(path))
        if score > best_score:
            best, best_score = list(path), score
    return best


@pytest.mark.parametrize("seed", range(40))
def test_forced_alignment_is_the_brute_force_best_path(seed):
    rng = np.random.default_rng(seed)
    n_tok, vocab = int(rng.integers(1, 4)), int(rng.integers(2, 5))
    targets = rng.integers(1, vocab, n_tok).tolist()
    n_frames = int(rng.integers(n_tok + sum(a == b for a, b in zip(targets, targets[1:])), 8))
    log_probs = torch.log_softmax(torch.tensor(rng.standard_normal((n_frames, vocab)) * 3), -1).numpy()
    assert ctc_forced_align(log_probs, targets) == _brute_force_path(log_probs, targets)


def test_forced_alignment_breaks_ties_as_the_numpy_version_did():
    # every label equally likely: all valid paths tie; the path ends in the trailing blank and, tracing back,
    # a state is kept as long as it can be (the first maximum: stay, then from s-1, then the skip)
    assert ctc_forced_align(np.log(np.full((5, 3), 1 / 3)), [1, 2]) == [0, 1, -1, -1, -1]
    assert ctc_forced_align(np.log(np.full((4, 3), 1 / 3)), [1, 1]) == [0, -1, 1, -1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forced_alignment_reads_low_precision_tensors(dtype):
    log_probs = torch.log_softmax(torch.randn(12, 6, generator=torch.Generator().manual_seed(0)), -1)
    expected = ctc_forced_align(log_probs.to(dtype).double().numpy(), [1, 2, 3])
    assert ctc_forced_align(log_probs.to(dtype), [1, 2, 3]) == expected


# ------------------------------------------------------------------------------------ the boundary rule


def _planted_head(n_frames: int, spikes: dict[int, int], vocab: int = 12, peak: float = 12.0) -> torch.Tensor:
    """(T, V) log-probs: blank everywhere (silence) except a spike of `spikes[frame]` at each planted frame."""
    logits = torch.zeros(n_frames, vocab)
    logits[:, 0] = peak
    for frame, label in spikes.items():
        logits[frame, label] = 2 * peak
    return torch.log_softmax(logits, -1)


RULE = {"min_duration": 0.2, "tail": 0.08, "stray_gap": 0.3}


def test_units_start_at_their_first_spike_and_end_by_the_rule():
    #         unit 0 (ids 3, 4)      unit 1: none   unit 2 (id 5)   unit 3 (ids 6, 7)        unit 4 (id 8)
    spikes = {2: 3, 3: 4, 10: 5, 12: 6, 18: 7, 40: 8}
    targets = [(3, 4), (), (5,), (6, 7), (8,)]
    got = unit_timestamps(_planted_head(45, spikes), targets, FS, **RULE)
    centre = lambda frame: (frame + 0.5) * FS  # noqa: E731
    assert got[0] == pytest.approx((centre(2), centre(2) + 0.2))  # min_duration beats tail
    assert got[1] is None  # no targets: nothing to hear
    assert got[2] == pytest.approx((centre(10), centre(12)))  # capped at the next unit's start
    assert got[3] == pytest.approx((centre(12), centre(18) + 0.08))  # tail after the last spike
    assert got[4] == pytest.approx((centre(40), 45 * FS))  # capped at the clip's end (default T frames)


def test_a_lone_edge_spike_far_from_the_rest_of_its_unit_is_dropped():
    # unit 1's first phoneme spikes at frame 6 (0.48 s before its others, just after unit 0): anticipation
    spikes = {2: 3, 6: 4, 18: 5, 19: 6, 40: 7}
    targets = [(3,), (4, 5, 6), (7,)]
    got = unit_timestamps(_planted_head(50, spikes), targets, FS, **RULE)
    assert got[1][0] == pytest.approx(18.5 * FS)
    assert got[0][1] == pytest.approx(2.5 * FS + 0.2)  # unit 0 no longer ends where the stray spike is
    kept = unit_timestamps(_planted_head(50, spikes), targets, FS, **{**RULE, "stray_gap": math.inf})
    assert kept[1][0] == pytest.approx(6.5 * FS)


def test_a_far_edge_phoneme_is_dropped_even_over_several_frames():
    # unit 0's first phoneme (held 2 frames) and last phoneme lie 0.36 s and 0.32 s from its middle one
    spikes = {3: 4, 4: 4, 13: 5, 21: 6}
    got = unit_timestamps(
        _planted_head(30, spikes), [(4, 5, 6)], FS, min_duration=0.0, tail=0.0, stray_gap=0.3
    )
    assert got == [pytest.approx((13.5 * FS, 13.5 * FS))]
    got = unit_timestamps(
        _planted_head(30, spikes), [(4, 5, 6)], FS, min_duration=0.0, tail=0.0, stray_gap=0.35
    )
    assert got == [pytest.approx((13.5 * FS, 21.5 * FS))]  # only the first is farther than 0.35 s


def test_a_single_spike_unit_keeps_its_spike():
    got = unit_timestamps(_planted_head(10, {4: 3}), [(3,)], FS, min_duration=0.0, tail=0.0)
    assert got == [pytest.approx((4.5 * FS, 4.5 * FS))]


def test_no_spoken_units_and_no_units():
    log_probs = _planted_head(10, {})
    assert unit_timestamps(log_probs, [(), ()], FS) == [None, None]
    assert unit_timestamps(log_probs, [], FS) == []


@pytest.mark.parametrize("n_frames", [0, 1, 2])
def test_targets_that_cannot_fit_the_frames_raise(n_frames):
    with pytest.raises(ValueError, match="need at least 3"):
        unit_timestamps(torch.zeros(n_frames, 6), [(1, 2), (), (3,)], FS)
    with pytest.raises(ValueError, match="need at least 3"):  # a repeated phoneme needs a blank between
        unit_timestamps(torch.zeros(max(n_frames, 2), 6), [(1,), (1,)], FS)


def test_bad_frame_seconds_raise():
    with pytest.raises(ValueError, match="frame_seconds"):
        unit_timestamps(torch.zeros(4, 6), [(1,)], 0.0)


@pytest.mark.parametrize("seed", range(20))
def test_timestamps_are_monotone_and_inside_the_clip(seed):
    rng = np.random.default_rng(seed)
    n_frames, vocab = int(rng.integers(20, 80)), 10
    units = [
        tuple(rng.integers(1, vocab, int(rng.integers(0, 4))).tolist()) for _ in range(rng.integers(1, 8))
    ]
    flat = [t for u in units for t in u]
    if len(flat) + sum(a == b for a, b in zip(flat, flat[1:])) > n_frames:
        units, flat = units[:1], list(units[0])
    log_probs = torch.log_softmax(torch.tensor(rng.standard_normal((n_frames, vocab)) * 4), -1)
    duration = n_frames * FS * float(rng.uniform(0.5, 1.2))  # the clip may be shorter than the frames
    got = unit_timestamps(log_probs, units, FS, duration=duration, min_duration=float(rng.uniform(0, 0.5)))
    assert [g is None for g in got] == [len(u) == 0 for u in units]
    bounds = [x for g in got if g is not None for x in g]
    assert bounds == sorted(bounds)
    assert all(0.0 <= x <= duration for x in bounds)


# ------------------------------------------------------------------------------------ frame duration


@pytest.mark.parametrize(
    "encoder_config, seconds",
    [
        ({"model_type": "parakeet_encoder", "subsampling_factor": 4}, 0.04),
        ({"model_type": "parakeet_encoder", "subsampling_factor": 8}, 0.08),
        ({"model_type": "whisper"}, 0.02),
    ],
)
def test_encoder_frame_seconds(encoder_config, seconds):
    assert encoder_frame_seconds(EntropyASRConfig(encoder_config=encoder_config)) == pytest.approx(seconds)


def test_encoder_frame_seconds_matches_the_encoder(tiny_model_and_processor):
    """Ten seconds of audio make ten seconds' worth of encoder frames (to within the convolutions' edge)."""
    model, processor = tiny_model_and_processor
    inputs = processor(audio=[np.zeros(160000, dtype=np.float32)])
    with torch.inference_mode():
        hidden, lengths = model.model.encode(inputs["input_features"], inputs["input_features_mask"])
    assert abs(int(lengths[0]) * encoder_frame_seconds(model.config) - 10.0) <= encoder_frame_seconds(
        model.config
    )


# ------------------------------------------------------------------------------------ timed clips


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
@pytest.mark.parametrize(
    "pieces, language, speaker",
    [
        (["play", "some", "music"], "en", "en-us+m6-p42-s169"),
        (["导航", "到", "机场"], "zh", "cmn-latn-pinyin+f5-p61-s162"),
    ],
)
def test_timed_clip_spans_hold_exactly_the_speech(pieces, language, speaker):
    from tests.timestamps_clips import SAMPLE_RATE, TRIM_DB, make_timed_clip

    clip = make_timed_clip(pieces, language, speaker, gaps=[0.3, 0.0], edges=(0.25, 0.1))
    assert clip.text == ("play some music" if language == "en" else "导航到机场")
    assert clip.spans[0][0] == pytest.approx(0.25)
    assert clip.spans[1][1] == clip.spans[2][0]  # the zero gap: the pieces abut
    assert clip.spans[1][0] - clip.spans[0][1] == pytest.approx(0.3, abs=1 / SAMPLE_RATE)
    assert clip.duration - clip.spans[-1][1] == pytest.approx(0.1, abs=1 / SAMPLE_RATE)
    inside = np.zeros(len(clip.audio), bool)
    for start, end in clip.spans:
        a, b = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
        inside[a:b] = True
        piece = np.abs(clip.audio[a:b])
        assert piece[0] >= piece.max() * 10 ** (TRIM_DB / 20) and piece[-1] >= piece.max() * 10 ** (
            TRIM_DB / 20
        )
    assert not clip.audio[~inside].any()  # silence between the spans is digital silence
    units = [1, 1, 1] if language == "en" else [2, 1, 2]
    assert [len(u) for u in clip.piece_units] == units
