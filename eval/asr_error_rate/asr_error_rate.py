"""ASR error rate: WER (English), CER (Mandarin) or mixed error rate (code-switch) after normalisation."""

import datasets
import evaluate

from .scoring import biased_error_rate, error_rate

_CITATION = """\
@inproceedings{morris2004,
  author    = {Morris, Andrew and Maier, Viktoria and Green, Phil},
  year      = {2004},
  title     = {From WER and RIL to MER and WIL: improved evaluation measures for connected speech recognition},
  booktitle = {Interspeech}
}
"""

_DESCRIPTION = """\
Corpus-level token error rate (S + D + I) / N of ASR hypotheses against references, after the same
normalisation on both sides: Unicode NFKC (full-width -> half-width), lowercase, apostrophes deleted,
other ASCII and CJK punctuation and symbols replaced by spaces, whitespace collapsed. Tokens depend on the
language: words for English (WER), characters for Mandarin (CER), and CJK characters plus the remaining
words for code-switched Mandarin-English (mixed error rate, "mer"; not jiwer's match error rate).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): hypotheses.
    references (`list` of `str`): reference transcripts, one per hypothesis.
    language (`str`, default "auto"): "en" (WER), "zh" (CER), "mixed" (mixed error rate) or "auto":
        "en" if no reference has a CJK character, "zh" if some do and none has a Latin letter, else "mixed".
    normalize (`bool`, default True): apply the normalisation before tokenising.
    return_per_sample (`bool`, default False): also return per-pair counts under "per_sample".
    bias_phrases (`list` of `list` of `str`, optional): the phrases (e.g. contact names) each pair was biased
        towards; adds "biased" (B-WER: only reference tokens inside one of the pair's phrases, and insertions
        of their tokens) and "unbiased" (U-WER: the rest), each {"error_rate" (None without tokens), "ci95"
        (a 95% bootstrap interval over the pairs, or None), the counts}; the two add up to the overall counts.
Returns:
    error_rate (`float`): total errors / total reference tokens (inf if all references are empty and
        some hypothesis is not).
    metric (`str`): "wer", "cer" or "mer"; language (`str`): the tokenisation used.
    substitutions, deletions, insertions, hits, reference_length, num_samples (`int`).
Examples:
    >>> metric = evaluate.load("eval/asr_error_rate")
    >>> metric.compute(predictions=["hello world"], references=["Hello, World!"])["error_rate"]
    0.0
    >>> metric.compute(predictions=["我用iphone打电话"], references=["我用 iPhone 打电话。"], language="mixed")["error_rate"]
    0.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AsrErrorRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Word_error_rate"],
        )

    def _compute(
        self,
        predictions,
        references,
        language="auto",
        normalize=True,
        return_per_sample=False,
        bias_phrases=None,
    ):
        result = error_rate(
            predictions,
            references,
            language=language,
            normalize=normalize,
            return_per_sample=return_per_sample,
        )
        if bias_phrases is not None:
            result.update(
                biased_error_rate(
                    predictions, references, bias_phrases, language=result["language"], normalize=normalize
                )
            )
        return result
