"""Batched greedy transcription with a saved EntropyASR model (used by the CLI, evaluation and the Space)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from training.hotwords import HotwordIndex

logger = logging.getLogger(__name__)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of `lengths` in batches of `batch_size`, shortest first (similar lengths together: less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def check_hotword_bonus(bonus: float) -> float:
    """`bonus` as a float, or ValueError unless it is finite and >= 0."""
    bonus = float(bonus)
    if not math.isfinite(bonus) or bonus < 0:
        raise ValueError(f"hotword_bonus must be a finite number >= 0, got {bonus}")
    return bonus


def _hotword_bias_class(model) -> type:
    """`HotwordBias` from the model's own code (all the Space has: this file ships there without the repo), else
    from this repository's modeling/ (a model saved before the class existed)."""
    cls = getattr(sys.modules.get(type(model).__module__), "HotwordBias", None)
    if cls is None:
        from modeling.modeling_entropy_asr import HotwordBias as cls
    return cls


def _per_clip_context(context, n: int) -> list[list[str]]:
    """A batch's context as the processor reads it (None or one string for every clip, else one entry per
    clip: None, "a, b" or ["a", "b"]) -> one list of hotwords per clip."""

    def as_list(c) -> list[str]:
        if c is None:
            return []
        if isinstance(c, str):
            return [w.strip() for w in c.split(",") if w.strip()]
        return [w for w in c if w]

    if context is None or isinstance(context, str):
        return [as_list(context) for _ in range(n)]
    context = list(context)
    if len(context) != n:
        raise ValueError(f"Got {len(context)} context entries for {n} audio clips.")
    return [as_list(c) for c in context]


class Transcriber:
    """Loads a model folder (or Hub id) through the Auto classes with its remote code and transcribes."""

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor

    @property
    def has_phoneme_ctc(self) -> bool:
        """A CTC head over phonemes (what hotword retrieval matches against), not characters (a character
        vocabulary holds the word separator `|`; this file ships to the Space alone, so no import for it)."""
        vocab = self.processor.ctc_vocab
        return bool(vocab) and "|" not in vocab

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu") -> Transcriber:
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(path, trust_remote_code=True).to(device)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        return cls(model, processor)

    def _ctc_hypotheses(self, inputs) -> list[list[str]]:
        hyps = self.model.ctc_greedy_decode(inputs["input_features"], inputs["input_features_mask"])
        return [self.processor.decode_ctc(h) for h in hyps]

    @torch.inference_mode()
    def ctc_hypotheses(self, audios: Sequence, sampling_rate: int | None = None) -> list[list[str]]:
        """The CTC head's greedy hypothesis of each clip (phonemes, or characters for a character head), without
        running the LLM. Raises ValueError for a model without a CTC vocabulary."""
        if not self.processor.ctc_vocab:
            raise ValueError("the model's processor has no CTC vocabulary")
        inputs = self.processor(audio=list(audios), sampling_rate=sampling_rate).to(self.model.device)
        return self._ctc_hypotheses(inputs)

    @torch.inference_mode()
    def transcribe(
        self,
        audios: Sequence,
        context: Sequence | str | None = None,
        sampling_rate: int | None = None,
        with_phonemes: bool = True,
        hotwords: HotwordIndex | None = None,
        max_hotwords: int | None = 8,
        hotword_bonus: float = 0.0,
        prompt_hotwords: bool = True,
        ctc_weight: float = 0.0,
        beam_size: int | None = None,
        ctc_candidates: int | None = None,
        unit_bonus: float | None = None,
        **generate_kwargs,
    ) -> list[dict]:
        """One batch of clips -> [{"text", "phonemes"}]. Raises AudioInputError on bad input.

        With `hotwords`, each clip's greedy CTC phoneme hypothesis is looked up in the index first and the
        hotwords found (at most `max_hotwords`) join the clip's context; results then carry "hotwords".
        `hotword_bonus` > 0 also biases decoding towards each clip's context hotwords (the model code's `HotwordBias`, a logits
        processor the model's lean greedy loop applies at every step). `prompt_hotwords=False` keeps the hotwords
        (given and retrieved) out of the prompt, so they act through the bias alone (it then needs a bonus): the
        better choice for a model that context SFT has not taught to read its prompt (README, "Hotwords").

        `ctc_weight` > 0 decodes each clip by joint CTC / LLM beam search (`training.joint_decoding`: the CTC
        head scores what the LLM writes, with this weight; `beam_size` hypotheses, `ctc_candidates` LLM
        proposals each, `unit_bonus` per word or Hanzi written) instead of the model's greedy `generate`; it
        needs a model with a CTC head."""
        hotword_bonus = check_hotword_bonus(hotword_bonus)
        joint = None
        if not ctc_weight and any(v is not None for v in (beam_size, ctc_candidates, unit_bonus)):
            raise ValueError(
                "beam_size, ctc_candidates and unit_bonus are joint CTC decoding settings: give a ctc_weight > 0"
            )
        if ctc_weight:
            joint = self._joint_decoder(ctc_weight, beam_size, ctc_candidates, unit_bonus)
            if generate_kwargs:
                raise ValueError(
                    f"joint CTC decoding takes no generate arguments, got {sorted(generate_kwargs)}"
                )
        audios = list(audios)
        merged = _per_clip_context(context, len(audios))
        if not prompt_hotwords and hotword_bonus == 0 and (any(merged) or hotwords is not None):
            raise ValueError("hotwords kept out of the prompt act only through a hotword_bonus > 0")
        prompt_context = context if prompt_hotwords else None
        inputs = self.processor(audio=audios, context=prompt_context, sampling_rate=sampling_rate)
        inputs = inputs.to(self.model.device)
        phonemes = None
        if (with_phonemes or hotwords is not None) and self.processor.ctc_vocab:
            phonemes = self._ctc_hypotheses(inputs)
        retrieved = None
        if hotwords is not None:
            if phonemes is None or not self.has_phoneme_ctc:
                raise ValueError("hotword retrieval needs a model with a phoneme CTC head")
            retrieved = [hotwords.retrieve(p, max_hotwords) for p in phonemes]
            merged = [g + [w for w in r if w not in g] for g, r in zip(merged, retrieved)]
            if prompt_hotwords:
                inputs = self.processor(
                    audio=audios, context=[m or None for m in merged], sampling_rate=sampling_rate
                ).to(self.model.device)
        if joint is not None:
            prompts = [m or None for m in merged] if prompt_hotwords else [None] * len(audios)
            texts = [
                self._joint_decode(joint, audio, prompt, words, hotword_bonus, sampling_rate)
                for audio, prompt, words in zip(audios, prompts, merged)
            ]
            return self._results(texts, phonemes if with_phonemes else None, retrieved)
        n = inputs["input_ids"].shape[1]
        if hotword_bonus > 0 and any(merged):
            from transformers import LogitsProcessorList

            bias = _hotword_bias_class(self.model)(self.processor.tokenizer, merged, hotword_bonus, n)
            extra = list(generate_kwargs.pop("logits_processor", None) or [])
            generate_kwargs["logits_processor"] = LogitsProcessorList([*extra, bias])
        tokens = self.model.generate(**inputs, do_sample=False, **generate_kwargs)[:, n:]
        texts = self.processor.batch_decode(tokens)
        return self._results(texts, phonemes if with_phonemes else None, retrieved)

    @staticmethod
    def _results(texts: list[str], phonemes: list | None, retrieved: list | None) -> list[dict]:
        results = [{"text": t} for t in texts]
        if phonemes is not None:
            for r, p in zip(results, phonemes):
                r["phonemes"] = " ".join(p)
        if retrieved is not None:
            for r, h in zip(results, retrieved):
                r["hotwords"] = h
        return results

    def _joint_decoder(
        self, ctc_weight: float, beam_size: int | None, candidates: int | None, unit_bonus: float | None
    ):
        """The `JointCTCDecoder` for these settings (kept: it caches the CTC targets of what it has seen)."""
        from training.joint_decoding import (
            DEFAULT_BEAM_SIZE,
            DEFAULT_CANDIDATES,
            DEFAULT_UNIT_BONUS,
            JointCTCDecoder,
        )

        key = (
            float(ctc_weight),
            DEFAULT_BEAM_SIZE if beam_size is None else beam_size,
            DEFAULT_CANDIDATES if candidates is None else candidates,
            DEFAULT_UNIT_BONUS if unit_bonus is None else float(unit_bonus),
        )
        cached = getattr(self, "_joint", None)
        if cached is None or cached[0] != key:
            if not self.processor.ctc_vocab:
                raise ValueError(
                    "joint CTC decoding needs a model with a CTC head (its processor has no CTC vocabulary)"
                )
            weight, beam, proposals, bonus = key
            decoder = JointCTCDecoder(self.model, self.processor, weight, beam, proposals, unit_bonus=bonus)
            self._joint = cached = (key, decoder)
        return cached[1]

    def _joint_decode(self, decoder, audio, prompt, words: list[str], bonus: float, sampling_rate) -> str:
        """One clip's transcript by joint CTC / LLM beam search (`prompt`: its context hotwords or None)."""
        inputs = self.processor(
            audio=[audio], context=[prompt] if prompt else None, sampling_rate=sampling_rate
        )
        inputs = inputs.to(self.model.device)
        bias = None
        if bonus > 0 and words:
            n = inputs["input_ids"].shape[1]
            bias = _hotword_bias_class(self.model)(self.processor.tokenizer, [words], bonus, n)
        return self.processor.decode(decoder.decode(inputs, logits_processor=bias))

    @torch.inference_mode()
    def token_entropies(self, audio, text: str, context=None) -> dict:
        """Decoder-side entropy allocation for one clip and its transcript `text`: the LLM's next-token
        entropy (bits) at every transcript token, once with the audio in the prompt and once without it (the
        text prior). Their difference is what the audio path removed, token by token."""
        processor, model = self.processor, self.model
        with_audio = processor(audio=[audio], context=[context], transcript=[text]).to(model.device)
        prompt_only = processor.build_prompt(context).replace(" <speech>", "").replace("<speech>", "")
        tok = processor.tokenizer
        target = with_audio["labels"][0][with_audio["labels"][0] != -100].tolist()
        text_ids = torch.tensor(
            [tok(prompt_only, add_special_tokens=False)["input_ids"] + target], device=model.device
        )

        def entropies(logits: torch.Tensor, n_target: int) -> torch.Tensor:
            # logits at position t predict token t+1: the n_target predictions end one before the last
            logp = logits[0, -n_target - 1 : -1].float().log_softmax(-1)
            return -(logp.exp() * logp).sum(-1) / torch.log(torch.tensor(2.0))

        h_audio = entropies(model(**with_audio).logits, len(target))
        h_text = entropies(
            model(input_ids=text_ids, attention_mask=torch.ones_like(text_ids)).logits, len(target)
        )
        tokens = [tok.decode([t]) for t in target]
        return {
            "tokens": tokens,
            "entropy_with_audio": h_audio.tolist(),
            "entropy_without_audio": h_text.tolist(),
            "mean_with_audio": float(h_audio.mean()),
            "mean_without_audio": float(h_text.mean()),
        }

    def transcribe_files(
        self,
        files: Sequence[str],
        context=None,
        batch_size: int = 8,
        hotwords: HotwordIndex | None = None,
        max_hotwords: int | None = 8,
        hotword_bonus: float = 0.0,
        prompt_hotwords: bool = True,
        ctc_weight: float = 0.0,
        beam_size: int | None = None,
        ctc_candidates: int | None = None,
        unit_bonus: float | None = None,
    ) -> list[dict]:
        """Files -> results in order; a file that cannot be used gets {"error": message} instead. The hotword
        and decoding arguments are `transcribe`'s."""
        results: list[dict | None] = [None] * len(files)
        waves = {}
        for i, f in enumerate(files):
            try:
                waves[i] = self.processor.prepare_audio(f)
            except ValueError as err:
                results[i] = {"error": str(err)}
        usable = list(waves)
        for batch in length_batches([waves[i].numel() for i in usable], batch_size):
            idx = [usable[b] for b in batch]
            ctx = None if context is None else [context] * len(idx)
            out = self.transcribe(
                [waves[i] for i in idx],
                context=ctx,
                hotwords=hotwords,
                max_hotwords=max_hotwords,
                hotword_bonus=hotword_bonus,
                prompt_hotwords=prompt_hotwords,
                ctc_weight=ctc_weight,
                beam_size=beam_size,
                ctc_candidates=ctc_candidates,
                unit_bonus=unit_bonus,
            )
            for i, r in zip(idx, out):
                results[i] = r
        return results
