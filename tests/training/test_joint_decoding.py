"""Joint CTC / LLM beam search (training/joint_decoding.py): the CTC prefix scorer against brute force and
torch's CTC loss, transcripts as CTC targets, and the decoder on the tiny model."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import synth_clip
from training.data.g2p import PhonemeVocab, build_char_vocab, rule_based_phonemes, text_to_phonemes
from training.joint_decoding import CTCPrefixScorer, CTCTargets, JointCTCDecoder, check_ctc_weight


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


def _extend_all(scorer: CTCPrefixScorer, pieces: list[list[int]]):
    state = scorer.initial()
    for piece in pieces:
        state = scorer.extend([state], [piece])[0]
    return state


@pytest.mark.parametrize("prefix", [[1], [2, 2], [1, 2], [2, 1, 2], [1, 1, 1]])
def test_prefix_score_is_the_probability_of_every_continuation(prefix):
    """psi(g) = P(the collapsed CTC output starts with g), summed over all frame paths by brute force."""
    T, V = 5, 3
    lp = _log_probs(T, V, seed=len(prefix) * 7 + sum(prefix))
    total = 0.0
    for path in itertools.product(range(V), repeat=T):
        if _collapse(path)[: len(prefix)] == tuple(prefix):
            total += math.exp(sum(lp[t, s].item() for t, s in enumerate(path)))
    scorer = CTCPrefixScorer(lp, blank=0)
    psi = _extend_all(scorer, [prefix]).psi
    assert total > 0 and psi == pytest.approx(math.log(total), abs=1e-9)
    # one symbol at a time gives the same state
    assert _extend_all(scorer, [[s] for s in prefix]).psi == pytest.approx(psi, abs=1e-9)


@pytest.mark.parametrize("target", [[], [3], [1, 1, 2], [4, 2, 2, 5, 1], [2, 3, 2, 3, 2, 3]])
def test_final_score_is_torch_ctc_log_likelihood(target):
    lp = _log_probs(30, 6, seed=len(target))
    scorer = CTCPrefixScorer(lp, blank=0)
    # extended in uneven pieces, batched with other hypotheses of other lengths
    pieces = [target[:2], target[2:3], [], target[3:]]
    states = [scorer.initial(), scorer.initial()]
    for piece in pieces:
        states = scorer.extend(states, [piece, [1, 2, 3][: len(piece)]])
    if target:
        expected = -F.ctc_loss(
            lp[:, None],
            torch.tensor([target]),
            torch.tensor([30]),
            torch.tensor([len(target)]),
            reduction="sum",
        ).item()
    else:
        expected = lp[:, 0].sum().item()
    assert scorer.final(states[0]) == pytest.approx(expected, abs=1e-8)
    # a prefix is at least as likely as the transcript that is exactly it
    assert states[0].psi >= scorer.final(states[0]) - 1e-9


def test_ctc_targets_of_phonemes_and_characters():
    vocab = PhonemeVocab.default()
    symbols = [vocab.decode([i])[0] for i in range(len(vocab))]
    targets = CTCTargets(symbols)
    units, ids = targets.targets("call 张伟 at 5")
    assert units == ["call", "张", "伟", "at", "5"]
    expected = [[] for _ in units]
    for p, i in text_to_phonemes("call 张伟 at 5"):  # digits read as Mandarin (the text holds Hanzi)
        expected[i].append(vocab.token_to_id(p))
    assert [list(u) for u in ids] == expected
    # a word being written: letter rules for a fragment, the dictionary for a word
    _, partial = targets.targets("call jonat", partial=True)
    assert list(partial[-1]) == vocab.encode(rule_based_phonemes("jonat"))
    _, whole = targets.targets("call john", partial=True)
    assert list(whole[-1]) == vocab.encode(p for p, i in text_to_phonemes("john"))
    assert targets.targets("去\u3402站") is None  # a Hanzi without a reading cannot be a transcript

    chars = build_char_vocab(["play 周杰伦 now"])
    units, ids = CTCTargets(chars).targets("play 周杰伦 now")
    sep = chars.index("|")
    flat = [chars[i] for unit in ids for i in unit]
    assert flat == ["p", "l", "a", "y", "|", "周", "杰", "伦", "|", "n", "o", "w"]
    assert ids[1][0] == sep and ids[2] == (chars.index("杰"),)
    with pytest.raises(ValueError, match="CTC vocabulary"):
        CTCTargets([])


@pytest.mark.parametrize("weight", [-0.1, 1.0, float("nan")])
def test_ctc_weight_is_checked(weight):
    with pytest.raises(ValueError, match="ctc_weight"):
        check_ctc_weight(weight)


def test_one_hypothesis_one_proposal_is_greedy_decoding(tiny_model_and_processor, monkeypatch):
    """With one hypothesis and one proposal (every transcript accepted as progress: the untrained model writes
    broken characters) the search is the LLM's greedy decoding: the prompt's cached keys and values, the
    suppressed tokens, EOS and the duration bound are handled as in `generate`."""
    model, processor = tiny_model_and_processor
    decoder = JointCTCDecoder(model, processor, ctc_weight=1e-9, beam_size=1, candidates=1)
    monkeypatch.setattr(decoder, "_spelled", lambda hyp, token: (0, [], ((len(hyp.tokens),), False, False)))
    eos = model.generation_config.eos_token_id
    special = set(processor.tokenizer.all_special_ids) - {eos}  # the search never proposes these
    lengths = []
    for seed in range(8):
        inputs = processor(audio=[synth_clip(1.0 + 0.4 * seed, seed=seed)])
        n = inputs["input_ids"].shape[1]
        greedy = model.generate(**inputs, do_sample=False)[0, n:].tolist()
        greedy = greedy[: greedy.index(eos)] if eos in greedy else greedy
        if special & set(greedy):
            continue
        assert decoder.decode(inputs) == greedy
        lengths.append(len(greedy))
    assert len(lengths) >= 3 and max(lengths) > 2, lengths


def test_no_speech_gate_as_in_generate(tiny_model_and_processor):
    """The model's no-speech gate empties a clip exactly when `generate`'s does: on the probability of ending at
    once with only the generation config's suppressed tokens left out (not the special tokens the search skips)."""
    shared, processor = tiny_model_and_processor
    model = copy.deepcopy(shared)
    inputs = processor(audio=[synth_clip(1.5, seed=2)])
    n = inputs["input_ids"].shape[1]
    p_end = float(model.no_speech_probability(**inputs)[0])
    decoder = JointCTCDecoder(model, processor, ctc_weight=0.3, beam_size=2, candidates=4)
    model.config.no_speech_threshold = None
    ungated = decoder.decode(inputs)
    assert p_end < 0.5 and ungated != []  # the untrained model does not end at once by itself
    eos = model.generation_config.eos_token_id
    for factor, gated in ((0.99, True), (1.01, False)):
        model.config.no_speech_threshold = p_end * factor
        assert bool(model.generate(**inputs, do_sample=False)[0, n] == eos) is gated
        assert decoder.decode(inputs) == ([] if gated else ungated)


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


def _hearing_model(tiny_model_and_processor, text: str):
    """The tiny model with a bag-of-tokens LM head over the tokenizer's training sentences and a CTC head that
    hears `text`, its inputs for a 4 s clip, and the allowed tokens."""
    from tests.conftest import TOKENIZER_TEXTS

    shared, processor = tiny_model_and_processor
    model = copy.deepcopy(shared)  # heads replaced below
    tokenizer, vocab = processor.tokenizer, processor.ctc_vocab
    allowed = {t for sentence in set(TOKENIZER_TEXTS) for t in tokenizer(sentence)["input_ids"]}
    allowed.add(model.generation_config.eos_token_id)
    ids = [vocab.index(p) for p, _ in text_to_phonemes(text)]
    model.lm_head = _BagOfTokens(allowed, model.config.text_config.vocab_size)
    model.model.ctc_head = _FixedCTC(ids, len(vocab), model.config.ctc_blank_id)
    return model, processor(audio=[synth_clip(4.0, seed=1)]), allowed


@pytest.mark.parametrize("text", ["call john smith on his mobile", "打电话给张伟"])
def test_decoder_writes_what_the_ctc_head_hears(tiny_model_and_processor, text):
    """The LLM allows any order of the tokens of the tokenizer's training sentences; the CTC head hears one
    sentence's phonemes: the search writes that sentence, in order, and stops, with or without the unit bonus;
    and the bound-based pruning leaves the result as scoring every proposal does."""
    model, inputs, allowed = _hearing_model(tiny_model_and_processor, text)
    processor = tiny_model_and_processor[1]
    n = inputs["input_ids"].shape[1]
    greedy = processor.decode(model.generate(**inputs, do_sample=False)[0, n:])
    assert greedy != text  # the LLM alone does not know the order
    for bonus in (0.0, 2.0):
        decoder = JointCTCDecoder(
            model, processor, ctc_weight=0.5, beam_size=8, candidates=len(allowed), unit_bonus=bonus
        )
        tokens = decoder.decode(inputs)
        assert processor.decode(tokens) == text
        decoder._most_units = lambda token: math.inf  # no proposal can be skipped
        assert decoder.decode(inputs) == tokens


def test_unit_bonus_adds_per_unit_to_ranking_and_final_scores(tiny_model_and_processor):
    from training.data.g2p import split_units
    from training.joint_decoding import _Hypothesis

    model, inputs, allowed = _hearing_model(tiny_model_and_processor, "打电话给张伟")
    processor = tiny_model_and_processor[1]
    hidden = torch.zeros(1, 40, 8)
    log_probs = model.model.ctc_head(hidden)[0].log_softmax(-1)
    scorer = CTCPrefixScorer(log_probs, model.config.ctc_blank_id)
    eos = model.generation_config.eos_token_id
    tokens = sorted(allowed - {eos})
    scores, finals = {}, {}
    for bonus in (0.0, 2.0):
        decoder = JointCTCDecoder(model, processor, ctc_weight=0.5, candidates=len(allowed), unit_bonus=bonus)
        decoder.beam_size = len(tokens)  # keep every live hypothesis
        root = _Hypothesis([], 0.0, scorer.initial(), 0, 0.0)
        live = decoder._expand([(root, t, -1.0) for t in tokens], scorer, [])
        scores[bonus] = {tuple(h.tokens): h.score for h in live}
        finished = []
        decoder._expand([(h, eos, h.lm - 0.5) for h in live], scorer, finished)
        finals[bonus] = {tuple(t): s for s, t in finished}
    assert scores[0.0].keys() == scores[2.0].keys() and len(scores[0.0]) >= 10
    units = {t: len(split_units(processor.tokenizer.decode(list(t)))) for t in scores[0.0]}
    assert max(units.values()) >= 3  # tokens of several Hanzi or words
    for t, score in scores[0.0].items():
        assert scores[2.0][t] == pytest.approx(score + 2.0 * units[t])
    assert finals[0.0].keys() == finals[2.0].keys() == scores[0.0].keys()
    for t, final in finals[0.0].items():
        assert finals[2.0][t] == pytest.approx(final + 2.0 * units[t])


@pytest.mark.parametrize("bonus", [-1.0, float("inf"), float("nan")])
def test_unit_bonus_is_checked(tiny_model_and_processor, bonus):
    model, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match="unit_bonus"):
        JointCTCDecoder(model, processor, ctc_weight=0.3, unit_bonus=bonus)


def test_decoder_refuses_what_it_cannot_do(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match="generate"):
        JointCTCDecoder(model, processor, ctc_weight=0.0)
    with pytest.raises(ValueError, match="beam_size"):
        JointCTCDecoder(model, processor, ctc_weight=0.3, beam_size=0)
    decoder = JointCTCDecoder(model, processor, ctc_weight=0.3)
    batch = processor(audio=[synth_clip(1.0), synth_clip(1.2, seed=1)])
    with pytest.raises(ValueError, match="one clip"):
        decoder.decode(batch)


def test_transcriber_and_commands_decode_with_the_ctc_head(
    tmp_path, tiny_model_dir, tiny_corpus, monkeypatch, capsys
):
    """`Transcriber.transcribe(ctc_weight=...)`, `entropy-asr transcribe --ctc-weight` and `entropy-asr evaluate
    --ctc-weight` decode every clip with the joint search (its settings recorded), hotword bias included."""
    import json

    import soundfile as sf

    from training import joint_decoding as J
    from training.cli import main
    from training.inference import Transcriber

    calls, bonuses = [], []
    original = J.JointCTCDecoder.decode

    def spy(self, inputs, logits_processor=None, **kw):
        tokens = original(self, inputs, logits_processor=logits_processor, **kw)
        calls.append((self.ctc_weight, self.beam_size, self.candidates, logits_processor is not None, tokens))
        bonuses.append(self.unit_bonus)
        return tokens

    monkeypatch.setattr(J.JointCTCDecoder, "decode", spy)
    transcriber = Transcriber.from_pretrained(str(tiny_model_dir))
    clips = [synth_clip(1.0), synth_clip(1.6, seed=3)]
    out = transcriber.transcribe(clips, ctc_weight=0.3, beam_size=2, ctc_candidates=4)
    assert [(w, b, c, bias) for w, b, c, bias, _ in calls] == [(0.3, 2, 4, False)] * 2
    assert [r["text"] for r in out] == [transcriber.processor.decode(t) for *_, t in calls]
    assert bonuses == [J.DEFAULT_UNIT_BONUS] * 2
    bonuses.clear()
    transcriber.transcribe(clips[:1], ctc_weight=0.3, unit_bonus=0.5)
    assert bonuses == [0.5]
    with pytest.raises(ValueError, match="unit_bonus"):
        transcriber.transcribe(clips[:1], unit_bonus=0.5)  # without a CTC weight
    calls.clear()
    transcriber.transcribe(clips[:1], context=[["stop here"]], hotword_bonus=2.0, ctc_weight=0.3)
    assert [(w, b, c, bias) for w, b, c, bias, _ in calls] == [
        (0.3, J.DEFAULT_BEAM_SIZE, J.DEFAULT_CANDIDATES, True)
    ]
    with pytest.raises(ValueError, match="generate arguments"):
        transcriber.transcribe(clips[:1], ctc_weight=0.3, max_new_tokens=3)

    clip = tmp_path / "a.wav"
    sf.write(clip, clips[0], 16000)
    base = ["transcribe", "--model", str(tiny_model_dir), str(clip)]
    calls.clear()
    assert main([*base, "--ctc-weight", "0.3", "--beam-size", "2"]) == 0
    assert len(calls) == 1 and calls[0][:3] == (0.3, 2, J.DEFAULT_CANDIDATES)
    capsys.readouterr()
    for bad, message in (
        (["--ctc-weight", "1"], "ctc_weight must be in"),
        (["--beam-size", "2"], "need --ctc-weight"),
        (["--unit-bonus", "1"], "need --ctc-weight"),
        (["--ctc-weight", "0.3", "--unit-bonus", "-1"], "unit_bonus must be"),
    ):
        assert main([*base, *bad]) == 2
        assert message in capsys.readouterr().err

    calls.clear()
    report = tmp_path / "eval"
    args = ["evaluate", "--model", str(tiny_model_dir), "--data", str(tiny_corpus / "dataset"), "--splits", "test",
            "--max-utterances", "3", "--no-analysis", "--out", str(report)]  # fmt: skip
    assert main([*args, "--ctc-weight", "0.25", "--ctc-candidates", "5", "--unit-bonus", "1.5"]) == 0
    result = json.loads((report / "report.json").read_text())
    settings = result["settings"]
    assert (settings["ctc_weight"], settings["beam_size"], settings["ctc_candidates"]) == (0.25, 8, 5)
    assert settings["unit_bonus"] == 1.5 and set(bonuses[-3:]) == {1.5}
    predictions = [row["prediction"] for row in result["splits"]["test"]["predictions"]]
    assert len(calls) == 3 and sorted(predictions) == sorted(
        transcriber.processor.decode(t) for *_, t in calls
    )
    assert main([*args, "--beam-size", "4"]) == 2  # without --ctc-weight


def test_characters_spelled_byte_by_byte_only_when_allowed(tiny_model_and_processor):
    from training.joint_decoding import _Hypothesis

    model, processor = tiny_model_and_processor
    tokenizer = processor.tokenizer
    first_byte = next(t for t in range(len(tokenizer)) if tokenizer.decode([t]) == "\ufffd")
    scorer = CTCPrefixScorer(torch.zeros(4, len(processor.ctc_vocab)).log_softmax(-1), 0)
    empty = _Hypothesis([], 0.0, scorer.initial(), 0, 0.0)
    strict = JointCTCDecoder(model, processor, ctc_weight=0.3, byte_characters=False)
    assert strict._spelled(empty, first_byte) is None
    spelled = JointCTCDecoder(model, processor, ctc_weight=0.3)._spelled(empty, first_byte)  # the default
    assert spelled is not None and spelled[2] == ((), False, True)  # nothing said yet, inside a character
    word = tokenizer("call", add_special_tokens=False)["input_ids"][0]
    assert strict._spelled(empty, word)[2] == (("call",), False, False)
