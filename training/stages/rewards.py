"""GRPO rewards of stage 6 (method.md section 3): R = R_acc + 0.5 R_hallu + 0.5 R_context.

All texts go through the project's one scoring normalisation, `eval.asr_error_rate.scoring.normalize_text` (NFKC,
lowercase, punctuation to spaces, apostrophes deleted, whitespace collapsed), before anything is counted.

R_acc = exp(-2 * CER).
    CER is a character error rate for every language, as the paper's formula says: Levenshtein edits
    (S + D + I) between the character sequences of the normalised hypothesis and reference, divided by the
    number of reference characters. Every non-space character is one unit. A space counts as one unit only
    where it separates two non-CJK characters, i.e. an English word boundary ("hello world" is 11 units, so
    merging or splitting words costs one edit, as in jiwer's `cer`). Spaces next to a CJK character carry no
    information (AISHELL-style "甚 至" spacing, or between a Chinese and an English word) and are dropped, so
    Mandarin CER equals the project's `cer` metric. `count_word_boundaries=False` drops every space.
    An empty reference gives CER 0 against an empty hypothesis (R_acc = 1) and CER = inf against a non-empty
    one (R_acc = 0). R_acc is in [0, 1].

R_hallu = -1 if len(hyp) > 2 len(ref) or len(hyp) < 0.5 len(ref), else 0 (both bounds strict: exactly 2x or
    exactly 0.5x gives 0). Lengths are in words for English and in characters for Mandarin: the language is
    `detect_language` over the normalised reference and hypothesis together, and both are split with the
    project's `tokenize` ("en": words, "zh": characters, "mixed": CJK characters + other words). So an English
    reference answered in Chinese is measured as mixed (the Chinese output counts per character).
    Empty reference: an empty hypothesis gives 0, any non-empty hypothesis gives -1 (len > 2 * 0). An empty
    hypothesis against a non-empty reference gives -1 (0 < 0.5 len(ref)).

R_context = mean over the injected keywords of +0.5 (keyword present in the output) or -0.5 (missing); None
    when no keyword was injected (TRL then leaves the term out of that sample's weighted sum). A keyword is
    present when its normalised token sequence (`tokenize(..., "mixed")`: CJK characters, other words) occurs
    contiguously in the normalised hypothesis's token sequence: whole words for English ("gas" is not found
    in "gasoline"), substrings for Mandarin. Keywords that normalise to nothing are ignored.

TRL reward functions (`r_acc`, `r_hallu`, `r_context`) have the signature
`f(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]` and read the dataset columns
`reference` (str) and `keywords` (list[str]) from kwargs; their `__name__`s are what TRL logs
(`rewards/r_acc/mean`, ...). `total_reward` is the plain weighted sum for one pair, the same number TRL forms
with `reward_weights` (a None R_context contributes 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from eval.asr_error_rate.scoring import contains_cjk, detect_language, error_counts, normalize_text, tokenize

DEFAULT_REWARD_WEIGHTS = (1.0, 0.5, 0.5)
HALLU_UPPER_RATIO = 2.0
HALLU_LOWER_RATIO = 0.5
CONTEXT_HIT = 0.5
CONTEXT_MISS = -0.5
_SPACE_UNIT = "\u2581"  # stands for a kept word boundary (error_counts tokens must not contain whitespace)


# ---- plain functions on one hypothesis/reference pair --------------------------------------------------------


def cer_units(text: str, count_word_boundaries: bool = True, normalize: bool = True) -> list[str]:
    """The character units CER counts for one text (see the module docstring)."""
    text = normalize_text(text) if normalize else text
    units = []
    for i, ch in enumerate(text):
        if not ch.isspace():
            units.append(ch)
        elif (
            count_word_boundaries
            and 0 < i < len(text) - 1
            and not text[i - 1].isspace()
            and not contains_cjk(text[i - 1])
            and not contains_cjk(text[i + 1])
        ):
            units.append(_SPACE_UNIT)  # one unit per word boundary
    return units


def character_error_rate(hypothesis: str, reference: str, count_word_boundaries: bool = True) -> float:
    """(S + D + I) / N over `cer_units`; 0 for two empty texts, inf for an empty reference only."""
    counts = error_counts(
        cer_units(hypothesis, count_word_boundaries), cer_units(reference, count_word_boundaries)
    )
    return counts.rate


def accuracy_reward(hypothesis: str, reference: str, count_word_boundaries: bool = True) -> float:
    """R_acc = exp(-2 * CER), in [0, 1]."""
    return math.exp(-2.0 * character_error_rate(hypothesis, reference, count_word_boundaries))


def length_units(hypothesis: str, reference: str) -> tuple[int, int, str]:
    """(hypothesis length, reference length, language): words for English, characters for Mandarin."""
    hyp, ref = normalize_text(hypothesis), normalize_text(reference)
    language = detect_language([t for t in (ref, hyp) if t])
    return len(tokenize(hyp, language)), len(tokenize(ref, language)), language


def hallucination_reward(
    hypothesis: str,
    reference: str,
    upper_ratio: float = HALLU_UPPER_RATIO,
    lower_ratio: float = HALLU_LOWER_RATIO,
) -> float:
    """R_hallu = -1 if len(hyp) > upper_ratio * len(ref) or len(hyp) < lower_ratio * len(ref), else 0."""
    n_hyp, n_ref, _ = length_units(hypothesis, reference)
    return -1.0 if n_hyp > upper_ratio * n_ref or n_hyp < lower_ratio * n_ref else 0.0


def keyword_present(hypothesis: str, keyword: str) -> bool:
    """Whether the normalised keyword occurs as a contiguous token run in the normalised hypothesis."""
    needle = tokenize(normalize_text(keyword), "mixed")
    hay = tokenize(normalize_text(hypothesis), "mixed")
    if not needle:
        return False
    n = len(needle)
    return any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def context_reward(
    hypothesis: str, keywords: Sequence[str] | None, hit: float = CONTEXT_HIT, miss: float = CONTEXT_MISS
) -> float | None:
    """R_context = mean over keywords of `hit` (present) / `miss` (missing); None without keywords."""
    kept = [k for k in (keywords or []) if normalize_text(k)]
    if not kept:
        return None
    return sum(hit if keyword_present(hypothesis, k) else miss for k in kept) / len(kept)


def total_reward(
    hypothesis: str,
    reference: str,
    keywords: Sequence[str] | None = None,
    weights: Sequence[float] = DEFAULT_REWARD_WEIGHTS,
) -> float:
    """R = w_acc R_acc + w_hallu R_hallu + w_context R_context (a None R_context adds 0)."""
    w_acc, w_hallu, w_ctx = weights
    ctx = context_reward(hypothesis, keywords)
    return (
        w_acc * accuracy_reward(hypothesis, reference)
        + w_hallu * hallucination_reward(hypothesis, reference)
        + (0.0 if ctx is None else w_ctx * ctx)
    )


# ---- TRL reward functions ------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string (string prompts) or [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        parts = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else message
            if isinstance(content, list):  # content blocks
                content = " ".join(b.get("text", "") for b in content if isinstance(b, dict))
            parts.append(str(content))
        return " ".join(parts)
    raise TypeError(f"Unsupported completion type {type(completion).__name__}")


def _column(kwargs: dict, name: str, n: int) -> list:
    values = kwargs.get(name)
    if values is None:
        raise KeyError(f"The GRPO dataset has no {name!r} column; build it with build_grpo_dataset.")
    if len(values) != n:
        raise ValueError(f"{len(values)} {name!r} values for {n} completions")
    return list(values)


def r_acc(prompts, completions, completion_ids=None, count_word_boundaries: bool = True, **kwargs):
    """TRL reward: R_acc = exp(-2 CER) per completion against the `reference` column."""
    refs = _column(kwargs, "reference", len(completions))
    return [accuracy_reward(completion_text(c), r, count_word_boundaries) for c, r in zip(completions, refs)]


def r_hallu(
    prompts,
    completions,
    completion_ids=None,
    upper_ratio: float = HALLU_UPPER_RATIO,
    lower_ratio: float = HALLU_LOWER_RATIO,
    **kwargs,
):
    """TRL reward: R_hallu (0 or -1) per completion against the `reference` column."""
    refs = _column(kwargs, "reference", len(completions))
    return [
        hallucination_reward(completion_text(c), r, upper_ratio, lower_ratio)
        for c, r in zip(completions, refs)
    ]


def r_context(prompts, completions, completion_ids=None, **kwargs):
    """TRL reward: R_context per completion from the `keywords` column; None where no keyword was injected
    (or when the dataset has no `keywords` column at all)."""
    if kwargs.get("keywords") is None:
        return [None] * len(completions)
    keywords = _column(kwargs, "keywords", len(completions))
    return [context_reward(completion_text(c), k) for c, k in zip(completions, keywords)]


__all__ = [
    "DEFAULT_REWARD_WEIGHTS",
    "accuracy_reward",
    "cer_units",
    "character_error_rate",
    "completion_text",
    "context_reward",
    "hallucination_reward",
    "keyword_present",
    "length_units",
    "r_acc",
    "r_context",
    "r_hallu",
    "total_reward",
]
