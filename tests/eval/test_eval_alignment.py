"""CTC Viterbi forced alignment recovers planted alignments; the blank-frame labelling rule."""

import numpy as np
import pytest
import torch

from eval.alignment import BLANK_FRAME, align_frame_labels, ctc_forced_align, frame_labels


def _planted(n_tokens: int, n_frames: int, vocab: int, seed: int, repeats: bool = True):
    """A random target sequence and a random valid CTC path (target index per frame, -1 = blank)."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, vocab, n_tokens)
    if repeats:  # force some adjacent repeats
        targets[1::7] = targets[0::7][: len(targets[1::7])]
    gaps = rng.integers(0, 3, n_tokens + 1)
    is_repeat = np.r_[False, targets[1:] == targets[:-1]]
    gaps[:-1] = np.where(is_repeat, np.maximum(gaps[:-1], 1), gaps[:-1])  # a blank before a repeated token
    durations = rng.integers(1, 4, n_tokens)
    slack = n_frames - gaps.sum() - durations.sum()
    assert slack >= 0
    gaps[-1] += slack
    path = []
    for k in range(n_tokens):
        path += [BLANK_FRAME] * gaps[k] + [k] * durations[k]
    path += [BLANK_FRAME] * gaps[-1]
    return targets, np.array(path)


def _peaky_log_probs(targets, path, vocab, seed, peak=8.0, blank=0):
    """Noisy logits with a peak on the planted label of each frame, log-softmaxed."""
    rng = np.random.default_rng(seed)
    labels = np.where(path >= 0, targets[np.maximum(path, 0)], blank)
    logits = rng.standard_normal((len(path), vocab))
    logits[np.arange(len(path)), labels] += peak
    return torch.log_softmax(torch.tensor(logits), dim=-1)


@pytest.mark.parametrize("seed", range(5))
def test_recovers_planted_alignment(seed):
    targets, path = _planted(n_tokens=60, n_frames=300, vocab=30, seed=seed)
    log_probs = _peaky_log_probs(targets, path, vocab=30, seed=seed + 100)
    assert ctc_forced_align(log_probs, targets.tolist()) == path.tolist()


def test_recovers_alignment_with_nonzero_blank_id():
    targets, path = _planted(n_tokens=20, n_frames=80, vocab=12, seed=7)
    targets[targets == 11] = 10  # keep id 11 free for the blank
    log_probs = _peaky_log_probs(targets, path, vocab=12, seed=8, blank=11)
    assert ctc_forced_align(log_probs.numpy(), targets, blank=11) == path.tolist()


def test_repeated_targets_get_a_blank_between():
    # the frames favour the token everywhere except where a blank is forced between the repeats
    log_probs = np.log(np.full((3, 3), 1e-3))
    log_probs[:, 1] = np.log(0.9)
    assert ctc_forced_align(log_probs, [1, 1]) == [0, BLANK_FRAME, 1]


@pytest.mark.parametrize(
    "targets, n_frames",
    [([1, 2, 3], 3), ([1, 1], 3), ([1, 1, 1], 5), ([2, 2, 3, 3], 6)],
)
def test_minimal_length_is_feasible(targets, n_frames):
    log_probs = np.log(np.full((n_frames, 4), 0.25))
    path = ctc_forced_align(log_probs, targets)
    emitted = [p for p in path if p >= 0]
    assert sorted(set(emitted)) == list(range(len(targets)))


@pytest.mark.parametrize("targets, n_frames", [([1, 2, 3], 2), ([1, 1], 2), ([1, 1, 1], 4)])
def test_too_few_frames_raises(targets, n_frames):
    with pytest.raises(ValueError, match="need at least"):
        ctc_forced_align(np.zeros((n_frames, 4)), targets)


def test_invalid_targets_raise():
    with pytest.raises(ValueError, match="blank"):
        ctc_forced_align(np.zeros((5, 4)), [1, 0])
    with pytest.raises(ValueError, match="lie in"):
        ctc_forced_align(np.zeros((5, 4)), [1, 4])
    impossible = np.zeros((4, 3))
    impossible[:, 2] = -np.inf
    with pytest.raises(ValueError, match="zero probability"):
        ctc_forced_align(impossible, [1, 2])


def test_empty_targets_are_all_blank():
    assert ctc_forced_align(np.zeros((4, 3)), []) == [BLANK_FRAME] * 4


def test_a_long_alignment_recovers_the_planted_path():
    """1 000 frames, 200 targets (its time: tests/benchmarks/bench_eval.py)."""
    targets, path = _planted(n_tokens=200, n_frames=1000, vocab=60, seed=3)
    log_probs = _peaky_log_probs(targets, path, vocab=60, seed=4).numpy()
    assert ctc_forced_align(log_probs, targets) == path.tolist()


# ------------------------------------------------------------------------------------ labelling rule


def test_blank_frames_join_the_preceding_token_edges_dropped():
    #        frame: 0   1  2  3   4   5  6   7  8   9
    path = [-1, -1, 0, 0, -1, -1, 1, -1, 2, -1]
    targets = [11, 12, 13]  # phoneme ids
    units = [5, 5, 6]  # tokens 0 and 1 belong to word 5, token 2 to word 6
    out = frame_labels(path, targets, units)
    assert out.keep.tolist() == [False, False, True, True, True, True, True, True, True, False]
    assert out.token_index.tolist() == [0, 0, 0, 0, 1, 1, 2]
    assert out.phonemes.tolist() == [11, 11, 11, 11, 12, 12, 13]
    assert out.units.tolist() == [5, 5, 5, 5, 5, 5, 6]


def test_blank_between_repeated_phonemes_joins_the_first():
    path = [0, 0, -1, -1, 1, 1]  # the same phoneme twice (in two words): blanks belong to the first
    out = frame_labels(path, [3, 3], [0, 1])
    assert out.phonemes.tolist() == [3] * 6
    assert out.units.tolist() == [0, 0, 0, 0, 1, 1]


def test_all_blank_path_keeps_nothing():
    out = frame_labels([-1, -1, -1], [1], [0])
    assert out.keep.tolist() == [False, False, False]
    assert len(out.phonemes) == len(out.units) == 0


def test_path_outside_targets_raises():
    with pytest.raises(ValueError, match="outside targets"):
        frame_labels([0, 1, 2], [1, 2], [0, 0])
    with pytest.raises(ValueError, match="differ in length"):
        frame_labels([0, 1], [1, 2], [0])


def test_align_frame_labels_end_to_end():
    targets, path = _planted(n_tokens=30, n_frames=120, vocab=20, seed=5)
    units = np.repeat(np.arange(10), 3)  # 3 phonemes per word
    out = align_frame_labels(_peaky_log_probs(targets, path, vocab=20, seed=6), targets, units)
    first = np.flatnonzero(path >= 0)[0]
    last = np.flatnonzero(path >= 0)[-1]
    assert out.keep.sum() == last - first + 1
    assert out.phonemes.tolist() == targets[out.token_index].tolist()
    assert np.all(np.diff(out.units) >= 0)
