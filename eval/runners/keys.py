"""The names of an evaluation summary's figures (report.json, the demo's summary.json, the model card), and its
decoder in words.

Standard library only: the demo imports it in processes that have not yet set their thread counts."""

from __future__ import annotations

from typing import Any

# The summary's figures, one spelling each (the demo's summary and the model card read them by these names):
# those of the transcripts, which change with the decoder, and those of the encoder and its CTC head, which do not
TRANSCRIPT_KEYS = (
    "wer_en",
    "cer_zh",
    "mer_mixed",
    "wer_en_ci95",  # 95% bootstrap intervals over utterances, [low, high]
    "cer_zh_ci95",
    "mer_mixed_ci95",
    "bwer_en",
    "uwer_en",
    "bcer_zh",
    "ucer_zh",
    "bwer_en_ci95",
    "uwer_en_ci95",
    "bcer_zh_ci95",
    "ucer_zh_ci95",
    "bmer_mixed",  # code-switched utterances: mixed error on the tokens of their names and on the rest
    "umer_mixed",
    "bmer_mixed_ci95",
    "umer_mixed_ci95",
    "hallucination_rule",
    "hallucination_probe",
    "hallucination_rule_ci95",  # Wilson score intervals of the proportions of clips
    "hallucination_probe_ci95",
    "rtf",
)
ENCODER_KEYS = (
    "per_en",
    "per_zh",
    "per_en_ci95",  # 95% bootstrap intervals over utterances, [low, high]
    "per_zh_ci95",
    "nse",
    "nse_ci95",  # 95% bootstrap intervals over blocks of utterances, [low, high]
    "pai",
    "pai_ci95",  # PAI's and CSAI's: the same bootstrap over the held-out utterances, probes trained once
    "pai_normalised",
    "pai_stopped_at_start",  # early stopping kept the marginal predictor: PAI is its null value by construction
    "csai",  # CSAI beyond the unit's pronunciation (bits per frame)
    "csai_ci95",
    "csai_frame",  # frame-phoneme CSAI (beyond the frame's own phoneme only)
    "csai_frame_ci95",
    "csai_stopped_at_start",  # early stopping kept the probe without the encoder: that CSAI is 0 by construction
    "csai_frame_stopped_at_start",
    "cka_to_pretrained",
    "cka_to_pretrained_ci95",
)
HEADLINE_KEYS = TRANSCRIPT_KEYS + ENCODER_KEYS


def decoder_text(options: dict[str, Any]) -> str:
    """A decoder in words, from the decoding options in effect (an evaluation's settings, the demo summary's
    "decoder" entry)."""
    if not options.get("ctc_weight"):
        return "greedy decoding"
    return (
        f"joint CTC / LLM beam search, CTC weight {options['ctc_weight']:g}, {options['beam_size']} hypotheses, "
        f"{options['ctc_candidates']} LLM proposals each, length bonus {options['unit_bonus']:g} per word or Hanzi"
        + (", hotwords retrieved per clip" if options.get("context") == "retrieved" else "")
    )


def figure_text(
    value: float | None, ci: list[float] | None = None, stopped_at_start: bool | None = None, digits: int = 3
) -> str | None:
    """A figure as a table shows it: "0.694 [0.649, 0.733]" with its 95% interval, "0.000 (stopped at start)" for
    a CSAI that early stopping left at the probe without the encoder (0 by construction, not a measured 0; a PAI
    left at the marginal predictor likewise), None for a missing figure."""
    if value is None or value != value:  # None or NaN
        return None
    text = f"{value:.{digits}f}"
    if stopped_at_start:
        return text + " (stopped at start)"
    return text if not ci else f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
