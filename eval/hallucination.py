"""Hallucination rates (method.md section 5).

Per-sample rule (the paper's, with our overlap definition): a hypothesis is a hallucination when it is
more than `length_ratio` (1.5) times longer than the reference, in scoring tokens (words for English,
characters for Mandarin, both for mixed), AND its clipped unigram precision against the reference (the
fraction of hypothesis tokens matched by a reference token, each reference token matching at most as many
times as it occurs) is below `max_unigram_precision` (0.1). Both sides are normalised first.

Probe sets (pure silence or noise with an empty reference): any non-empty normalised output counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from eval.asr_error_rate.scoring import LANGUAGES, detect_language, normalize_text, tokenize


def unigram_precision(hypothesis_tokens: list[str], reference_tokens: list[str]) -> float:
    """Clipped unigram precision of hypothesis tokens against reference tokens (1.0 for an empty hypothesis)."""
    if not hypothesis_tokens:
        return 1.0
    ref = Counter(reference_tokens)
    matched = sum(min(c, ref[t]) for t, c in Counter(hypothesis_tokens).items())
    return matched / len(hypothesis_tokens)


def is_hallucination(
    prediction: str,
    reference: str,
    language: str = "auto",
    length_ratio: float = 1.5,
    max_unigram_precision: float = 0.1,
    normalize: bool = True,
) -> bool:
    """The per-sample rule: len(hyp) > length_ratio * len(ref) and unigram precision < max_unigram_precision."""
    if normalize:
        prediction, reference = normalize_text(prediction), normalize_text(reference)
    if language == "auto":
        language = detect_language([reference, prediction])
    hyp, ref = tokenize(prediction, language), tokenize(reference, language)
    return len(hyp) > length_ratio * len(ref) and unigram_precision(hyp, ref) < max_unigram_precision


def hallucination_rate(
    predictions: Sequence[str],
    references: Sequence[str],
    language: str = "auto",
    length_ratio: float = 1.5,
    max_unigram_precision: float = 0.1,
    normalize: bool = True,
) -> dict:
    """Fraction of samples flagged by the per-sample rule.

    language: "en", "zh", "mixed" or "auto": decided once over all normalised references *and* predictions
    (unlike the error rates, which looks at references only), so that e.g. Mandarin text hallucinated
    for an English reference is counted in characters, not as one "word".
    Returns rate, num_flagged, num_samples, flagged_indices, language.
    """
    preds, refs = list(predictions), list(references)
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if normalize:
        preds = [normalize_text(t) for t in preds]
        refs = [normalize_text(t) for t in refs]
    if language == "auto":
        language = detect_language(refs + preds)
    if language not in LANGUAGES:
        raise ValueError(f"language must be 'auto' or one of {LANGUAGES}, got {language!r}")
    flagged = [
        i
        for i, (p, r) in enumerate(zip(preds, refs))
        if is_hallucination(p, r, language, length_ratio, max_unigram_precision, normalize=False)
    ]
    return _rate(flagged, len(preds), language=language)


def probe_hallucination_rate(predictions: Sequence[str], normalize: bool = True) -> dict:
    """Hallucination rate on a probe set with empty references (silence, noise): any non-empty output counts.

    Normalisation removes punctuation, so an output of only punctuation/whitespace is not counted.
    Returns rate, num_flagged, num_samples, flagged_indices.
    """
    texts = [normalize_text(t) if normalize else t.strip() for t in predictions]
    return _rate([i for i, t in enumerate(texts) if t], len(texts))


def _rate(flagged: list[int], n: int, **extra) -> dict:
    return {
        "rate": len(flagged) / n if n else 0.0,
        "num_flagged": len(flagged),
        "num_samples": n,
        "flagged_indices": flagged,
        **extra,
    }
