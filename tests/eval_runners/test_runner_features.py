"""Frame labels for the entropy-allocation runners: forced alignment of reference phonemes (or characters)
to CTC posteriors, on planted alignments and on the tiny model + corpus."""

from __future__ import annotations

import copy
from itertools import groupby

import numpy as np
import pytest
import torch

import eval.runners.features as features
from eval.runners.features import (
    CHARACTER,
    PHONEME,
    LabelError,
    ReferenceTargets,
    SymbolTable,
    character_frame_labels,
    ctc_unit_kind,
    encode_utterances,
    label_utterances,
    phoneme_frame_labels,
    pool_frames,
    reference_targets,
    unit_pronunciations,
)
from training.data.splits import Utterance, load_split, subset_indices


def planted_log_probs(path: list[int], vocab_size: int, peak: float = 0.9) -> np.ndarray:
    """(T, V) log-probs with `peak` probability on the planted symbol of each frame."""
    probs = np.full((len(path), vocab_size), (1 - peak) / (vocab_size - 1))
    probs[np.arange(len(path)), path] = peak
    return np.log(probs)


@pytest.mark.parametrize(
    "n_rows, max_utterances, expected",
    [
        (10, None, list(range(10))),
        (10, 10, list(range(10))),
        (3, 5, [0, 1, 2]),
        (10, 1, [0]),
        (10, 2, [0, 9]),
        (40, 4, [0, 13, 26, 39]),
        (0, 3, []),
    ],
)
def test_subset_indices_are_evenly_spaced(n_rows, max_utterances, expected):
    assert subset_indices(n_rows, max_utterances) == expected


def test_subset_indices_rejects_zero():
    with pytest.raises(ValueError):
        subset_indices(10, 0)


def test_ctc_unit_kind_from_vocabulary():
    assert ctc_unit_kind(["<blank>", "AA", "b", "ang1"]) == PHONEME
    assert ctc_unit_kind(["<blank>", "a", "b", "'", "|", "周"]) == CHARACTER
    with pytest.raises(ValueError):
        ctc_unit_kind([])


def test_phoneme_labels_recover_planted_alignment():
    vocab = ["<blank>", "P", "L", "EY"]
    targets = ReferenceTargets(["P", "L", "EY"], [0, 0, 1], ["pl", "ey"])
    # blank, P, P, blank, L, L, EY, blank x3: leading/trailing blanks dropped, the inner blank is P's
    path = [0, 1, 1, 0, 2, 2, 3, 0, 0, 0]
    labels = phoneme_frame_labels(planted_log_probs(path, len(vocab)), targets, vocab)
    assert labels.keep.tolist() == [False] + [True] * 6 + [False] * 3
    assert labels.phonemes == ["P", "P", "P", "L", "L", "EY"]
    assert labels.units.tolist() == [0, 0, 0, 0, 0, 1]
    assert labels.token_index.tolist() == [0, 0, 0, 1, 1, 2]


def test_character_labels_spread_unit_phonemes_evenly():
    vocab = ["<blank>", "p", "l", "a", "y", "|", "周", "杰"]
    targets = ReferenceTargets(
        ["P", "L", "EY", "zh", "ou1", "j", "ie2"], [0, 0, 0, 1, 1, 2, 2], ["play", "周", "杰"]
    )
    # p p l a y y | 周 周 周 杰 杰 blank
    path = [1, 1, 2, 3, 4, 4, 5, 6, 6, 6, 7, 7, 0]
    labels = character_frame_labels(planted_log_probs(path, len(vocab)), "play 周杰", targets, vocab)
    assert labels.keep.tolist() == [True] * 6 + [False] + [True] * 5 + [
        False
    ]  # separator and trailing blank out
    assert labels.phonemes == ["P", "P", "L", "L", "EY", "EY", "zh", "zh", "ou1", "j", "ie2"]
    assert labels.units.tolist() == [0] * 6 + [1] * 3 + [2] * 2


def test_unalignable_utterances_are_skipped_and_counted(monkeypatch):
    vocab = ["<blank>", "P", "L", "EY"]
    utts = [
        Utterance("short", np.zeros(10, np.float32), "x", "en", 0),
        Utterance("ok", np.zeros(10, np.float32), "x", "en", 1),
    ]
    targets = ReferenceTargets(["P", "L", "L", "EY"], [0, 0, 0, 0], ["plle"])
    # 4 targets with one adjacent repeat need 5 frames; 4 are too few
    short = planted_log_probs([1, 2, 2, 3], len(vocab))
    with pytest.raises(LabelError) as err:
        phoneme_frame_labels(short, targets, vocab)
    assert err.value.reason == "too_short_for_alignment"
    with pytest.raises(LabelError) as err:
        phoneme_frame_labels(short, ReferenceTargets(["ZZ"], [0], ["zz"]), vocab)
    assert err.value.reason == "symbol_not_in_ctc_vocab"

    monkeypatch.setattr(features, "reference_targets", lambda text, language=None: targets)
    labelled = label_utterances(utts, [short, planted_log_probs([1, 2, 0, 2, 3], len(vocab))], vocab)
    assert labelled.labels[0] is None and labelled.labels[1] is not None
    assert dict(labelled.skipped) == {"too_short_for_alignment": 1}


def test_tiny_model_labels_collapse_to_the_reference(tiny_corpus, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    utts, _ = load_split(tiny_corpus / "dataset", "test", max_utterances=4)
    assert {u.language for u in utts} == {"en", "zh"}
    out = encode_utterances(model, processor, [u.audio for u in utts], batch_size=2)
    labelled = label_utterances(utts, out.log_probs, processor.ctc_vocab)
    assert not labelled.skipped
    for utt, z, lab in zip(utts, out.states, labelled.labels):
        ref = reference_targets(utt.text, utt.language)
        assert len(lab.keep) == len(z)
        kept = np.flatnonzero(lab.keep)
        assert len(lab.phonemes) == len(lab.units) == len(lab.token_index) == len(kept)
        assert np.all(np.diff(kept) == 1), "kept frames are one contiguous block (only edge blanks dropped)"
        # every reference token owns a run of frames, in order, with its phoneme and unit
        starts = np.r_[0, np.flatnonzero(np.diff(lab.token_index)) + 1]
        assert lab.token_index[starts].tolist() == list(range(len(ref.phonemes)))
        assert [lab.phonemes[i] for i in starts] == ref.phonemes
        assert lab.units[starts].tolist() == ref.phoneme_units
        # collapsing runs of equal (phoneme, unit) labels gives the reference back where no two adjacent
        # reference phonemes of the same unit are equal (those need the token index to tell them apart)
        pairs = list(zip(ref.phonemes, ref.phoneme_units))
        if all(a != b for a, b in zip(pairs, pairs[1:])):
            assert [k for k, _ in groupby(zip(lab.phonemes, lab.units.tolist()))] == pairs
    phon, units = SymbolTable(), SymbolTable()
    pooled = pool_frames(utts, out.states, labelled, phon, units)
    assert pooled.states.shape == (sum(lab.keep.sum() for lab in labelled.labels), z.shape[1])
    assert len(pooled.phonemes) == len(pooled.units) == len(pooled.utterance_ids) == pooled.n_frames
    # units are lexical identities: the same word in two utterances is one id
    assert set(units.symbols) == {w for u in utts for w in reference_targets(u.text).units}
    # every frame's pronunciation is its unit's reference phoneme string, one id per string over the run
    prons = SymbolTable()
    pooled = pool_frames(utts, out.states, labelled, phon, units, prons)
    expected = []
    for utt, lab in zip(utts, labelled.labels):
        ref = reference_targets(utt.text, utt.language)
        expected += [
            " ".join(p for p, u in zip(ref.phonemes, ref.phoneme_units) if u == k) for k in lab.units
        ]
    assert [prons.symbols[i] for i in pooled.pronunciations] == expected
    assert len(prons.symbols) == len(set(expected))


def test_homophones_share_a_pronunciation_and_not_a_unit():
    ref = reference_targets("张伟 章伟", "zh")
    assert ref.units == ["张", "伟", "章", "伟"]
    assert unit_pronunciations(ref) == ["zh ang1", "uei3", "zh ang1", "uei3"]


def test_character_ctc_model_labels_units_exactly(tiny_corpus, tiny_model_and_processor):
    """A character-CTC head (the baseline) labels frames by character alignment: every kept frame carries
    its unit and one of that unit's phonemes, in order, and each unit's frames cover its phonemes."""
    from training.data.g2p import build_char_vocab

    model, processor = tiny_model_and_processor
    utts, _ = load_split(tiny_corpus / "dataset", "test", max_utterances=4)
    char_model, char_processor = copy.deepcopy(model), copy.deepcopy(processor)
    vocab = build_char_vocab(u.text for u in utts)
    last = char_model.model.ctc_head.layers[-1]
    char_model.model.ctc_head.layers[-1] = torch.nn.Linear(last.in_features, len(vocab))
    char_processor.ctc_vocab = vocab
    out = encode_utterances(char_model, char_processor, [u.audio for u in utts], batch_size=4)
    labelled = label_utterances(utts, out.log_probs, vocab)
    assert labelled.source == "own_character_head_even_split" and not labelled.skipped
    for utt, lab in zip(utts, labelled.labels):
        if lab is None:
            continue
        ref = reference_targets(utt.text, utt.language)
        runs = [
            (unit, [p for _, p in frames])
            for unit, frames in groupby(zip(lab.units.tolist(), lab.phonemes), key=lambda f: f[0])
        ]
        assert [unit for unit, _ in runs] == sorted(set(ref.phoneme_units)), "each unit: one run, in order"
        for unit, got in runs:
            phones = [p for p, u in zip(ref.phonemes, ref.phoneme_units) if u == unit]
            n, k = len(got), len(phones)
            assert got == [
                phones[(i * k) // n] for i in range(n)
            ]  # phoneme j of k on frames [jn/k, (j+1)n/k)
