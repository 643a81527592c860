"""Transcript normalisation and tokenisation for scoring: library entry point.

The code lives in `eval/asr_error_rate/scoring.py`, shipped with the `asr_error_rate` evaluate module;
this module re-exports it so the library, the evaluate module and the hallucination rule normalise alike.
"""

from eval.asr_error_rate.scoring import LANGUAGES, contains_cjk, detect_language, normalize_text, tokenize

__all__ = ["LANGUAGES", "contains_cjk", "detect_language", "normalize_text", "tokenize"]
