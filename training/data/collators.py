"""Training batches: decoded (and augmented) examples -> model inputs.

Augmentation randomness is a pure function of (seed, epoch, example index), so a resumed run sees exactly
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.data.augment import AugmentConfig, Augmenter
from training.data.g2p import text_to_chars

logger = logging.getLogger(__name__)


class AugmentTransform:
    """`SpeechDataset` transform: adds `views` (one or two augmented waveforms) to each example."""

    def __init__(
        self, config: AugmentConfig | None, seed: int = 0, two_views: bool = False, babble_pool=None
    ):
        self.augmenter = Augmenter(config) if config is not None else None
        self.seed, self.two_views, self.epoch = seed, two_views, 0
        self.babble_pool: list[np.ndarray] = list(babble_pool or [])

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        wave = row["audio"]
        if self.augmenter is None:
            row["views"] = [wave, wave] if self.two_views else [wave]
            return row
        rng = np.random.default_rng([self.seed, self.epoch, row["index"]])
        others = self.babble_pool or None
        p = self.augmenter.config.nonspeech_prob
        if p > 0 and rng.random() < p:  # drawn only when enabled: other configs keep their random streams
            wave = self.augmenter.nonspeech(rng, others)
            row = {**row, "text": "", "phonemes": "", "entities": [], "nonspeech": True}
        if self.two_views:
            row["views"] = list(self.augmenter.two_views(wave, rng, others))
        else:
            row["views"] = [self.augmenter.augment_wave(wave, rng, others)]
        row["rng_seed"] = [self.seed, self.epoch, row["index"]]
        return row


def clip_features(processor, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's front end (`processor.audio_features`, the one inference uses too) on raw clips."""
    return processor.audio_features([torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in waves])


def _pad_labels(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max(1, max(len(s) for s in seqs))
    out = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def _spec_augment(
    augmenter: Augmenter | None, features: torch.Tensor, mask: torch.Tensor, seeds
) -> torch.Tensor:
    if augmenter is None or not augmenter.config.spec_augment:
        return features
    out = features.clone()
    for i in range(features.shape[0]):
        n = int(mask[i].sum())
        rng = np.random.default_rng([*seeds[i], 7919])
        out[i, :n] = augmenter.augment_features(features[i, :n], rng)
    return out


@dataclass
class CTCCollator:
    """Encoder pretraining batches: features of one or two views (stacked along the batch: view 1 rows then
    view 2 rows) and CTC targets in the processor's CTC vocabulary (phonemes or characters)."""

    processor: Any
    units: str = "phoneme"
    augmenter: Augmenter | None = None

    def __post_init__(self):
        self.index = {s: i for i, s in enumerate(self.processor.ctc_vocab)}
        if not self.index:
            raise ValueError("The processor has no CTC vocabulary (ctc_vocab).")

    def targets(self, row: dict[str, Any]) -> list[int]:
        symbols = row["phonemes"].split() if self.units == "phoneme" else text_to_chars(row["text"])
        missing = [s for s in symbols if s not in self.index]
        if missing:
            raise KeyError(
                f"CTC symbols {missing[:5]} of {row.get('path', 'an example')} are not in the vocabulary"
            )
        return [self.index[s] for s in symbols]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [r for r in rows if r is not None]
        n_views = len(rows[0]["views"])
        waves = [r["views"][v] for v in range(n_views) for r in rows]  # view-major
        features, mask = clip_features(self.processor, waves)
        seeds = [r.get("rng_seed", [0, 0, r["index"]]) + [v] for v in range(n_views) for r in rows]
        features = _spec_augment(self.augmenter, features, mask, seeds)
        return {
            "input_features": features,
            "input_features_mask": mask,
            "ctc_labels": _pad_labels([self.targets(r) for r in rows]),
        }


@dataclass
class SFTCollator:
    """Prompted ASR batches: input_ids/labels from the processor (prompt + transcript + end of turn), features
    with SpecAugment, and optional hotword context per example (`context_fn(row, rng) -> list[str] | None`)."""

    processor: Any
    augmenter: Augmenter | None = None
    context_fn: Any = None
    seed: int = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [r for r in rows if r is not None]
        contexts = None
        if self.context_fn is not None:
            contexts = [
                self.context_fn(
                    r, np.random.default_rng([self.seed, *r.get("rng_seed", [0, 0, r["index"]]), 31])
                )
                for r in rows
            ]
        batch = self.processor(
            audio=[r["views"][0] for r in rows],
            transcript=[r["text"] for r in rows],
            context=contexts,
        )
        seeds = [r.get("rng_seed", [0, 0, r["index"]]) for r in rows]
        batch["input_features"] = _spec_augment(
            self.augmenter, batch["input_features"], batch["input_features_mask"], seeds
        )
        return dict(batch)


def assistant_turn_prefix(tokenizer) -> str:
    """The text the tokenizer's chat template puts before an assistant reply (ChatML: `<|im_start|>assistant\n`);
    empty without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return ""
    user = [{"role": "user", "content": "x"}]
    before = tokenizer.apply_chat_template(user, tokenize=False)
    after = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    return after[len(before) :] if after.startswith(before) else ""


@dataclass
class TextCollator:
    """Text-only LM batches: each sentence as the assistant turn of the chat format (so the LLM learns the
    transcript distribution and to end with the end-of-turn token); loss on the sentence + end of turn."""

    tokenizer: Any
    end_of_turn_token: str
    max_length: int = 128

    def __post_init__(self):
        self.prefix = self.tokenizer(assistant_turn_prefix(self.tokenizer), add_special_tokens=False)[
            "input_ids"
        ]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tok, prefix = self.tokenizer, self.prefix
        eot = tok.convert_tokens_to_ids(self.end_of_turn_token)
        seqs, labels = [], []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"][: self.max_length] + [eot]
            seqs.append(prefix + ids)
            labels.append([-100] * len(prefix) + ids)
        width = max(len(s) for s in seqs)
        pad = tok.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        lab = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, lb) in enumerate(zip(seqs, labels)):
            input_ids[i, : len(s)] = torch.tensor(s)
            attention[i, : len(s)] = 1
            lab[i, : len(lb)] = torch.tensor(lb)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": lab}
