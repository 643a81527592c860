"""The model's decoder (modeling/generation_entropy_asr.py): the options object, the CTC prefix scorer against brute
force and torch's CTC loss, transcripts as CTC targets, the LLM stepper of the beam search, and the joint CTC / LLM
search on the tiny model (with planted heads that know the answer)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from modeling.generation_entropy_asr import (
    WILDCARD,
    CTCPrefixScorer,
    CTCStates,
    CTCTargets,
    DecodingOptionError,
    DecodingOptions,
    _BeamLM,
)
from modeling.phonemizer_entropy_asr import split_units
from tests.conftest import TOKENIZER_TEXTS, synth_clip
from training.data.g2p import PhonemeVocab, build_char_vocab, text_to_phonemes


# ---- options -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        ({"ctc_weight": -0.1}, "ctc_weight must be in [0, 1)"),
        ({"ctc_weight": 1.0}, "ctc_weight must be in [0, 1)"),
        ({"ctc_weight": float("nan")}, "ctc_weight must be in [0, 1)"),
        ({"beam_size": 0}, "beam_size must be >= 1"),
        ({"beam_size": 2.5}, "beam_size must be a whole number"),
        ({"ctc_candidates": 0}, "ctc_candidates must be >= 1"),
        ({"beam_margin": -1}, "beam_margin must be >= 0"),
        ({"beam_margin": "wide"}, "beam_margin must be a number"),
        ({"unit_bonus": -1}, "unit_bonus must be >= 0"),
        ({"unit_bonus": float("inf")}, "unit_bonus must be >= 0"),
        ({"hotword_bonus": -2}, "hotword_bonus must be >= 0"),
        ({"max_hotword_edits": -1}, "max_hotword_edits must be >= 0"),
        ({"phonemes_per_edit": 1}, "phonemes_per_edit must be >= 2"),
        ({"no_speech_threshold": 0}, "no_speech_threshold must be in (0, 1]"),
        ({"min_speech_confidence": 1.5}, "min_speech_confidence must be in (0, 1]"),
        ({"return_timestamps": "segment"}, "return_timestamps must be False, True or one of ['word']"),
        ({"return_timestamps": "char"}, "return_timestamps must be False, True or one of ['word']"),
        ({"hotwords": [1, 2]}, "hotwords must be strings"),
        ({"hotwords": 3}, "hotwords must be a string or a list of strings"),
        ({"hotwords": "a", "hotword_bonus": 0}, "hotwords would do nothing"),
        ({"prompt_hotwords": "yes"}, "prompt_hotwords must be True or False"),
        ({"ctc_wieght": 0.3}, "unknown decoding option 'ctc_wieght'; the options are: ctc_weight"),
    ],
)
def test_every_bad_option_gets_one_error_naming_it(change, message):
    with pytest.raises(DecodingOptionError) as err:
        DecodingOptions().replace(**change)
    assert message in str(err.value)


def test_options_parse_hotwords_and_files_and_round_trip(tmp_path):
    options = DecodingOptions(hotwords="Zhang Wei, 稻香；Yellow Submarine,  zhang  wei ,Zhang Wei")
    assert options.hotwords == ("Zhang Wei", "稻香", "Yellow Submarine", "zhang wei")
    path = tmp_path / "names.txt"
    path.write_text("# contacts\nliberty park\n\n稻香\n", encoding="utf-8")
    merged = options.replace(hotwords_file=str(path))
    assert merged.hotwords == ("Zhang Wei", "稻香", "Yellow Submarine", "zhang wei", "liberty park")
    assert merged.hotwords_file is None  # read into hotwords
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(DecodingOptionError, match="hotwords_file .* is not UTF-8"):
        DecodingOptions(hotwords_file=str(path))
    with pytest.raises(DecodingOptionError, match="hotwords_file: no such file"):
        DecodingOptions(hotwords_file=str(tmp_path / "missing.txt"))
    assert DecodingOptions.from_dict(merged.to_dict()) == merged
    assert DecodingOptions(return_timestamps=None).return_timestamps is False
    assert DecodingOptions(return_timestamps=True).return_timestamps == "word"  # transformers' convention
    import numpy as np

    assert DecodingOptions(beam_size=np.int64(3), ctc_weight=np.float32(0.5)).beam_size == 3


def test_the_model_saves_its_defaults_and_calls_override_them(tiny_model_and_processor, tmp_path):
    model, processor = tiny_model_and_processor
    model = copy.deepcopy(model)
    DecodingOptions(ctc_weight=0.25, beam_size=3).save_to(model.generation_config)
    model.save_pretrained(tmp_path)
    from transformers import GenerationConfig

    saved = GenerationConfig.from_pretrained(tmp_path)
    assert saved.decoding["ctc_weight"] == 0.25 and saved.decoding["beam_size"] == 3
    model.generation_config = saved
    options = model.decoding_options(beam_size=5)
    assert (options.ctc_weight, options.beam_size, options.unit_bonus) == (
        0.25,
        5,
        DecodingOptions().unit_bonus,
    )
    gates = copy.deepcopy(model.config)
    gates.no_speech_threshold, gates.min_speech_confidence = 0.4, 0.2
    assert options.gates(gates) == (0.4, 0.2)
    assert options.replace(no_speech_threshold=0.9).gates(gates) == (0.9, 0.2)
    assert options.replace(use_gates=False).gates(gates) == (None, None)


# ---- the CTC prefix scorer -------------------------------------------------------------------------------------
def _log_probs(T: int, V: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, V, generator=g, dtype=torch.float64).mul(2).log_softmax(-1)


def _collapse(path: tuple[int, ...], blank: int = 0) -> tuple[int, ...]:
    out, previous = [], None
    for s in path:
        if s != previous and s != blank:
            out.append(s)
        previous = s
    return tuple(out)


def _scorer(lp: torch.Tensor) -> CTCPrefixScorer:
    return CTCPrefixScorer(lp[None], torch.tensor([lp.shape[0]]), blank=0, dtype=torch.float64)


@pytest.mark.parametrize("prefix", [[1], [2, 2], [1, 2], [2, 1, 2], [1, 1, 1]])
def test_prefix_score_is_the_probability_of_every_continuation(prefix):
    """psi(g) = P(the collapsed CTC output starts with g), summed over all frame paths by brute force."""
    T, V = 5, 3
    lp = _log_probs(T, V, seed=len(prefix) * 7 + sum(prefix))
    total = 0.0
    for path in itertools.product(range(V), repeat=T):
        if _collapse(path)[: len(prefix)] == tuple(prefix):
            total += math.exp(sum(lp[t, s].item() for t, s in enumerate(path)))
    scorer = _scorer(lp)
    whole, _ = scorer.extend(scorer.initial([0]), [prefix])
    assert total > 0 and float(whole.psi[0]) == pytest.approx(math.log(total), abs=1e-9)
    state = scorer.initial([0])
    for symbol in prefix:  # one symbol at a time: the same state
        state, _ = scorer.extend(state, [[symbol]])
    assert float(state.psi[0]) == pytest.approx(float(whole.psi[0]), abs=1e-9)


@pytest.mark.parametrize("target", [[], [3], [1, 1, 2], [4, 2, 2, 5, 1], [2, 3, 2, 3, 2, 3]])
def test_final_score_is_torch_ctc_log_likelihood_in_a_padded_batch(target):
    """Rows of two clips of different lengths (the shorter padded), extended in uneven pieces beside other rows:
    each final score is torch's CTC log-likelihood of its own clip; the intermediate states kept on the way are
    those of the pieces so far."""
    lp = [_log_probs(30, 6, seed=len(target)), _log_probs(22, 6, seed=len(target) + 50)]
    batch = torch.zeros(2, 30, 6, dtype=torch.float64)
    batch[0], batch[1, :22] = lp[0], lp[1]
    scorer = CTCPrefixScorer(batch, torch.tensor([30, 22]), blank=0, dtype=torch.float64)
    pieces = [target[:2], target[2:3], [], target[3:]]
    states = scorer.initial([0, 1, 0])
    for piece in pieces:
        before = states
        states, kept = scorer.extend(states, [piece, piece, [1, 2, 3][: len(piece)]], [1, 0, len(piece)])
        if piece:
            after_one, _ = scorer.extend(before.take([0]), [piece[:1]])
            assert torch.allclose(kept.emitted[0], after_one.emitted[0])
            assert torch.equal(kept.emitted[1], before.emitted[1])
    for row, clip in ((0, 0), (1, 1)):
        frames = lp[clip].shape[0]
        if target:
            expected = -F.ctc_loss(
                lp[clip][:, None], torch.tensor([target]), torch.tensor([frames]), torch.tensor([len(target)]),
                reduction="sum",
            ).item()  # fmt: skip
        else:
            expected = lp[clip][:, 0].sum().item()
        assert float(scorer.final(states)[row]) == pytest.approx(expected, abs=1e-8)
        assert float(states.psi[row]) >= float(scorer.final(states)[row]) - 1e-9


def _cutoff_case():
    """A padded batch of two clips and 60 rows of 1 to 14 labels, each with a rank offset; every row may be
    dropped but some short ones."""
    import random

    batch = torch.stack([_log_probs(40, 8, seed=11), _log_probs(40, 8, seed=12)])
    scorer = CTCPrefixScorer(batch, torch.tensor([40, 31]), blank=0, dtype=torch.float64)
    rng = random.Random(0)
    clips = [row % 2 for row in range(60)]
    targets = [[rng.randrange(1, 8) for _ in range(rng.randint(1, 14))] for _ in clips]
    keep_at = [rng.randint(0, len(t)) for t in targets]
    offset = torch.tensor([rng.uniform(0, 3) for _ in clips], dtype=torch.float64)
    prunable = torch.tensor([row % 7 != 0 or len(targets[row]) > 3 for row in range(60)])
    return scorer, clips, targets, keep_at, offset, prunable


def test_a_cutoff_drops_only_rows_that_cannot_enter_their_beam_and_ends_the_work_early():
    """`extend` with a `Cutoff`: in a padded batch of two clips, 60 rows of 1 to 14 labels, each ranked by an
    offset plus its prefix score in its clip's beam of 4. The rows it keeps have the scores and kept states of
    the same call without it, bit for bit; every row of a beam (the best 4 ranks of the clip) is kept, and so
    is one that may not be dropped (a longest row of each clip is made to just enter its beam); a dropped one
    ranks below its beam. Without such a row, the work ends before the longest rows' last labels."""
    from modeling.generation_entropy_asr import CUTOFF_MARGIN, Cutoff

    scorer, clips, targets, keep_at, offset, prunable = _cutoff_case()
    full, full_kept = scorer.extend(scorer.initial(clips), targets, keep_at)
    floor = torch.full((2,), -math.inf, dtype=torch.float64)
    cutoff = Cutoff(
        offset.clone(), 0.5, torch.tensor(clips), floor, torch.ones(60, dtype=torch.bool), prunable, 4
    )
    early, _ = scorer.extend(scorer.initial(clips), targets, keep_at, cutoff)
    # the work ended early: rows were dropped before their last labels
    assert any(
        not torch.equal(early.emitted[r], full.emitted[r]) for r in range(60) if torch.isinf(early.psi[r])
    )
    for clip in (0, 1):  # a longest row of each clip just makes its beam: still being extended at every check
        rows = [r for r in range(60) if clips[r] == clip]
        longest = max(rows, key=lambda r: len(targets[r]))
        others = sorted((float(offset[r] + 0.5 * full.psi[r]) for r in rows if r != longest), reverse=True)
        offset[longest] = others[3] + 0.05 - 0.5 * full.psi[longest]
    cutoff.offset = offset
    cut, cut_kept = scorer.extend(scorer.initial(clips), targets, keep_at, cutoff)
    dropped = torch.isinf(cut.psi)
    assert 10 < int(dropped.sum()) < 60 and not bool(dropped[~prunable].any())
    kept = ~dropped
    for name in ("emitted", "entry", "psi", "last"):
        assert torch.equal(getattr(cut, name)[kept], getattr(full, name)[kept]), name
    kept_later = kept & torch.tensor([k > 0 for k in keep_at])
    assert torch.equal(cut_kept.emitted[kept_later], full_kept.emitted[kept_later])
    rank = offset + 0.5 * full.psi
    for clip in (0, 1):
        rows = [r for r in range(60) if clips[r] == clip]
        best = sorted(rows, key=lambda r: -float(rank[r]))[:4]
        assert not bool(dropped[best].any())
        floor = float(rank[best[-1]])
        assert all(float(rank[r]) < floor - CUTOFF_MARGIN for r in rows if dropped[r])


def test_deferred_last_labels_finish_to_the_states_of_a_full_extension():
    """`extend(defer=True)` leaves each row's last label without its `emitted` scan, and `finish` completes them
    to the full extension's states bit for bit (the kept states after all of a row's targets are those rows');
    prefix scores and entries are the full ones from the start. WILDCARD targets cannot be deferred."""
    scorer, clips, targets, keep_at, _, _ = _cutoff_case()
    full, full_kept = scorer.extend(scorer.initial(clips), targets, keep_at)
    lazy, lazy_kept = scorer.extend(scorer.initial(clips), targets, keep_at, defer=True)
    for name in ("entry", "psi", "last"):
        assert torch.equal(getattr(lazy, name), getattr(full, name)), name
    assert not torch.equal(lazy.emitted, full.emitted)
    scorer.finish(lazy, [r for r in range(60) if targets[r]])
    assert torch.equal(lazy.emitted, full.emitted)
    before_last = [r for r in range(60) if 0 < keep_at[r] < len(targets[r])]
    assert before_last and torch.equal(lazy_kept.emitted[before_last], full_kept.emitted[before_last])
    with pytest.raises(ValueError, match="defer"):
        scorer.extend(scorer.initial([0]), [[1, WILDCARD]], defer=True)


def test_a_cutoffs_margin_drops_only_rows_ranked_below_it():
    """A `Cutoff` with a margin and a beam no clip fills, where each clip's best row has one label (finished
    before the first check): it drops exactly the rows that a cutoff with that best rank less the margin as
    its floor drops, some of them; every row within the margin is kept, with the scores of the call without a
    cutoff, bit for bit."""
    from modeling.generation_entropy_asr import CUTOFF_MARGIN, Cutoff

    scorer, clips, targets, keep_at, offset, prunable = _cutoff_case()
    full, _ = scorer.extend(scorer.initial(clips), targets, keep_at)
    rank = offset + 0.5 * full.psi
    margin, best = 5.0, []
    for clip in (0, 1):
        rows = [r for r in range(60) if clips[r] == clip]
        short = min(rows, key=lambda r: len(targets[r]))
        assert len(targets[short]) == 1
        best.append(max(float(rank[r]) for r in rows) + 0.5)
        offset[short] += best[-1] - float(rank[short])
    rank = offset + 0.5 * full.psi
    groups, counts = torch.tensor(clips), torch.ones(60, dtype=torch.bool)
    no_floor = torch.full((2,), -math.inf, dtype=torch.float64)
    cutoff = Cutoff(offset, 0.5, groups, no_floor, counts, prunable, beam=60, margin=margin)
    cut, _ = scorer.extend(scorer.initial(clips), targets, keep_at, cutoff)
    floor = torch.tensor(best, dtype=torch.float64) - margin
    floored, _ = scorer.extend(
        scorer.initial(clips), targets, keep_at, Cutoff(offset, 0.5, groups, floor, counts, prunable, beam=60)
    )
    dropped = torch.isinf(cut.psi)
    assert torch.equal(dropped, torch.isinf(floored.psi))
    assert 5 < int(dropped.sum()) < 60 and not bool(dropped[~prunable].any())
    assert torch.equal(cut.psi[~dropped], full.psi[~dropped])
    for clip in (0, 1):
        rows = [r for r in range(60) if clips[r] == clip]
        assert not any(dropped[r] for r in rows if float(rank[r]) >= best[clip] - margin)
        assert all(float(rank[r]) < best[clip] - margin - CUTOFF_MARGIN for r in rows if dropped[r])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_scorers_logsumexp_is_torchs_to_the_bit(dtype):
    """`_logsumexp` (prefix scores from their entries, several times faster on large tensors) gives
    `torch.logsumexp`'s result bit for bit on a scorer's own entries: 240 rows of a padded batch of two clips with
    peaked log-probabilities, most of whose terms lie more than 88 below their row's largest (where it counts
    them as e^-87), with a row of nothing but NEG."""
    from modeling.generation_entropy_asr import LOGSUMEXP_OWN, NEG, _logsumexp

    g = torch.Generator().manual_seed(5)
    batch = torch.randn(2, 80, 30, generator=g, dtype=torch.float64).mul(8).log_softmax(-1)
    scorer = CTCPrefixScorer(batch, torch.tensor([80, 57]), blank=0, dtype=dtype)
    lengths = torch.randint(1, 13, (240,), generator=g).tolist()
    targets = [torch.randint(1, 30, (n,), generator=g).tolist() for n in lengths]
    states, _ = scorer.extend(scorer.initial([row % 2 for row in range(240)]), targets)
    entry = torch.cat([states.entry, torch.full_like(states.entry[:1], NEG)])
    assert entry.dtype == dtype and entry.numel() >= LOGSUMEXP_OWN
    far = (entry < entry.amax(1, keepdim=True) - 88).double().mean()
    assert far > 0.5, far
    assert torch.equal(_logsumexp(entry), torch.logsumexp(entry, 1))
    assert torch.equal(_logsumexp(entry[:3]), torch.logsumexp(entry[:3], 1))  # a small one: torch's own


def test_peek_is_the_score_of_the_prefix_followed_by_one_label():
    """`peek` (the search's bound for a token that begins a unit) equals extending each state by one label, from
    the empty prefix, after a label, with the label repeated, in a padded batch."""
    batch = torch.stack([_log_probs(12, 5, seed=3), _log_probs(12, 5, seed=4)])
    scorer = CTCPrefixScorer(batch, torch.tensor([12, 9]), blank=0, dtype=torch.float64)
    prefixes = [[], [2], [2, 3], [1, 1], [4]]
    states, _ = scorer.extend(scorer.initial([0, 1, 0, 1, 1]), prefixes)
    rows, labels = zip(*itertools.product(range(len(prefixes)), range(1, 5)))
    peeked = scorer.peek(states, torch.tensor(rows), torch.tensor(labels))
    extended, _ = scorer.extend(states.take(list(rows)), [[label] for label in labels])
    assert torch.allclose(peeked, extended.psi, atol=1e-12)
    # the same rows named instead of taken first (the search's way): the same states, every field of them
    named, _ = scorer.extend(states, [[label] for label in labels], rows=list(rows))
    names = [f.name for f in dataclasses.fields(CTCStates)]
    assert len(states.columns()) == len(names)
    assert all(column is getattr(states, name) for column, name in zip(states.columns(), names))
    assert all(torch.equal(getattr(named, name), getattr(extended, name)) for name in names)
    assert bool((peeked <= states.psi[list(rows)] + 1e-12).all())  # a longer prefix is no more likely


def test_after_a_wildcard_the_next_label_is_bounded_by_peek_any():
    """A prefix ending in a wildcard (a word the lexicon lacks) can score higher once a label follows it (each
    filler frame counts its best label, so the label may start anywhere): `peek_any` bounds every one-label
    extension, in a batch of clips, where the prefix's own score does not."""
    frames = [1, 1, 3, 3, 2, 2, 2, 2, 2, 0]  # confident: "1", then frames the wildcard spans, then "2"
    probs = torch.full((len(frames), 5), 1e-4, dtype=torch.float64)
    probs[torch.arange(len(frames)), torch.tensor(frames)] = 1.0
    lp = (probs / probs.sum(-1, keepdim=True)).log()
    batch = torch.stack([lp, _log_probs(len(frames), 5, seed=9)])
    scorer = CTCPrefixScorer(batch, torch.tensor([len(frames), 8]), blank=0, dtype=torch.float64)
    states, _ = scorer.extend(scorer.initial([0, 1, 0]), [[1, WILDCARD], [2, WILDCARD], [WILDCARD]])
    rows = torch.arange(3)
    bound = scorer.peek_any(states, rows)
    for label in range(1, 5):
        after, _ = scorer.extend(states, [[label]] * 3)
        assert bool((after.psi <= bound + 1e-9).all()), label
    rose, _ = scorer.extend(states.take([0]), [[2]])
    assert float(rose.psi[0]) > float(states.psi[0]) + 1.0  # the prefix's own score would have cut it


def test_a_wildcard_word_spans_its_frames_as_their_best_labels():
    """A word the phonemizer cannot spell (its neutral rule) may sound like anything: each frame it spans scores as
    its most likely label. Alone it is the best path through the clip; after a prefix, a sum over where the prefix
    ends; it never scores above the prefix before it, and a label after it pays for its own frames."""
    T, V = 6, 4
    lp = _log_probs(T, V, seed=3)
    best = lp.max(-1).values
    scorer = _scorer(lp)
    alone, _ = scorer.extend(scorer.initial([0]), [[WILDCARD]])
    assert float(scorer.final(alone)[0]) == pytest.approx(float(best.sum()), abs=1e-9)
    one, _ = scorer.extend(scorer.initial([0]), [[1]])
    one_then_any, _ = scorer.extend(one, [[WILDCARD, WILDCARD]])  # two in a row are one
    blanks = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(lp[:, 0], 0)[:-1]])
    first_emission = blanks + lp[:, 1]  # label 1 emitted first at t', blanks before
    after = torch.cat([torch.cumsum(best.flip(0), 0).flip(0)[1:], torch.zeros(1, dtype=torch.float64)])
    expected = torch.logsumexp(first_emission + after, 0)  # frames after t' at their best label
    assert float(scorer.final(one_then_any)[0]) == pytest.approx(float(expected), abs=1e-9)
    assert float(scorer.final(one_then_any)[0]) <= float(one.psi[0]) + 1e-9
    assert float(one_then_any.psi[0]) == pytest.approx(float(one.psi[0]), abs=1e-12)
    then_two, _ = scorer.extend(one, [[WILDCARD, 2]])
    assert float(then_two.psi[0]) <= float(one.psi[0]) + 1e-9


def test_ctc_targets_of_phonemes_and_characters(tiny_model_and_processor):
    processor = tiny_model_and_processor[1]
    vocab = PhonemeVocab.default()
    symbols = [vocab.decode([i])[0] for i in range(len(vocab))]
    targets = CTCTargets(symbols, processor.phonemizer)
    units, ids = targets.targets("call 张伟 at 5")
    assert units == ["call", "张", "伟", "at", "5"]
    expected = [[] for _ in units]
    for p, i in text_to_phonemes("call 张伟 at 5"):  # digits read as Mandarin (the text holds Hanzi)
        expected[i].append(vocab.token_to_id(p))
    assert [list(u) for u in ids] == expected
    _, partial = targets.targets("call jonat", partial=True)  # a fragment: the letter rules
    assert list(partial[-1]) == vocab.encode(processor.phonemizer.word("jonat", partial=True))
    assert targets.targets("去\u3402站") is None  # a Hanzi without a reading cannot be a transcript
    for text in ("重庆 银行", "重 庆", "银行"):  # Hanzi are read together only when adjacent, as in training
        expected = [[] for _ in split_units(text)]
        for p, i in text_to_phonemes(text):
            expected[i].append(vocab.token_to_id(p))
        assert [list(u) for u in targets.targets(text)[1]] == expected, text

    chars = build_char_vocab(["play 周杰伦 now"])
    units, ids = CTCTargets(chars).targets("play 周杰伦 now")
    flat = [chars[i] for unit in ids for i in unit]
    assert flat == ["p", "l", "a", "y", "|", "周", "杰", "伦", "|", "n", "o", "w"]
    with pytest.raises(ValueError, match="no CTC head"):
        CTCTargets([])
    with pytest.raises(ValueError, match="phonemizer"):
        CTCTargets(symbols, None)


# ---- the LLM stepper -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lean", [True, False])
def test_beam_steps_equal_the_text_models_forward_over_prompt_and_tokens(
    tiny_model_and_processor, lean, monkeypatch
):
    """Slots over two left-padded prompts, reordered between steps (slot 0 continues slot 2's tokens...), the
    buffers grown past their first capacity, the first clip dropped before the last step: each slot's hidden
    state equals the model's forward over its prompt and its own tokens (the lean attention over the shared
    prompt and the fallback through the text model's forward alike)."""
    from modeling import generation_entropy_asr as G

    model, processor = tiny_model_and_processor
    if not lean:
        monkeypatch.setattr(G._LeanDecoder, "supports", staticmethod(lambda lm: False))
    inputs = processor(
        audio=[synth_clip(1.0), synth_clip(2.6, seed=3)], context=[None, ["zhang wei", "stop"]]
    )
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    slots, steps = 3, 4
    with torch.no_grad():
        audio, counts, _, _ = model.model.get_audio_features(
            inputs["input_features"], inputs["input_features_mask"]
        )
        _, _, lean_dec, cache = model._prompt_prefill(ids, mask, audio, counts, ids.shape[1])
        width = ids.shape[1]
        if lean_dec is not None:
            kv = [(k[:, :, :width], v[:, :, :width]) for k, v in zip(lean_dec.keys, lean_dec.values)]
        else:
            kv = [(layer.keys, layer.values) for layer in cache.layers]
        stepper = _BeamLM(model.model.language_model, kv, mask, mask.sum(-1), slots, 2)  # grows at step 3
        assert stepper.lean is lean
        g = torch.Generator().manual_seed(1)
        tokens = torch.randint(5, 300, (2 * slots, steps), generator=g)
        history = {row: [] for row in range(2 * slots)}
        order = [2, 0, 1, 5, 3, 4]  # each slot continues another slot of its clip
        alive = list(range(2 * slots))  # the stepper's rows, as rows of both clips
        last = {}  # row -> (its hidden state, its tokens) at the last step it took
        for s in range(steps):
            if s == steps - 1:  # the first clip done: its slots leave
                stepper.keep_clips(torch.tensor([1]))
                alive = alive[slots:]
            parents = [alive.index(order[row]) if s else i for i, row in enumerate(alive)]
            history = {row: history[alive[p]] + [int(tokens[row, s])] for row, p in zip(alive, parents)}
            hidden = stepper.step(model.get_input_embeddings()(tokens[alive, s]), torch.tensor(parents))
            last |= {row: (hidden[i], history[row]) for i, row in enumerate(alive)}
        for row, (state, written) in last.items():
            clip = row // slots
            full = torch.cat([ids[clip : clip + 1], torch.tensor([written])], 1)
            full_mask = torch.cat([mask[clip : clip + 1], torch.ones(1, len(written), dtype=torch.long)], 1)
            out = model.model(
                input_ids=full,
                attention_mask=full_mask,
                position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0),
                input_features=inputs["input_features"][clip : clip + 1],
                input_features_mask=inputs["input_features_mask"][clip : clip + 1],
            )
            torch.testing.assert_close(state, out.last_hidden_state[0, -1], atol=2e-5, rtol=1e-4)
        assert sorted(len(written) for _, written in last.values()) == [steps - 1] * slots + [steps] * slots


# ---- the search ------------------------------------------------------------------------------------------------
class _FixedCTC(torch.nn.Module):
    """A CTC head that hears `targets` (evenly spread over the frames, blanks between)."""

    def __init__(self, targets: list[int], vocab_size: int, blank: int):
        super().__init__()
        self.targets, self.vocab_size, self.blank = targets, vocab_size, blank

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        B, T, _ = hidden.shape
        logits = torch.full((B, T, self.vocab_size), -20.0)
        logits[..., self.blank] = 0.0
        frames = torch.linspace(0, T - 1, len(self.targets) + 2)[1:-1].round().long()
        for frame, target in zip(frames.tolist(), self.targets):
            logits[:, frame, :] = -20.0
            logits[:, frame, target] = 0.0
        return logits


class _BagOfTokens(torch.nn.Module):
    """An LM head that finds every token of the given sentences (and EOS) equally likely, in any order."""

    def __init__(self, tokens: set[int], vocab_size: int):
        super().__init__()
        self.bias = torch.full((vocab_size,), -10.0)
        self.bias[sorted(tokens)] = 0.0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*hidden.shape[:-1], -1).clone()


def hearing_model(tiny_model_and_processor, text: str):
    """The tiny model with a bag-of-tokens LM head over the tokenizer's training sentences and a CTC head that
    hears `text`; and the allowed tokens."""
    shared, processor = tiny_model_and_processor
    model = copy.deepcopy(shared)  # heads replaced below
    tokenizer, vocab = processor.tokenizer, processor.ctc_vocab
    allowed = {t for sentence in set(TOKENIZER_TEXTS) for t in tokenizer(sentence)["input_ids"]}
    allowed.add(model.generation_config.eos_token_id)
    ids = [vocab.index(p) for p, _ in text_to_phonemes(text)]
    model.lm_head = _BagOfTokens(allowed, model.config.text_config.vocab_size)
    model.model.ctc_head = _FixedCTC(ids, len(vocab), model.config.ctc_blank_id)
    return model, allowed


@pytest.mark.parametrize("text", ["call john smith on his mobile", "打电话给张伟"])
def test_the_search_writes_what_the_ctc_head_hears(tiny_model_and_processor, text):
    """The LLM allows any order of the tokens of the tokenizer's training sentences; the CTC head hears one
    sentence's phonemes: the search writes that sentence, in order, and stops, with or without the unit bonus,
    alone or in a batch; greedy decoding (ctc_weight 0) does not know the order."""
    model, allowed = hearing_model(tiny_model_and_processor, text)
    processor = tiny_model_and_processor[1]
    clip = synth_clip(4.0, seed=1)
    greedy = model.transcribe([clip], processor, ctc_weight=0, use_gates=False)[0]["text"]
    assert greedy != text
    for bonus in (0.0, 2.0):
        options = dict(
            ctc_weight=0.5, beam_size=8, ctc_candidates=len(allowed), unit_bonus=bonus, use_gates=False
        )
        assert model.transcribe([clip], processor, **options)[0]["text"] == text
        # (clips of one length: the planted head spreads its phonemes over the padded frames)
        batch = model.transcribe(
            [synth_clip(4.0, seed=4), clip, synth_clip(4.0, seed=5)], processor, **options
        )
        assert [r["text"] for r in batch] == [text] * 3


@pytest.mark.parametrize("doubt", [0.3, 1e-6])
def test_a_name_found_with_edits_acts_only_where_the_ctc_head_finds_it_likely(doubt):
    """The head hears A B E D F with `doubt` of C on E's frame; the list holds "said" (A B C D F: one edit away)
    and "other" (G H C D F: out of reach). "said" acts when C was a real doubt (0.3: log 0.3 against what was
    heard), not when the head was sure (1e-6), nor with a margin of 0; without a margin retrieval alone decides."""
    from modeling.generation_entropy_asr import HotwordIndex, _ctc_runs, heard_hotwords
    from modeling.phonemizer_entropy_asr import Phonemizer

    vocab = ["<blank>", "A", "B", "C", "D", "E", "F", "G", "H"]
    words = {"said": "A B C D F", "other": "G H C D F"}
    targets = CTCTargets(vocab, Phonemizer(words, {}))
    index = HotwordIndex.from_phonemes(
        {w: p.split() for w, p in words.items()}, max_edits=1, phonemes_per_edit=3
    )
    frames = [0, 1, 0, 2, 0, 5, 0, 4, 0, 6, 0]  # the best label of each frame
    probs = torch.full((len(frames), len(vocab)), 1e-6)
    probs[torch.arange(len(frames)), torch.tensor(frames)] = 1.0
    probs[5, 3] = doubt  # E's frame: C too
    log_probs = (probs / probs.sum(-1, keepdim=True)).log()
    runs = _ctc_runs(log_probs[None], torch.tensor([len(frames)]), 0)[0]
    assert [label for label, _, _ in runs] == [1, 2, 5, 4, 6] and runs[2] == (5, 5, 5)

    def found(margin):
        symbols = [vocab[label] for label, _, _ in runs]
        return heard_hotwords(index, runs, log_probs, symbols, targets, 0, margin, None)

    assert found(5.0) == (["said"] if doubt > 0.1 else [])
    assert found(0.0) == [] and found(None) == ["said"]
    # a name with a word the lexicon lacks (the neutral rule: a wildcard) gives the check nothing to weigh: kept
    neutral = CTCTargets(vocab, Phonemizer(words, {}, oov="neutral"))
    index = HotwordIndex.from_phonemes({"said zorb": words["said"].split()}, max_edits=1, phonemes_per_edit=3)
    symbols = [vocab[label] for label, _, _ in runs]
    assert heard_hotwords(index, runs, log_probs, symbols, neutral, 0, 0.0, None) == ["said zorb"]
    assert DecodingOptions(hotword_margin=None).hotword_margin is None
    with pytest.raises(DecodingOptionError, match="hotword_margin"):
        DecodingOptions(hotword_margin=-1)


def _counted_search_cases(tiny_model_and_processor, monkeypatch):
    """The extensions each search scores (a list the searches append to), the processor, two noise clips, and
    (model, allowed tokens), CTC weight: planted English and Mandarin hearing, and the untrained model."""
    import modeling.generation_entropy_asr as generation

    scored = []
    run = generation.JointSearch.run

    def counting(self, *args, **kwargs):
        out = run(self, *args, **kwargs)
        scored.append(self.scored)
        return out

    monkeypatch.setattr(generation.JointSearch, "run", counting)
    clips = [synth_clip(4.0, seed=1), synth_clip(4.0, seed=2)]
    cases = [
        (hearing_model(tiny_model_and_processor, text), 0.5) for text in ("call john smith", "打电话给张伟")
    ]
    cases.append(((tiny_model_and_processor[0], None), 0.3))
    return scored, tiny_model_and_processor[1], clips, cases


def _search_options(weight: float, allowed, beam_size: int = 4) -> dict:
    """The joint search on a case of `_counted_search_cases`: every allowed token proposed (30 for the untrained
    model), no gates."""
    return dict(
        ctc_weight=weight, beam_size=beam_size, ctc_candidates=len(allowed or ()) or 30, use_gates=False
    )


def _off_and_on(monkeypatch, switch: str, decode, *args) -> dict:
    """{False: decode(*args), True: decode(*args)}, with the `JointSearch` switch `switch` off, then on."""
    import modeling.generation_entropy_asr as generation

    results = {}
    for on in (False, True):
        monkeypatch.setattr(generation.JointSearch, switch, on)
        results[on] = decode(*args)
    return results


def _texts(model, processor, clips, options: dict) -> list[str]:
    return [r["text"] for r in model.transcribe(clips, processor, **options)]


def _watch_beams(monkeypatch) -> tuple[list, list]:
    """Every step's beam of each clip as the search selects it ((tokens, score, inside a character) per
    hypothesis), and the hypotheses each `_score` call made: two lists the searches append to."""
    import modeling.generation_entropy_asr as generation

    beams, made = [], []
    score = generation.JointSearch._score

    def watching(self, *args, **kwargs):
        live, states = score(self, *args, **kwargs)
        made.append(sum(map(len, live.values())))
        for hyps in live.values():
            beam = self._select(sorted(hyps, key=lambda h: -h.score))
            beams.append([(tuple(h.tokens), h.score, h.pending) for h in beam])
        return live, states

    monkeypatch.setattr(generation.JointSearch, "_score", watching)
    return beams, made


def test_reading_a_label_ahead_changes_no_transcript_and_scores_fewer_extensions(
    tiny_model_and_processor, monkeypatch
):
    """The lookahead bound only skips extensions that could not have entered the beam: the same transcripts
    (planted English and Mandarin hearing, and the untrained model on noise) with fewer extensions scored where
    the CTC head hears something (the untrained one's posteriors are flat: nothing to read ahead)."""
    scored, processor, clips, cases = _counted_search_cases(tiny_model_and_processor, monkeypatch)

    def decode(model, options):
        scored.clear()
        return _texts(model, processor, clips, options), sum(scored)

    for (model, allowed), weight in cases:
        results = _off_and_on(monkeypatch, "lookahead", decode, model, _search_options(weight, allowed))
        assert results[True][0] == results[False][0]
        if allowed is None:
            assert results[True][1] <= results[False][1]
        else:
            assert results[True][1] < results[False][1], results


def test_byte_tokens_decoded_after_the_last_whole_character_read_as_the_whole_hypothesis(
    tiny_model_and_processor, monkeypatch
):
    """A token inside a character is decoded from the text before that character and the tokens since (cached):
    every such text equals the tokenizer's decoding of the whole hypothesis, most of them come that way, and the
    transcripts are those of decoding whole hypotheses throughout (planted English and Mandarin hearing, and the
    untrained model on noise, whose proposals hold many byte tokens)."""
    import modeling.generation_entropy_asr as generation

    calls = []
    decode_after = generation.JointSearch._decode_after

    def checked(self, hyp, token):
        text = decode_after(self, hyp, token)
        calls.append((self.decode_tails, bool(hyp.before_open), text, hyp.tokens + [token]))
        return text

    monkeypatch.setattr(generation.JointSearch, "_decode_after", checked)
    _, processor, clips, cases = _counted_search_cases(tiny_model_and_processor, monkeypatch)
    for (model, allowed), weight in cases:
        options = _search_options(weight, allowed)
        texts = _off_and_on(monkeypatch, "decode_tails", _texts, model, processor, clips, options)
        assert texts[True] == texts[False]
    tokenizer = processor.tokenizer
    assert all(text == tokenizer.decode(ids, skip_special_tokens=True) for _, _, text, ids in calls)
    with_tails = [after_text for tails, after_text, _, _ in calls if tails]
    assert sum(with_tails) > 100 and sum(with_tails) > 0.8 * len(with_tails), (
        sum(with_tails),
        len(with_tails),
    )


def test_a_beam_margin_drops_hypotheses_far_below_the_best_and_its_floors_only_skip_work(
    tiny_model_and_processor, monkeypatch
):
    """`beam_margin`: no hypothesis kept more than the margin below its clip's best whole-character one. Its
    floors (extensions skipped before scoring, CTC rows ruled out) change no transcript: the same ones as a search
    that drops hypotheses in `_select` alone (planted English and Mandarin hearing, and the untrained model on
    noise), with no more extensions scored (fewer where the planted English hearing leaves several hypotheses
    within 10), and no more than without a margin. A margin wider than any gap is no margin: the same transcripts
    and work as None."""
    import modeling.generation_entropy_asr as generation

    beams, _ = _watch_beams(monkeypatch)
    monkeypatch.setattr(generation, "FIRST_CHUNK", 1)  # extensions scored in more rounds: more floors to set
    scored, processor, clips, cases = _counted_search_cases(tiny_model_and_processor, monkeypatch)

    def decode(model, options, beam_margin):
        """Transcripts, extensions scored, the widest gap below a beam's best, every step's beams."""
        scored.clear()
        beams.clear()
        texts = [r["text"] for r in model.transcribe(clips, processor, **options, beam_margin=beam_margin)]
        gap = max(
            max(s for _, s, pending in beam if not pending) - s
            for beam in beams
            for _, s, pending in beam
            if not pending
        )
        return texts, sum(scored), gap, list(beams)

    for (model, allowed), weight in cases:
        options = _search_options(weight, allowed, beam_size=6)
        wide, plain = decode(model, options, None), decode(model, options, 1e6)
        assert plain[:2] == wide[:2] and plain[3] == wide[3]
        assert wide[2] > 1.0  # without a margin, hypotheses further than 1 below the best are kept
        for margin in (1.0, 10.0) if wide[2] > 10.0 else (1.0,):  # (10 is no margin where no gap is wider)
            results = _off_and_on(monkeypatch, "margin_floors", decode, model, options, margin)
            assert results[False][2] <= margin and results[True][2] <= margin
            assert results[True][0] == results[False][0]
            assert results[True][3] == results[False][3]  # every step's beams, scores to the bit
            assert results[True][1] <= results[False][1] <= wide[1]
            if margin == 10.0 and wide[0][0] == "call john smith":  # here the floors skip work
                assert results[True][1] < results[False][1] < wide[1], (
                    {k: v[:3] for k, v in results.items()},
                    wide[:3],
                )


def test_hypotheses_are_made_only_of_extensions_the_beam_could_keep(tiny_model_and_processor, monkeypatch):
    """A scored extension that `_select` could not keep (below the beam's best whole-character ones, or below
    the best half beam of those inside a character) makes no hypothesis and no CTC state: every step's beams,
    scores to the bit, and the transcripts equal a search that makes them all (planted English and Mandarin
    hearing, and the untrained model on noise, whose beams hold broken characters), with far fewer made; beams
    of one (nothing inside a character kept) and of six."""
    import modeling.generation_entropy_asr as generation

    beams, made = _watch_beams(monkeypatch)
    monkeypatch.setattr(generation, "FIRST_CHUNK", 1)  # more rounds: earlier rounds' hypotheses in the way
    _, processor, clips, cases = _counted_search_cases(tiny_model_and_processor, monkeypatch)
    pending, totals = 0, [0, 0]  # hypotheses inside a character in the beams; hypotheses made (all, pruned)

    def decode(model, options):
        beams.clear(), made.clear()
        return _texts(model, processor, clips, options), list(beams), sum(made)

    for (model, allowed), weight in cases:
        for beam_size in (1, 6):
            results = _off_and_on(
                monkeypatch, "prune_children", decode, model, _search_options(weight, allowed, beam_size)
            )
            assert results[True][:2] == results[False][:2]
            assert results[True][2] < results[False][2], (results[True][2], results[False][2])
            totals = [t + results[prune][2] for t, prune in zip(totals, (False, True))]
            pending += sum(p for beam in results[True][1] for _, _, p in beam)
    assert totals[1] < totals[0] / 2, totals
    assert pending > 0  # beams inside a character were compared too


def test_scans_left_for_the_extensions_that_go_on_change_no_beam(tiny_model_and_processor, monkeypatch):
    """The scans of an extension's last label, done only for those that make a hypothesis or end a transcript
    (`defer_scans`): every step's beams, scores to the bit, the CTC states of the hypotheses made, and the
    transcripts equal a search that scans all (planted English and Mandarin hearing, and the untrained model on
    noise; beams of one and six)."""
    import modeling.generation_entropy_asr as generation

    beams, _ = _watch_beams(monkeypatch)
    states, score = [], generation.JointSearch._score

    def recording(self, *args, **kwargs):
        live, grown = score(self, *args, **kwargs)
        states.append(None if grown is None else [column.clone() for column in grown.columns()])
        return live, grown

    monkeypatch.setattr(generation.JointSearch, "_score", recording)
    _, processor, clips, cases = _counted_search_cases(tiny_model_and_processor, monkeypatch)

    def decode(model, options):
        beams.clear(), states.clear()
        return _texts(model, processor, clips, options), list(beams), list(states)

    def same(a, b):
        return (a is None) == (b is None) and (a is None or all(map(torch.equal, a, b)))

    for (model, allowed), weight in cases:
        for beam_size in (1, 6):
            options = _search_options(weight, allowed, beam_size)
            results = _off_and_on(monkeypatch, "defer_scans", decode, model, options)
            assert results[True][:2] == results[False][:2]
            assert len(results[True][1]) > 5 and len(results[True][2]) == len(results[False][2])
            assert all(map(same, results[True][2], results[False][2]))


def test_one_hypothesis_one_proposal_is_greedy_decoding(tiny_model_and_processor, monkeypatch):
    """With one hypothesis and one proposal (every extension accepted: the untrained model writes broken
    characters) the search is the LLM's greedy decoding: the prompt's keys and values, the suppressed tokens,
    EOS and the duration bound are handled as in `generate`, for each clip of a batch."""
    from modeling.generation_entropy_asr import JointSearch

    model, processor = tiny_model_and_processor
    monkeypatch.setattr(
        JointSearch, "_spell", lambda self, hyp, token: ("", 0, [], ((len(hyp.tokens),), False, False))
    )
    eos = model.generation_config.eos_token_id
    special = set(processor.tokenizer.all_special_ids) - {eos}  # the search never proposes these
    clips = [synth_clip(1.0 + 0.4 * seed, seed=seed) for seed in range(8)]
    inputs = processor(audio=clips)
    n = inputs["input_ids"].shape[1]
    expected = []
    for row in model.generate(**inputs, do_sample=False)[:, n:].tolist():
        expected.append(row[: row.index(eos)] if eos in row else row)
    searched = model.transcribe(
        clips, processor, ctc_weight=1e-9, beam_size=1, ctc_candidates=1, use_gates=False
    )
    compared = [(processor.decode(e), r["text"]) for e, r in zip(expected, searched) if not special & set(e)]
    assert len(compared) >= 3 and all(a == b for a, b in compared), compared
    assert max(len(e) for e in expected) > 2


def test_no_speech_gate_as_in_generate(tiny_model_and_processor):
    """The model's no-speech gate empties a clip exactly when `generate`'s does."""
    shared, processor = tiny_model_and_processor
    model = copy.deepcopy(shared)
    clip = synth_clip(1.5, seed=2)
    inputs = processor(audio=[clip])
    n = inputs["input_ids"].shape[1]
    p_end = float(model.no_speech_probability(**inputs)[0])
    options = dict(ctc_weight=0.3, beam_size=2, ctc_candidates=4)
    model.config.no_speech_threshold = None
    ungated = model.transcribe([clip], processor, **options)[0]["text"]
    assert p_end < 0.5 and ungated != ""
    eos = model.generation_config.eos_token_id
    for factor, gated in ((0.99, True), (1.01, False)):
        model.config.no_speech_threshold = p_end * factor
        assert bool(model.generate(**inputs, do_sample=False)[0, n] == eos) is gated
        assert model.transcribe([clip], processor, **options)[0]["text"] == ("" if gated else ungated)
        assert model.transcribe([clip], processor, **options, use_gates=False)[0]["text"] == ungated


def _heard_pieces(search, tokenizer) -> dict[int, str]:
    """Every token of whole characters the CTC head can hear (words, Hanzi, apostrophes, spaces): its text."""
    from modeling.phonemizer_entropy_asr import unspoken

    pieces = {}
    for token in range(len(tokenizer)):
        piece = search._piece(token)
        if piece and not unspoken(piece):
            pieces[token] = piece
    return pieces


def _grown(choices, seed: int, count: int, longest: int, child):
    """(hypothesis, token) along `count` hypotheses grown from the empty one, up to `longest` random choices of
    `choices` each (a choice is a run of tokens), each hypothesis the `child(hypothesis, token)` of the one
    before; a child of None ends that hypothesis."""
    import random

    from modeling.generation_entropy_asr import _Hyp

    rng = random.Random(seed)
    for _ in range(count):
        hyp = _Hyp([], 0.0, 0.0, 0, (), 0.0, "", ((), False, False), row=0, ranked_row=1)
        for _ in range(rng.randint(1, longest)):
            for token in rng.choice(choices):
                yield hyp, token
                hyp = child(hyp, token)
                if hyp is None:
                    break
            if hyp is None:
                break


def test_spelling_unit_by_unit_equals_spelling_the_whole_text(tiny_model_and_processor):
    """Hypotheses grown token by token from words, Hanzi (whole tokens, and characters the tokenizer writes in
    several byte tokens), digits and spaces of the tokenizer: the incremental spelling (`_spell_after`) gives
    what spelling the whole transcript again gives, at every step, for every unit not yet committed to the CTC
    state (a committed unit keeps its targets: a digit string read in English before a Hanzi arrived stays so
    in the state, and the finished transcript is spelled again whole)."""
    from modeling.generation_entropy_asr import JointSearch, _ctc_targets, _Hyp
    from modeling.phonemizer_entropy_asr import is_hanzi

    model, processor = tiny_model_and_processor
    tokenizer = processor.tokenizer
    search = JointSearch(model, tokenizer, _ctc_targets(processor), DecodingOptions())
    pieces = _heard_pieces(search, tokenizer)
    kinds = {(search._piece_kind(t, p) or ("other",))[0] for t, p in pieces.items()}
    assert kinds == {"word", "hanzi", "other"} and len(pieces) > 200
    assert any("'" in p for p in pieces.values())
    in_bytes = []  # Hanzi of the phonemizer that the tokenizer writes in several tokens, none a whole character
    for char in map(chr, range(0x4E00, 0x9FA6)):
        if not processor.phonemizer.hanzi_readings(char):
            continue
        ids = tokenizer.encode(char, add_special_tokens=False)
        if len(ids) > 1 and all(search._piece(t) is None for t in ids) and tokenizer.decode(ids) == char:
            in_bytes.append(tuple(ids))
    assert len(in_bytes) > 20
    in_bytes = in_bytes[:: len(in_bytes) // 20]
    choices = [(t,) for t in sorted(pieces)]
    choices += in_bytes * (len(choices) // (4 * len(in_bytes)))  # about one choice in five
    seen = {"piece": 0, "byte": 0, "finishes a Hanzi": 0}
    fast_used = 0

    def child(hyp, token):
        nonlocal fast_used
        fast = search._spell(hyp, token)
        piece = pieces.get(token)
        saved = search._spell_after
        search._spell_after = lambda h, k: None  # the whole text spelled again
        full = search._spell(hyp, token)
        search._spell_after = saved
        if full is None:
            assert fast is None
            return None
        assert fast[0] == full[0] and fast[1] == full[1] and fast[3] == full[3]
        fresh = slice(hyp.units, None)
        assert [tuple(t) for t in fast[2][fresh]] == [tuple(t) for t in full[2][fresh]], (full[0], fast, full)
        text, complete, targets, spoken = full
        finished = not piece and hyp.pending and is_hanzi(text[-1:])
        seen["piece" if piece else "finishes a Hanzi" if finished else "byte"] += 1
        kind = ("hanzi", text[len(hyp.text) :]) if finished else piece and search._piece_kind(token, piece)
        fast_used += kind is not None and search._spell_after(hyp, kind) is not None
        return _Hyp(hyp.tokens + [token], 0.0, 0.0, complete, (), 0.0, text, spoken,
                    unit_targets=tuple(tuple(t) for t in targets))  # fmt: skip

    for _ in _grown(choices, 0, 150, 8, child):
        pass
    assert seen["piece"] > 400 and seen["byte"] > 50 and seen["finishes a Hanzi"] > 50, seen
    assert fast_used > 0.6 * (seen["piece"] + seen["finishes a Hanzi"]), (seen, fast_used)


def test_a_token_scored_from_its_own_labels_is_scored_as_its_spelling(tiny_model_and_processor):
    """Where the lookahead finds what a token adds right after what its hypothesis was ranked with (a unit it
    begins, or the word being written, longer), the search scores it from labels without spelling the text
    (`_unspelled`): on hypotheses grown token by token (words, Hanzi, spaces), those are the targets, CTC state
    and units the spelling gives, for every such token of the vocabulary; after a Hanzi, a Hanzi token with a
    character of several readings is left to the spelling (the run can read it otherwise)."""
    from modeling.generation_entropy_asr import JointSearch, _ctc_targets, _Hyp
    from modeling.phonemizer_entropy_asr import is_hanzi

    model, processor = tiny_model_and_processor
    search = JointSearch(model, processor.tokenizer, _ctc_targets(processor), DecodingOptions())
    pieces = _heard_pieces(search, processor.tokenizer)
    tokens = sorted(pieces)
    checked = {"word": 0, "hanzi": 0, "longer word": 0}
    left_to_spelling = 0

    def child(hyp, token):
        ext = search._extension(0, hyp, token, 0.0)
        if ext is None:
            return None
        return _Hyp(hyp.tokens + [token], 0.0, 0.0, ext.units, hyp.committed + ext.new, 0.0, ext.text,
                    ext.spoken, unit_targets=ext.unit_targets, rest=ext.rest, row=0, ranked_row=1)  # fmt: skip

    for hyp, _ in _grown([(t,) for t in tokens], 0, 40, 5, child):
        mode = search._reads_ahead(hyp)
        for token in tokens:
            _, _, begins, _, labels = search._token_info(token)  # as `_bounds` reads it
            known = labels[0] >= 0
            how = 1 if known and (mode == 2 or (mode == 1 and begins)) else 2 if known and mode == 1 else 0
            if not how:
                continue
            fast = search._unspelled(0, hyp, token, 0.0, how)
            spelled = search._extension(0, hyp, token, 0.0)
            if fast is None:
                units = hyp.spoken[0]
                assert units and is_hanzi(units[-1]) and is_hanzi(pieces[token][0])
                left_to_spelling += 1
                continue
            assert spelled is not None, (hyp.text, pieces[token])
            found = (fast.targets, fast.keep, fast.source)
            assert found == (spelled.targets, spelled.keep, spelled.source), (hyp.text, pieces[token])
            assert len(fast.spoken[0]) == len(spelled.spoken[0])
            checked["longer word" if how == 2 else search._piece_kind(token, pieces[token])[0]] += 1
    assert min(checked.values()) > 1000, checked
    assert left_to_spelling > 0


def test_the_search_writes_what_a_character_head_hears(tiny_model_and_processor):
    """The conventional recipe's character CTC head (no phonemizer): the search spells transcripts in characters
    and writes the sentence the head hears."""
    shared, processor = tiny_model_and_processor
    text = "call john smith on his mobile"
    chars = build_char_vocab(TOKENIZER_TEXTS)
    model, allowed = hearing_model(tiny_model_and_processor, text)
    model.config.ctc_vocab_size = len(chars)
    ids = [chars.index(c) for c in ("c a l l | j o h n | s m i t h | o n | h i s | m o b i l e".split())]
    model.model.ctc_head = _FixedCTC(ids, len(chars), model.config.ctc_blank_id)
    characters = copy.copy(processor)
    characters.ctc_vocab, characters.phonemizer = chars, None
    options = dict(ctc_weight=0.5, beam_size=8, ctc_candidates=len(allowed), use_gates=False)
    assert model.transcribe([synth_clip(4.0, seed=1)], characters, **options)[0]["text"] == text


def test_what_needs_a_ctc_head_says_so_on_a_model_without_one(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    headless = copy.copy(processor)
    headless.ctc_vocab, headless.phonemizer = [], None
    clip = [synth_clip(1.0)]
    for options, name in (
        ({"ctc_weight": 0, "return_timestamps": "word"}, "return_timestamps"),
        ({"ctc_weight": 0, "return_phonemes": True}, "return_phonemes"),
        ({"ctc_weight": 0.3}, "ctc_weight"),
    ):
        with pytest.raises(DecodingOptionError, match=f"{name}.*needs a model with a CTC head"):
            model.transcribe(clip, headless, **options)
    assert (
        model.transcribe(clip, headless, ctc_weight=0)[0]["text"]
        == model.transcribe(clip, processor, ctc_weight=0)[0]["text"]
    )


def test_a_clip_decodes_alike_alone_and_beside_longer_ones(tiny_model_and_processor):
    """Frames past a clip's length (padding to the batch's longest) change nothing: a short clip, whose CTC frames
    cannot hold a long transcript, is decoded the same alone and in a batch."""
    model, processor = tiny_model_and_processor
    short, long = synth_clip(0.6, seed=8), synth_clip(2.5, seed=9)
    options = dict(ctc_weight=0.3, beam_size=3, ctc_candidates=12, use_gates=False)
    alone = model.transcribe([short], processor, **options)[0]["text"]
    assert [r["text"] for r in model.transcribe([short, long], processor, **options)][0] == alone


def test_beam_of_one_never_ends_inside_a_character(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    clips = [synth_clip(0.8 + 0.3 * i, seed=20 + i) for i in range(4)]
    texts = [
        r["text"] for r in model.transcribe(clips, processor, ctc_weight=0.3, beam_size=1, ctc_candidates=6)
    ]
    assert not any("\ufffd" in t for t in texts)


def test_a_hotword_the_phonemizer_cannot_read_is_skipped(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    out = model.transcribe([synth_clip(1.0)], processor, ctc_weight=0, hotwords=["张伟", "\u5159"])  # 兙
    assert out[0]["hotwords"] == []  # decoded; the unreadable name is left out of the index
    index = model._hotword_index(processor, model.decoding_options(hotwords=["张伟", "\u5159"]))
    assert index.skipped == ["\u5159"] and len(index) == 1


def test_pipeline_options_from_construction_and_call_merge(tiny_model_and_processor, tiny_pipeline):
    """Options given when the pipeline is built stay in force when a call gives others (max_new_tokens too), and
    a generator of clips decodes in batches."""
    from modeling.pipeline_entropy_asr import EntropyASRPipeline

    model, processor = tiny_model_and_processor
    pipe = EntropyASRPipeline(
        model=model,
        processor=processor,
        task="automatic-speech-recognition",
        device=-1,
        ctc_weight=0,
        max_new_tokens=3,
    )
    clip = synth_clip(1.5, seed=2)
    out = pipe(clip, return_phonemes=True)
    expected = model.transcribe([clip], processor, ctc_weight=0, max_new_tokens=3, return_phonemes=True)[0]
    assert out == expected and len(out["text"]) < len(
        model.transcribe([clip], processor, ctc_weight=0)[0]["text"]
    )
    clips = [synth_clip(1.0 + 0.2 * i, seed=i) for i in range(3)]
    streamed = [r["text"] for r in pipe((c for c in clips), batch_size=2)]
    assert streamed == [r["text"] for r in model.transcribe(clips, processor, ctc_weight=0, max_new_tokens=3)]


@pytest.mark.parametrize(
    "text, prefix",
    # (the tiny tokenizer writes the Mandarin sentence as one token: the whole of it as the prefix, then EOS)
    [("call john smith on his mobile", "call john"), ("打电话给张伟", "打电话给张伟")],
)
def test_a_forced_prefix_is_kept_and_the_search_goes_on_after_it(
    tiny_model_and_processor, text, prefix, monkeypatch
):
    """A streaming session's settled words (`prefixes`): the transcript begins with them and the search writes
    the rest of what the CTC head hears, scoring fewer extensions than from the start; a prefix it cannot spell
    is dropped (the clip decoded without it); clips without one in the batch decode as alone."""
    from modeling.generation_entropy_asr import JointSearch

    model, allowed = hearing_model(tiny_model_and_processor, text)
    processor = tiny_model_and_processor[1]
    clip = synth_clip(4.0, seed=1)
    opts = model.decoding_options(
        None, ctc_weight=0.5, beam_size=8, ctc_candidates=len(allowed), unit_bonus=2.0, use_gates=False
    )
    scored = []
    run = JointSearch.run

    def counting(self, *args, **kwargs):
        out = run(self, *args, **kwargs)
        scored.append(self.scored)
        return out

    monkeypatch.setattr(JointSearch, "run", counting)
    wave = processor.prepare_audio({"array": clip, "sampling_rate": processor.sampling_rate}, long_form=True)
    plain = model._transcribe_waves([wave], processor, opts)[0]["text"]
    assert plain == text
    forced = model._transcribe_waves([wave], processor, opts, prefixes=[prefix])[0]["text"]
    assert forced == text and scored[1] < scored[0]  # fewer extensions scored after the prefix
    assert model._transcribe_waves([wave], processor, opts, prefixes=[""])[0]["text"] == text
    # a prefix the search cannot spell (punctuation: the CTC head cannot score it) is dropped
    assert model._transcribe_waves([wave], processor, opts, prefixes=[prefix + " !?"])[0]["text"] == text
    pair = model._transcribe_waves([wave, wave], processor, opts, prefixes=[prefix, ""])
    assert [r["text"] for r in pair] == [text, text]
    # greedy decoding keeps the prefix too (the LLM alone writes after it)
    greedy = model._transcribe_waves([wave], processor, opts.replace(ctc_weight=0.0), prefixes=[prefix])
    assert greedy[0]["text"].startswith(prefix)
    with pytest.raises(ValueError, match="one per clip"):
        model._transcribe_waves([wave], processor, opts, prefixes=[prefix, prefix])
