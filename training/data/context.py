"""Context SFT: hotwords present in the transcript go into the prompt's context with some probability,
sometimes with sound-alike distractors (same or near phoneme sequence) that are not in the transcript."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from training.data.g2p import text_to_phonemes

logger = logging.getLogger(__name__)


@lru_cache(maxsize=100_000)
def phoneme_key(word: str) -> tuple[str, ...]:
    return tuple(p for p, _ in text_to_phonemes(word))


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def distractor_pool(hotwords_file: str | None, dataset) -> list[str]:
    """Names distractors are drawn from: the lines of `hotwords_file`, or else every name of the `entities`
    column of `dataset` (a `datasets.Dataset`; none when it has no such column)."""
    if hotwords_file:
        return Path(hotwords_file).read_text(encoding="utf-8").split("\n")
    if "entities" not in dataset.column_names:
        return []
    return [e for ents in dataset["entities"] for e in (ents or [])]


class ContextInjector:
    """`injector(row, rng) -> list[str] | None` for `SFTCollator.context_fn`.

    `row["entities"]` are the hotwords that occur in the transcript. Distractors come from `pool`, ranked by
    phoneme edit distance to an injected hotword (0 = homophone, e.g. 张伟/章伟), at most `max_distance`."""

    def __init__(
        self,
        pool: Iterable[str],
        inject_prob: float = 0.5,
        distractor_prob: float = 0.5,
        max_distractors: int = 2,
        max_distance: int = 2,
    ):
        self.pool = sorted({w for w in pool if w})
        self.inject_prob, self.distractor_prob = inject_prob, distractor_prob
        self.max_distractors, self.max_distance = max_distractors, max_distance
        self._keys = {w: phoneme_key(w) for w in self.pool}

    def sound_alikes(self, word: str, exclude: set[str]) -> list[str]:
        key = phoneme_key(word)
        scored = []
        for cand, ck in self._keys.items():
            if cand in exclude or abs(len(ck) - len(key)) > self.max_distance:
                continue
            d = edit_distance(key, ck)
            if d <= self.max_distance:
                scored.append((d, cand))
        return [c for _, c in sorted(scored)]

    def __call__(self, row: dict, rng: np.random.Generator) -> list[str] | None:
        entities = [e for e in (row.get("entities") or []) if e and e in row.get("text", "")]
        if not entities or rng.random() >= self.inject_prob:
            return None
        hotwords = list(entities)
        if rng.random() < self.distractor_prob:
            exclude = set(entities) | {w for w in self.pool if w in row.get("text", "")}
            candidates: list[str] = []
            for e in entities:
                candidates.extend(
                    c for c in self.sound_alikes(e, exclude)[: self.max_distractors] if c not in candidates
                )
            k = min(self.max_distractors, len(candidates))
            if k:
                picks = rng.choice(len(candidates), size=k, replace=False)
                hotwords.extend(candidates[i] for i in sorted(picks))
        order = rng.permutation(len(hotwords))
        return [hotwords[i] for i in order]
