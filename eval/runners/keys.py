"""The names of an evaluation summary's figures (report.json, the demo's summary.json, the model card).

Standard library only: the demo imports it in processes that have not yet set their thread counts."""

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
    "hallucination_rule",
    "hallucination_probe",
    "rtf",
)
ENCODER_KEYS = (
    "per_en",
    "per_zh",
    "nse",
    "nse_ci95",  # 95% bootstrap intervals over blocks of utterances, [low, high]
    "pai",
    "pai_normalised",
    "csai",
    "cka_to_pretrained",
    "cka_to_pretrained_ci95",
)
HEADLINE_KEYS = TRANSCRIPT_KEYS + ENCODER_KEYS
