"""Joint CTC / LLM beam search: the encoder's CTC head scores what the LLM writes.

The LLM proposes the next tokens (its `candidates` most likely ones per hypothesis); each extended
hypothesis is ranked by `(1 - ctc_weight) * LLM log-probability + ctc_weight * CTC prefix log-probability
+ unit_bonus * units`: the CTC part is the probability under the CTC head that the transcript so far is how the
audio begins (the prefix score of joint CTC/attention decoding, Watanabe et al. 2017, "Hybrid CTC/attention
architecture for end-to-end speech recognition"); the last term, a length bonus per unit written (word, Hanzi,
digit string), offsets both log-probabilities falling with every token, which otherwise lets short hypotheses
the LLM likes crowd out longer ones the audio supports. A finished hypothesis is scored with the full CTC
probability of its transcript (and the bonus), so one that drops or adds words loses, however likely the LLM
finds it.

The CTC head here predicts phonemes (or characters, for the conventional recipe's character head), not the
LLM's tokens, so a transcript is turned into CTC targets first (`CTCTargets`: `training.data.g2p`). That is
done per semantic unit (an English word, a Hanzi, a digit string): a unit is added to the CTC state once it
is complete (a Hanzi at once, a word when the next one starts or the transcript ends). The word still being
written is ranked with the targets of its letters so far, without entering the state, so hypotheses half-way
through a word compete fairly with those that have just finished one. A token that would put anything else in
the transcript (punctuation, symbols, a script the CTC head does not know) is not taken: the CTC head cannot
score it, so nothing would stop it; transcripts come out unpunctuated, as scoring normalises them anyway.

Decoding is per clip; the LLM step runs all live hypotheses of a clip as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import DynamicCache

from training.data.g2p import (
    WORD_SEPARATOR,
    G2PError,
    english_word_phonemes,
    in_dictionary,
    is_hanzi,
    rule_based_phonemes,
    split_units,
    text_to_phonemes,
    unspoken,
)

NEG = -1e30  # log(0) that stays finite under subtraction
REPLACEMENT = "\ufffd"  # what a byte-level token that ends inside a character decodes to

MAX_STALLED = 3  # tokens in a row that add nothing the CTC head scores: the bytes of one 4-byte character
DEFAULT_CTC_WEIGHT = 0.3
DEFAULT_BEAM_SIZE = 8
DEFAULT_CANDIDATES = 50
DEFAULT_UNIT_BONUS = 2.0
# the stop assumes a live hypothesis gains at most this many more units' bonus (see `decode`)
STOP_SLACK_UNITS = 2


def check_ctc_weight(weight: float) -> float:
    weight = float(weight)
    if not math.isfinite(weight) or not 0.0 <= weight < 1.0:
        raise ValueError(f"ctc_weight must be in [0, 1) (0: greedy LLM decoding), got {weight}")
    return weight


def check_unit_bonus(bonus: float) -> float:
    bonus = float(bonus)
    if not math.isfinite(bonus) or bonus < 0:
        raise ValueError(f"unit_bonus must be a finite number >= 0, got {bonus}")
    return bonus


class CTCTargets:
    """A transcript as CTC target ids, each paired with the index of the unit (`split_units`) it comes from.

    A phoneme vocabulary gets the phonemes of `training.data.g2p` (symbols missing from the vocabulary are left
    out), found unit by unit and cached: an English word alone, a run of Hanzi together (polyphones are read in
    context), digits as Mandarin numerals when the transcript holds Hanzi. A character vocabulary (one that holds
    the word separator `|`) gets letters and Hanzi, with `|` before a unit when either it or the one before is
    not a Hanzi (as `text_to_chars`). `targets(text, partial=True)` treats the last unit as a word still being
    written: its letters so far are read by the letter rules (`rule_based_phonemes`), unless they already
    spell a dictionary word, instead of asking espeak-ng about every fragment."""

    def __init__(self, vocab: Sequence[str]):
        if not vocab:
            raise ValueError("joint CTC decoding needs a model whose processor has a CTC vocabulary")
        self.ids = {s: i for i, s in enumerate(vocab)}
        self.characters = WORD_SEPARATOR in self.ids
        self._word = lru_cache(maxsize=100_000)(self._word)
        self._hanzi_run = lru_cache(maxsize=100_000)(self._hanzi_run)

    def _encode(self, symbols: Sequence[str]) -> tuple[int, ...]:
        return tuple(self.ids[s] for s in symbols if s in self.ids)

    def _word(self, word: str, mandarin_digits: bool, partial: bool) -> tuple[int, ...]:
        if word.isdigit():
            return self._encode(p for p, _ in text_to_phonemes(word, "zh" if mandarin_digits else "en"))
        if partial and not in_dictionary(word):
            return self._encode(rule_based_phonemes(word))
        return self._encode(english_word_phonemes(word))

    def _hanzi_run(self, run: str) -> tuple[tuple[int, ...], ...] | None:
        try:
            phonemes = text_to_phonemes(run)
        except G2PError:
            return None
        per_char: list[list[str]] = [[] for _ in run]
        for p, i in phonemes:
            per_char[i].append(p)
        return tuple(self._encode(p) for p in per_char)

    def targets(self, text: str, partial: bool = False) -> tuple[list[str], list[tuple[int, ...]]] | None:
        """(units, target ids per unit) of `text`, or None when it cannot be spelled (a Hanzi without a reading)."""
        units = split_units(text)
        hanzi = [is_hanzi(u) for u in units]
        if self.characters:
            out = []
            for i, unit in enumerate(units):
                separator = (self.ids[WORD_SEPARATOR],) if i and not (hanzi[i] and hanzi[i - 1]) else ()
                out.append(separator + tuple(self.ids[c] for c in unit if c in self.ids))
            return units, out
        out, i, mandarin = [], 0, any(hanzi)
        while i < len(units):
            if hanzi[i]:
                j = i
                while j < len(units) and hanzi[j]:
                    j += 1
                run = self._hanzi_run("".join(units[i:j]))
                if run is None:
                    return None
                out.extend(run)
                i = j
            else:
                out.append(self._word(units[i], mandarin, partial and i == len(units) - 1))
                i += 1
        return units, out


@dataclass
class _State:
    """CTC prefix state of one hypothesis: log-probabilities of the prefix ending at each frame in a non-blank
    (`rn`) or blank (`rb`) label, the last target, and the prefix score (`psi`)."""

    rn: torch.Tensor
    rb: torch.Tensor
    last: int
    psi: float


class CTCPrefixScorer:
    """Prefix scores of target sequences under one clip's CTC log-probabilities (T, V), batched over hypotheses."""

    def __init__(self, log_probs: torch.Tensor, blank: int):
        self.log_probs = log_probs.double().clamp(min=-1e4)  # (T, V)
        self.T = log_probs.shape[0]
        self.blank_cum = torch.cumsum(self.log_probs[:, blank], 0)  # log P(blank at every frame up to t)
        self._neg = torch.full((1,), NEG, dtype=torch.float64, device=log_probs.device)

    def initial(self) -> _State:
        return _State(torch.full((self.T,), NEG, dtype=torch.float64, device=self.blank_cum.device),
                      self.blank_cum.clone(), -1, 0.0)  # fmt: skip

    def final(self, state: _State) -> float:
        """log P(the audio | exactly these targets)."""
        return float(torch.logaddexp(state.rn[-1], state.rb[-1]))

    def extend(self, states: Sequence[_State], targets: Sequence[Sequence[int]]) -> list[_State]:
        """Each state extended by its target sequence (possibly empty), all at once."""
        n = len(states)
        if n == 0:
            return []
        lengths = [len(t) for t in targets]
        if max(lengths) == 0:
            return list(states)
        rn = torch.stack([s.rn for s in states])
        rb = torch.stack([s.rb for s in states])
        last = torch.tensor([s.last for s in states], device=rn.device)
        psi = torch.tensor([s.psi for s in states], dtype=torch.float64, device=rn.device)
        length = torch.tensor(lengths, device=rn.device)
        width = max(lengths)
        padded = torch.tensor([list(t) + [0] * (width - len(t)) for t in targets], device=rn.device)
        neg = self._neg.expand(n, 1)
        for j in range(width):
            active = length > j
            c = padded[:, j]
            yc = self.log_probs[:, c].T  # (n, T)
            phi = torch.where((c == last)[:, None], rb, torch.logaddexp(rn, rb))
            cum = torch.cumsum(yc, 1)
            start = (last < 0)[:, None]
            # r_n'[t] = yc[t] + logaddexp(r_n'[t-1], phi[t-1]); an empty prefix may start at frame 0
            shifted = torch.cat([torch.where(start, 0.0, NEG), (phi - cum)[:, :-1]], 1)
            new_rn = cum + torch.logcumsumexp(shifted, 1)
            first = torch.where(start, new_rn[:, :1], neg)
            new_psi = torch.logsumexp(torch.cat([first, phi[:, :-1] + yc[:, 1:]], 1), 1)
            # r_b'[t] = y_blank[t] + logaddexp(r_b'[t-1], r_n'[t-1]), r_b'[0] = 0 probability
            shifted_b = torch.cat([neg, (new_rn - self.blank_cum)[:, :-1]], 1)
            new_rb = self.blank_cum + torch.logcumsumexp(shifted_b, 1)
            rn = torch.where(active[:, None], new_rn, rn)
            rb = torch.where(active[:, None], new_rb, rb)
            psi = torch.where(active, new_psi, psi)
            last = torch.where(active, c, last)
        return [_State(rn[i], rb[i], int(last[i]), float(psi[i])) for i in range(n)]


@dataclass
class _Hypothesis:
    tokens: list[int]
    lm: float  # LLM log-probability of the tokens
    state: _State  # CTC state over the complete units
    units: int  # how many units the state holds
    score: float  # ranking score
    spoken: tuple = ()  # what the transcript says: its units, and whether it ends in a space
    stalled: int = 0  # tokens in a row that added nothing to it (the bytes of one character, at most)

    @property
    def units_written(self) -> int:
        """Units the transcript holds, the one being written included (what the unit bonus counts)."""
        return len(self.spoken[0]) if self.spoken else 0


class JointCTCDecoder:
    """Beam search over an `EntropyASRForConditionalGeneration` with its CTC head as second scorer (module
    docstring). `decode` takes one clip's processor inputs and returns its token ids.

    `unit_bonus` is the length bonus per unit written (module docstring); 0 leaves it out. On the demo's dev
    split, with its models of two corpus versions: 0 -> 14.1% / 17.8% CER, 1 -> 10.4% / 13.2%, 2 -> 10.1% /
    11.9%, 3 -> 9.7% / 14.8% (100 / 60 Mandarin utterances); English WER 4.3%, 3.9% (2), 3.6% (3), 5.3% (5).

    `byte_characters=False` leaves out characters the tokenizer spells only byte by byte (with the demo's
    tokenizer: Hanzi its training text never had). The CTC head cannot score such a character before its last
    byte, so those hypotheses go unscored for a step or more; while allowed (the default), at most half of the
    beam may end inside a character. On the demo's model leaving them out helped on 200 dev utterances (CER 14.0%
    -> 12.6%) and hurt on the test split (11.7% -> 13.1%), whose unseen names need rare characters.
    """

    def __init__(
        self,
        model,
        processor,
        ctc_weight: float = DEFAULT_CTC_WEIGHT,
        beam_size: int = DEFAULT_BEAM_SIZE,
        candidates: int = DEFAULT_CANDIDATES,
        byte_characters: bool = True,
        unit_bonus: float = DEFAULT_UNIT_BONUS,
    ):
        self.ctc_weight = check_ctc_weight(ctc_weight)
        if self.ctc_weight == 0:
            raise ValueError("ctc_weight 0 is plain LLM decoding: use the model's generate")
        if int(beam_size) < 1 or int(candidates) < 1:
            raise ValueError(f"beam_size and candidates must be >= 1, got {beam_size} and {candidates}")
        self.model, self.processor = model, processor
        self.beam_size, self.candidates = int(beam_size), int(candidates)
        self.unit_bonus = check_unit_bonus(unit_bonus)
        self._token_units: dict[int, int] = {}
        self.targets = CTCTargets(processor.ctc_vocab).targets
        self.byte_characters = bool(byte_characters)
        self.tokenizer = processor.tokenizer
        eos = model.generation_config.eos_token_id
        self.eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        if self.eos is None:
            raise ValueError("the model's generation config has no eos_token_id")

    def _score(self, lm: float, ctc: float) -> float:
        return (1.0 - self.ctc_weight) * lm + self.ctc_weight * ctc

    def _split(
        self, text: str, final: bool, inside: bool = False
    ) -> tuple[int, list[tuple[int, ...]], tuple] | None:
        """(complete units, target ids per unit, what it says) of a transcript so far (`inside`: followed by
        the first bytes of a character), or None for one that cannot be one."""
        open_word = not final and not text[-1:].isspace()
        spelled = self.targets(text, partial=open_word)
        if spelled is None:
            return None
        units, targets = spelled
        complete = len(units)
        if open_word and units and not is_hanzi(units[-1]):  # a word or number may go on in the next token
            complete -= 1
        return complete, targets, (tuple(units), text[-1:].isspace(), inside)

    def _heard(self, inputs) -> bool:
        """False when the model's no-speech settings end this clip at once (as its `generate` does)."""
        config = self.model.config
        if config.min_speech_confidence is None:
            return True
        confidence = self.model.speech_confidence(inputs["input_features"], inputs.get("input_features_mask"))
        return bool(confidence[0] >= config.min_speech_confidence)

    def _spelled(self, hyp: _Hypothesis, token: int) -> tuple[int, list[tuple[int, ...]], tuple] | None:
        """`_split` of the hypothesis extended by `token` (EOS: the hypothesis as it stands, complete)."""
        end = token == self.eos
        text = self.tokenizer.decode(hyp.tokens if end else hyp.tokens + [token], skip_special_tokens=True)
        # one replacement character at the end: a character whose last bytes are still to come
        inside = text.endswith(REPLACEMENT) and not end
        if inside and not self.byte_characters:
            return None  # left out (see the class docstring)
        body = text[:-1] if inside else text
        if REPLACEMENT in body or unspoken(body):
            return None  # a broken character, or what the CTC head cannot hear (punctuation, symbols)
        return self._split(body, final=end, inside=inside)

    def _expand(self, proposals: list, scorer: CTCPrefixScorer, finished: list) -> list[_Hypothesis]:
        """Scores the proposed (hypothesis, token, LLM log-probability) extensions, appending those that end to
        `finished`; returns the live ones. A prefix's CTC probability only falls as it grows, so a proposal's
        score is at most its LLM part plus its hypothesis's CTC prefix score: proposals are taken best bound first
        in chunks (endings first, all of them), and the rest skipped once the beam is full of hypotheses no
        remaining bound can beat."""
        # endings are all scored (one may win once the live hypotheses fall); then the rest by bound
        bound = [
            math.inf
            if token == self.eos
            else self._score(lm, hyp.state.psi)
            + self.unit_bonus * hyp.units_written
            + self._most_units(token)
            for hyp, token, lm in proposals
        ]
        order = sorted(range(len(proposals)), key=lambda i: -bound[i])
        chunk = max(4 * self.beam_size, 32)
        live: list[_Hypothesis] = []
        for first in range(0, len(order), chunk):
            if len(live) >= self.beam_size:
                live = self._select(sorted(live, key=lambda h: -h.score))
                if len(live) == self.beam_size and live[-1].score >= bound[order[first]]:
                    break
            batch = []
            for i in order[first : first + chunk]:
                hyp, token, lm = proposals[i]
                spelled = self._spelled(hyp, token)
                if spelled is None:
                    continue
                stalled = 0 if spelled[2] != hyp.spoken else hyp.stalled + 1
                if token == self.eos or stalled <= MAX_STALLED:
                    complete, targets, spoken = spelled  # a unit once complete stays in the state
                    batch.append((hyp, token, lm, max(complete, hyp.units), targets, spoken, stalled))
            # complete units enter the state; the unit being written only ranks the hypothesis
            states = scorer.extend(
                [h.state for h, *_ in batch],
                [[t for unit in targets[h.units : n] for t in unit] for h, _, _, n, targets, _, _ in batch],
            )
            ranked = scorer.extend(
                states, [[t for unit in targets[n:] for t in unit] for _, _, _, n, targets, _, _ in batch]
            )
            for (hyp, token, lm, n, targets, spoken, stalled), state, rank in zip(batch, states, ranked):
                if (
                    token == self.eos
                ):  # spelled again whole: a later Hanzi can change an earlier one's reading
                    whole = scorer.extend([scorer.initial()], [[t for unit in targets for t in unit]])[0]
                    final = self._score(lm, scorer.final(whole)) + self.unit_bonus * len(spoken[0])
                    finished.append((final, hyp.tokens))
                else:
                    score = self._score(lm, rank.psi) + self.unit_bonus * len(spoken[0])
                    live.append(_Hypothesis(hyp.tokens + [token], lm, state, n, score, spoken, stalled))
        return live

    def _most_units(self, token: int) -> float:
        """The most the unit bonus can add for `token`: its own units, one more for a character or word its
        first bytes or letters complete (cached)."""
        if token not in self._token_units:
            self._token_units[token] = len(split_units(self.tokenizer.decode([token]))) + 1
        return self.unit_bonus * self._token_units[token]

    def _select(self, ranked: list[_Hypothesis]) -> list[_Hypothesis]:
        """The beam from hypotheses best first. At most half of it may end inside a character (byte-level tokens
        still to come): those are ranked without the character they will be, so they would crowd out the rest."""
        beam, open_chars = [], 0
        for hyp in ranked:
            if len(beam) == self.beam_size:
                break
            inside = bool(hyp.spoken) and hyp.spoken[2]
            if inside and open_chars >= max(1, self.beam_size // 2):
                continue
            open_chars += bool(inside)
            beam.append(hyp)
        return beam

    @torch.inference_mode()
    def decode(self, inputs, logits_processor=None, max_new_tokens: int | None = None) -> list[int]:
        """Token ids (without EOS) of one clip. `inputs`: the processor's output for a single clip;
        `logits_processor`: applied to the LLM's next-token scores (rows: the live hypotheses, prompt included in
        their input_ids, as in `generate`)."""
        model = self.model
        if inputs["input_ids"].shape[0] != 1:
            raise ValueError("JointCTCDecoder.decode takes one clip at a time")
        if not self._heard(inputs):
            return []
        features, mask = inputs["input_features"], inputs.get("input_features_mask")
        audio, counts, hidden, lengths = model.model.get_audio_features(features, mask)
        log_probs = model.model.ctc_head(hidden)[0, : int(lengths[0])].float().log_softmax(-1)
        scorer = CTCPrefixScorer(log_probs, model.config.ctc_blank_id)
        prompt_ids = inputs["input_ids"]
        prompt, _ = model.model.embed_prompt(prompt_ids, audio, counts)
        embed = model.get_input_embeddings()
        language_model = model.model.language_model
        head = language_model(inputs_embeds=prompt, use_cache=True)
        prompt_kv = [(layer.keys, layer.values) for layer in head.cache.layers]
        # suppressed tokens, and special ones but EOS: nothing the CTC head could score
        special = set(self.tokenizer.all_special_ids) - {self.eos}
        generation_suppress = list(model.generation_config.suppress_tokens or [])
        suppress = sorted(special | set(generation_suppress))
        # as generate: the saved generation config's bound, else the clip's duration bound
        if max_new_tokens is None:
            max_new_tokens = model.generation_config.max_new_tokens or int(
                model._duration_bounds(features, mask).reshape(-1)[0]
            )
        threshold = model.config.no_speech_threshold

        beams = [_Hypothesis([], 0.0, scorer.initial(), 0, 0.0)]
        finished: list[tuple[float, list[int]]] = []
        for step in range(max_new_tokens + 1):
            tokens = torch.tensor([h.tokens for h in beams], dtype=torch.long, device=prompt.device)
            tokens = tokens.reshape(len(beams), step)
            if step == 0:
                hidden_lm = head.last_hidden_state[:, -1]
            else:  # the hypotheses' tokens after the prompt's keys and values (computed once)
                cache = DynamicCache(config=model.config.text_config)
                for i, (keys, values) in enumerate(prompt_kv):
                    cache.update(
                        keys.expand(len(beams), -1, -1, -1), values.expand(len(beams), -1, -1, -1), i
                    )
                positions = torch.arange(prompt.shape[1], prompt.shape[1] + step, device=prompt.device)
                out = language_model(
                    inputs_embeds=embed(tokens),
                    position_ids=positions.expand(len(beams), -1),
                    cache=cache,
                    use_cache=True,
                )
                hidden_lm = out.last_hidden_state[:, -1]
            logits = model.lm_head(hidden_lm).float()
            if generation_suppress:
                logits[:, generation_suppress] = -math.inf
            if step == 0 and threshold is not None:  # the no-speech gate sees what generate's sees
                if float(logits.log_softmax(-1)[0, self.eos].exp()) >= threshold:
                    return []
            logits[:, suppress] = -math.inf
            log_p = logits.log_softmax(-1)
            if (
                logits_processor
            ):  # biases (hotwords), then normalised again: the LLM's part stays a log-probability
                ids = torch.cat([prompt_ids.expand(len(beams), -1), tokens], 1)
                log_p = logits_processor(ids, log_p.clone()).log_softmax(-1)
            if step == max_new_tokens:  # the duration bound: every hypothesis ends here
                top_v, top_i = log_p[:, self.eos : self.eos + 1], torch.full((len(beams), 1), self.eos)
            else:
                top_v, top_i = log_p.topk(min(self.candidates, log_p.shape[-1]), -1)
            proposals = [
                (hyp, token, hyp.lm + value)
                for row, hyp in enumerate(beams)
                for value, token in zip(top_v[row].tolist(), top_i[row].tolist())
                if value > -math.inf
            ]
            candidates = self._expand(proposals, scorer, finished)
            candidates.sort(key=lambda h: -h.score)
            selected = self._select(candidates)
            if not selected:
                break
            beams = selected
            best_done = max((s for s, _ in finished), default=-math.inf)
            # the committed CTC state bounds a hypothesis's final CTC score (the ranking's guess at the word being
            # written does not), and with the LLM's part a log-probability neither part can grow; the unit bonus
            # can, so the stop is exact only without one: it allows STOP_SLACK_UNITS more units (on 60 dev clips
            # 2, 5 and no stop at all gave the same transcripts, the first 12 times faster than the last)
            if best_done >= max(
                self._score(h.lm, h.state.psi) + self.unit_bonus * (h.units_written + STOP_SLACK_UNITS)
                for h in beams
            ):
                break
        if not finished:  # every hypothesis broke off: keep the best live one
            return beams[0].tokens
        return max(finished, key=lambda f: f[0])[1]
