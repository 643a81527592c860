"""The `asr_error_rate` evaluate module (script, card and the scoring code in scoring.py)."""
