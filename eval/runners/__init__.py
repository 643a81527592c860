"""Evaluation runners behind `entropy-asr analyze` and `entropy-asr evaluate`.

- `features`: encoder states and CTC log-probabilities on a dataset split, and frame labels (phoneme and
  semantic unit per encoder frame) by CTC forced alignment (method.md section 4).
- `analyze`: the entropy-allocation scores (NSE, PAI, CSAI, CKA) of one or several models, plus the
  decoder-side token entropies with and without audio.
- `evaluate`: batched decoding of every split, error rates, hallucination rates, RTF, worst examples and
  the entropy-allocation scores; `evaluation_report` writes them as `report.json` (its schema) and `README.md`.
- `report`: plots and Markdown shared by both; `keys`: the names of a summary's figures.
"""
