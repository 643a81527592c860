"""Text normalisation, tokenisation and error counting for ASR scoring (method.md section 6).

Single source of the scoring code: it lives in the `asr_error_rate` evaluate module folder so that
`evaluate.load` copies it beside the script (relative import); the project imports it from here too. Imports only the standard library and jiwer.

Normalisation (`normalize_text`), in order:
1. Unicode NFKC: full-width ASCII letters, digits, punctuation and the ideographic space become their
   half-width forms (e.g. "ＡＢＣ１２３，" -> "ABC123,").
2. Lowercase.
3. Apostrophes inside words are deleted ("don't" -> "dont"); every other punctuation or symbol
   character (Unicode categories P* and S*, ASCII and CJK alike: "，。、《》“”！？" ...) becomes a space.
4. Whitespace runs collapse to one space; leading/trailing whitespace is stripped.

Tokens: "en" -> whitespace-separated words (WER); "zh" -> every non-space character (CER);
"mixed" -> each CJK character is a token and each run of other non-space characters is a word (mixed
error rate, MER here; not jiwer's "match error rate").
"""

from __future__ import annotations

import math
import random
import re
import statistics
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import jiwer

LANGUAGES = ("en", "zh", "mixed")
METRIC_BY_LANGUAGE = {"en": "wer", "zh": "cer", "mixed": "mer"}

# Han ideographs (URO, Ext A-G, compatibility), CJK symbols' ideographic number zero, kana.
_CJK_CLASS = (
    "\u3007\u3040-\u309f\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    "\U00020000-\U0002a6df\U0002a700-\U0002ebef\U00030000-\U0003134f"
)
_CJK_CHAR = re.compile(f"[{_CJK_CLASS}]")
_MIXED_TOKEN = re.compile(f"[{_CJK_CLASS}]|[^\\s{_CJK_CLASS}]+")
_LATIN_LETTER = re.compile(r"[^\W\d_]", re.ASCII)
_APOSTROPHES = "'\u2019\u2018\u02bc\uff07`"
_WHITESPACE = re.compile(r"\s+")


def _strip_punctuation(text: str) -> str:
    chars = []
    for ch in text:
        if ch in _APOSTROPHES:
            continue
        cat = unicodedata.category(ch)
        chars.append(" " if cat[0] in ("P", "S") else ch)
    return "".join(chars)


def normalize_text(
    text: str,
    *,
    lowercase: bool = True,
    remove_punctuation: bool = True,
    unicode_nfkc: bool = True,
) -> str:
    """Normalise one transcript for scoring (see the module docstring for the exact steps)."""
    if unicode_nfkc:
        text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if remove_punctuation:
        text = _strip_punctuation(text)
    return _WHITESPACE.sub(" ", text).strip()


def contains_cjk(text: str) -> bool:
    return _CJK_CHAR.search(text) is not None


def detect_language(texts: str | Iterable[str]) -> str:
    """ "en" if no CJK character occurs, "zh" if CJK occurs and no Latin letter does, else "mixed"."""
    if isinstance(texts, str):
        texts = [texts]
    has_cjk = has_latin = False
    for t in texts:
        has_cjk = has_cjk or contains_cjk(t)
        has_latin = has_latin or _LATIN_LETTER.search(t) is not None
    if not has_cjk:
        return "en"
    return "mixed" if has_latin else "zh"


def tokenize(text: str, language: str) -> list[str]:
    """Split an (already normalised) transcript into scoring tokens for "en", "zh" or "mixed"."""
    if language == "en":
        return text.split()
    if language == "zh":
        return [ch for ch in text if not ch.isspace()]
    if language == "mixed":
        return _MIXED_TOKEN.findall(text)
    raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")


@dataclass
class ErrorCounts:
    """Edit-operation counts of an alignment between hypothesis and reference tokens."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def reference_length(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """(S + D + I) / N; 0 for an empty reference scored against an empty hypothesis, inf otherwise."""
        n = self.reference_length
        if n == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / n

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "reference_length": self.reference_length}


def _as_list(x: str | Sequence[str], name: str) -> list[str]:
    if isinstance(x, str):
        return [x]
    out = list(x)
    if not all(isinstance(t, str) for t in out):
        raise TypeError(f"{name} must be strings")
    return out


def _align(hypothesis_tokens: list[str], reference_tokens: list[str]) -> jiwer.WordOutput:
    """jiwer's minimum-edit alignment of two token lists (tokens must not contain whitespace)."""
    return jiwer.process_words(
        " ".join(reference_tokens),
        " ".join(hypothesis_tokens),
        reference_transform=jiwer.ReduceToListOfListOfWords(),
        hypothesis_transform=jiwer.ReduceToListOfListOfWords(),
    )


def error_counts(hypothesis_tokens: list[str], reference_tokens: list[str]) -> ErrorCounts:
    """Levenshtein counts between two token lists (jiwer; tokens must not contain whitespace)."""
    out = _align(hypothesis_tokens, reference_tokens)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits)


def _prepared(
    predictions: str | Sequence[str], references: str | Sequence[str], language: str, normalize: bool
) -> tuple[list[str], list[str], str]:
    """Equal-length lists of (normalised) hypotheses and references, and the language resolved from "auto"."""
    preds = _as_list(predictions, "predictions")
    refs = _as_list(references, "references")
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if normalize:
        preds = [normalize_text(t) for t in preds]
        refs = [normalize_text(t) for t in refs]
    if language == "auto":
        language = detect_language(refs)
    if language not in LANGUAGES:
        raise ValueError(f"language must be 'auto' or one of {LANGUAGES}, got {language!r}")
    return preds, refs, language


def biased_error_counts(
    hypothesis_tokens: list[str], reference_tokens: list[str], phrases: Sequence[list[str]]
) -> tuple[ErrorCounts, ErrorCounts]:
    """(biased, unbiased) counts of one pair, splitting the alignment of `error_counts` by the bias phrases
    (each a token list, e.g. the names the utterance mentions): a reference token is biased where a phrase
    occurs at its position; an inserted token is biased if it is a token of some phrase (the B-WER / U-WER
    split of contextual-biasing work). The two add up to `error_counts`."""
    biased = [False] * len(reference_tokens)
    for phrase in phrases:
        n = len(phrase)
        for i in range(len(reference_tokens) - n + 1) if n else ():
            if reference_tokens[i : i + n] == phrase:
                biased[i : i + n] = [True] * n
    phrase_tokens = {t for phrase in phrases for t in phrase}
    counts = (ErrorCounts(), ErrorCounts())
    out = _align(hypothesis_tokens, reference_tokens)
    field = {"equal": "hits", "substitute": "substitutions", "delete": "deletions"}
    for chunk in out.alignments[0]:
        if chunk.type == "insert":
            for t in hypothesis_tokens[chunk.hyp_start_idx : chunk.hyp_end_idx]:
                counts[0 if t in phrase_tokens else 1].insertions += 1
            continue
        for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
            c = counts[0 if biased[i] else 1]
            setattr(c, field[chunk.type], getattr(c, field[chunk.type]) + 1)
    return counts


def biased_error_rate(
    predictions: str | Sequence[str],
    references: str | Sequence[str],
    bias_phrases: Sequence[Sequence[str]],
    language: str = "auto",
    normalize: bool = True,
) -> dict:
    """Corpus error rates on and off the bias phrases: `{"biased": {...}, "unbiased": {...}}`, each with
    error_rate and the counts of `error_rate` (B-WER / U-WER; B-CER / U-CER for Mandarin). `bias_phrases`: one
    list of phrases per pair (e.g. the names each utterance mentions), normalised and tokenised like the
    references. A side with no reference token has error_rate None."""
    if isinstance(bias_phrases, str):
        raise TypeError("bias_phrases must hold one list of phrases per pair, not a string")
    phrases = [_as_list(p, "bias_phrases entries") for p in bias_phrases]
    preds, refs, language = _prepared(predictions, references, language, normalize)
    if len(phrases) != len(refs):
        raise ValueError(f"{len(phrases)} bias phrase lists for {len(refs)} pairs")
    if normalize:
        phrases = [[normalize_text(p) for p in ps] for ps in phrases]
    totals = [ErrorCounts(), ErrorCounts()]
    pairs = []
    for hyp, ref, ps in zip(preds, refs, phrases):
        pair = biased_error_counts(
            tokenize(hyp, language), tokenize(ref, language), [t for p in ps if (t := tokenize(p, language))]
        )
        pairs.append(pair)
        totals = [a + b for a, b in zip(totals, pair)]
    return {
        side: {
            "error_rate": c.rate if c.reference_length else None,
            # over the utterances, as `bootstrap_interval` (None without a reference token on this side)
            "ci95": bootstrap_interval(
                [p[k].substitutions + p[k].deletions + p[k].insertions for p in pairs],
                [p[k].reference_length for p in pairs],
            ),
            "metric": METRIC_BY_LANGUAGE[language],
            "language": language,
            **c.as_dict(),
            "num_samples": len(preds),
        }
        for k, (side, c) in enumerate(zip(("biased", "unbiased"), totals))
    }


def error_rate(
    predictions: str | Sequence[str],
    references: str | Sequence[str],
    language: str = "auto",
    normalize: bool = True,
    return_per_sample: bool = False,
) -> dict:
    """Corpus error rate: total (S + D + I) / total reference tokens over all pairs.

    language: "en" (WER over words), "zh" (CER over characters), "mixed" (MER: CJK characters + other
    words) or "auto" (`detect_language` over the normalised references). Returns error_rate, metric
    ("wer" | "cer" | "mer"), language, substitutions, deletions, insertions, hits, reference_length,
    num_samples and, if return_per_sample, per_sample: a list of per-pair count dicts with error_rate.
    """
    preds, refs, language = _prepared(predictions, references, language, normalize)
    total = ErrorCounts()
    per_sample = []
    for hyp, ref in zip(preds, refs):
        counts = error_counts(tokenize(hyp, language), tokenize(ref, language))
        total = total + counts
        if return_per_sample:
            per_sample.append({**counts.as_dict(), "error_rate": counts.rate})
    result = {
        "error_rate": total.rate,
        "metric": METRIC_BY_LANGUAGE[language],
        "language": language,
        **total.as_dict(),
        "num_samples": len(preds),
    }
    if return_per_sample:
        result["per_sample"] = per_sample
    return result


def bootstrap_interval(
    errors: Sequence[int], lengths: Sequence[int], level: float = 0.95, resamples: int = 1000, seed: int = 0
) -> list[float] | None:
    """Percentile bootstrap interval of the corpus error rate sum(errors) / sum(lengths): the utterances are
    resampled with replacement `resamples` times (seeded: the same data give the same interval), and the interval
    holds the central `level` of the resampled rates. None with fewer than two utterances or no reference token."""
    n = len(errors)
    if n != len(lengths):
        raise ValueError(f"{n} error counts for {len(lengths)} reference lengths")
    if n < 2 or sum(lengths) == 0:
        return None
    rng = random.Random(seed)
    rates = []
    for _ in range(resamples):
        picks = rng.choices(range(n), k=n)
        total = sum(lengths[i] for i in picks)
        if total:
            rates.append(sum(errors[i] for i in picks) / total)
    rates.sort()
    tail = (1.0 - level) / 2.0
    return [
        rates[int(math.floor(tail * (len(rates) - 1)))],
        rates[int(math.ceil((1.0 - tail) * (len(rates) - 1)))],
    ]


def proportion_interval(count: int, total: int, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of a proportion count / total (clips that hallucinate, say), for independent
    clips. Unlike a percentile bootstrap it stays informative at 0 or `total`: 0 of 600 gives [0, 0.0064], not
    [0, 0]. None when total is 0."""
    if not 0 <= count <= total:
        raise ValueError(f"count {count} is not within 0..{total}")
    if total == 0:
        return None
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)
    p, z2 = count / total, z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def wer(
    predictions: str | Sequence[str], references: str | Sequence[str], normalize: bool = True, **kw
) -> dict:
    """Word error rate (English tokens); see `error_rate`."""
    return error_rate(predictions, references, language="en", normalize=normalize, **kw)


def cer(
    predictions: str | Sequence[str], references: str | Sequence[str], normalize: bool = True, **kw
) -> dict:
    """Character error rate (every non-space character a token, Mandarin); see `error_rate`."""
    return error_rate(predictions, references, language="zh", normalize=normalize, **kw)


def mer(
    predictions: str | Sequence[str], references: str | Sequence[str], normalize: bool = True, **kw
) -> dict:
    """Mixed error rate (CJK characters + other words as tokens, code-switch); see `error_rate`."""
    return error_rate(predictions, references, language="mixed", normalize=normalize, **kw)
