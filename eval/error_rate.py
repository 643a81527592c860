"""WER / CER / mixed error rate with counts: library entry point.

The code lives in `eval/asr_error_rate/scoring.py`, shipped with the `asr_error_rate` evaluate module;
this module re-exports it. `mer` here is the *mixed* error rate (Mandarin characters + English words),
not jiwer's match error rate.
"""

from eval.asr_error_rate.scoring import (
    METRIC_BY_LANGUAGE,
    ErrorCounts,
    biased_error_counts,
    biased_error_rate,
    cer,
    error_counts,
    error_rate,
    mer,
    wer,
)

__all__ = [
    "METRIC_BY_LANGUAGE",
    "ErrorCounts",
    "biased_error_counts",
    "biased_error_rate",
    "cer",
    "error_counts",
    "error_rate",
    "mer",
    "wer",
]
