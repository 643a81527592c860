"""The files `entropy-asr evaluate` writes (`eval.runners.evaluate.run_evaluation` measures what they hold).

Outputs in OUT: `report.json` (schema below), `README.md` (Markdown with the plots), `plots/*.png`,
`entropy_allocation/` (the analyze outputs for the primary split).

`report.json` (schema "entropy-asr/evaluate", version 1). Rates are fractions (0.05 = 5 %); a value
that is undefined (e.g. no English utterance) is null.

    {
      "schema": "entropy-asr/evaluate", "schema_version": 1,
      "model": str, "dataset": str, "primary_split": str | null,
      # headline numbers
      "wer_en": float | null,              # primary split, English utterances
      "cer_zh": float | null,              # primary split, Mandarin utterances
      "mer_mixed": float | null,           # primary split, code-switch utterances
      "wer_en_ci95", "cer_zh_ci95", "mer_mixed_ci95": [low, high] | null,  # 95% percentile bootstrap over
                                           # the utterances (1000 seeded resamples; null under 2 utterances)
      "per_en": float | null, "per_zh": float | null,  # primary split: the phoneme CTC head's greedy phoneme
                                           # error (null for a model without one)
      "bwer_en": float | null, "uwer_en": float | null,  # primary split: WER on the words of the names each
      "bcer_zh": float | null, "ucer_zh": float | null,  # row's `entities` records (B-) and on the rest (U-);
      "bmer_mixed": float | null, "umer_mixed": float | null,  # (code-switched rows: mixed tokens); null
                                           # without names
      "per_en_ci95", "per_zh_ci95", "bwer_en_ci95", "uwer_en_ci95", "bcer_zh_ci95", "ucer_zh_ci95",
      "bmer_mixed_ci95", "umer_mixed_ci95": [low, high] | null,  # the same bootstrap over the utterances
      "hallucination_rule": float | null,  # primary split, paper rule
      "hallucination_probe": float | null, # all probe splits pooled
      "hallucination_rule_ci95", "hallucination_probe_ci95": [low, high] | null,  # Wilson score intervals
                                           # of the proportions of clips (null without clips)
      "nse": float | null, "pai": float | null,           # pai in bits per frame
      "pai_normalised": float | null, "csai": float | null,  # csai in bits per frame, beyond the unit's
                                           # pronunciation
      "csai_frame": float | null,          # frame-phoneme CSAI (beyond the frame's own phoneme), bits per frame
      "cka_to_pretrained": float | null,   # CKA to --reference-model (null without one)
      "nse_ci95", "cka_to_pretrained_ci95": [low, high] | null,  # 95% bootstrap over blocks of utterances
      "pai_ci95", "csai_ci95", "csai_frame_ci95": [low, high] | null,  # the same over the held-out
                                           # utterances, the probes trained once
      "pai_stopped_at_start", "csai_stopped_at_start", "csai_frame_stopped_at_start": bool | null,  # early
                                           # stopping kept the starting probe (the marginal; the probe without
                                           # the encoder): the score is its null value by construction
      "rtf": float,                        # decode seconds / audio seconds, all splits
      "decode_seconds": float, "audio_seconds": float, "n_utterances": int,
      "utterances_per_second": float,
      "settings": {"batch_size", "max_utterances", "analysis_max_utterances", "device", "length_ratio", "max_unigram_precision",
                   "worst_k", "context", "hotwords_file", "reference_model", "label_model", "torch_threads",
                   ...every decoding option in effect (`DecodingOptions`: "ctc_weight", "beam_size", ...,
                   "no_speech_threshold" and "min_speech_confidence" as the model's gates resolve them),
                   "hotwords": the number of names in the list (retrieved context only)},
      "splits": {name: {
        "kind": "speech" | "probe",
        "n_utterances": int, "skipped": {reason: count},
        "audio_seconds": float, "decode_seconds": float, "rtf": float,
        "error_rates": {lang: {"metric": "wer" | "cer" | "mer", "error_rate", "ci95", "substitutions",
                               "deletions", "insertions", "hits", "reference_length", "num_samples"}},
        "biased_error_rates": {lang: {"biased" | "unbiased": {the same fields; error_rate null without
                               reference tokens on that side}}}  (speech splits whose rows record `entities`:
                               reference tokens inside a recorded name are biased, the rest unbiased; an
                               inserted token is biased if it is a token of one of the row's names),
        "overall": {... the same fields, mixed tokens over all utterances} | null,
        "hallucination": {"kind": "rule" | "probe", "rate", "ci95" (Wilson), "num_flagged", "num_samples", "flagged_ids",
                          ["length_ratio", "max_unigram_precision"] (rule only)},
        "worst": [prediction, ...],        # up to worst_k entries of "predictions"
        "phoneme_error_rates": {lang: {"metric": "per", "error_rate", "ci95", "substitutions", "deletions",
                                       "insertions", "hits", "reference_length", "num_samples"}}
                     (speech splits of a model with a phoneme CTC head; references: the row's `phonemes`
                     column, else the g2p of its text; not counted in decode_seconds),
        "retrieval": {"recall", "precision", "hotwords_per_utterance", "names", "retrieved", "found"}
                     (--context retrieved only; recall/precision against each row's `entities`, null when
                     there are none),
        "predictions": [{"id", "language", "scoring_language", "reference", "prediction", "seconds",
                         "hallucination": bool, "context": [hotword, ...] (context modes only),
                         "errors", "reference_length", "error_rate"   (speech splits only)}]
      }},
      "entropy_allocation": {...one `models[]` entry of the analyze schema...} | null
    }
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from eval.runners import report
from eval.runners.keys import decoder_text, figure_text

logger = logging.getLogger(__name__)


def write_report(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "report.json", result)
    plots = _plots(out, result)
    (out / "README.md").write_text(readme(result, plots))
    logger.info("wrote %s and %s", out / "report.json", out / "README.md")


def _plots(out: Path, result: dict[str, Any]) -> dict[str, str]:
    plots: dict[str, str] = {}
    splits = result["splits"]
    rates = {
        name: {f"{lang} ({r['metric'].upper()})": r["error_rate"] for lang, r in s["error_rates"].items()}
        for name, s in splits.items()
        if s["kind"] == "speech"
    }
    if any(rates.values()):
        report.grouped_bar_plot(
            out / "plots/error_rates.png", rates, "error rate", "Error rate", percent=True
        )
        plots["error_rates"] = "plots/error_rates.png"
    halluc = {name: {s["hallucination"]["kind"]: s["hallucination"]["rate"]} for name, s in splits.items()}
    if halluc:
        report.grouped_bar_plot(
            out / "plots/hallucination.png", halluc, "hallucination rate", "Hallucination", percent=True
        )
        plots["hallucination"] = "plots/hallucination.png"
    if result["entropy_allocation"]:
        plots["entropy_allocation"] = "entropy_allocation/scores.png"
    return plots


def readme(result: dict[str, Any], plots: dict[str, str]) -> str:
    f = report.fmt
    pct = {"percent": True}
    lines = [
        f"# Evaluation report: `{result['model']}`",
        "",
        f"Dataset `{result['dataset']}`, primary split `{result['primary_split']}`, "
        f"{result['n_utterances']} utterances decoded on {result['settings']['device']} "
        f"(batch {result['settings']['batch_size']}, {decoder_text(result['settings'])}). Machine-readable: "
        "`report.json`.",
        "",
        "## Headline",
        "",
        report.markdown_table(
            ["WER en", "CER zh", "MER mixed", "hallucination (rule)", "hallucination (probes)", "RTF"],
            [
                [
                    f(result["wer_en"], **pct),
                    f(result["cer_zh"], **pct),
                    f(result["mer_mixed"], **pct),
                    f(result["hallucination_rule"], **pct),
                    f(result["hallucination_probe"], **pct),
                    f(result["rtf"]),
                ]
            ],
        ),
        "",
        "## Error rates by split and language",
        "",
    ]
    rows = []
    for name, s in result["splits"].items():
        sides = [
            (lang, {**r, "metric": f"{prefix}-{r['metric']}"})
            for lang, pair in (s.get("biased_error_rates") or {}).items()
            for prefix, r in (("B", pair["biased"]), ("U", pair["unbiased"]))
        ]
        for lang, r in [*s["error_rates"].items(), *sides, *(s.get("phoneme_error_rates") or {}).items()]:
            ci = r.get("ci95")
            rows.append(
                [
                    name,
                    lang,
                    r["metric"].upper(),
                    f(r["error_rate"], **pct),
                    "" if ci is None else f"{f(ci[0], **pct)} - {f(ci[1], **pct)}",
                    r["num_samples"],
                    r["reference_length"],
                ]
            )
    lines.append(
        report.markdown_table(
            ["split", "language", "metric", "rate", "95% interval", "utterances", "reference tokens"], rows
        )
        if rows
        else "No speech split evaluated."
    )
    if any(s.get("biased_error_rates") for s in result["splits"].values()):
        lines += [
            "",
            "B- rows score only the words (Mandarin: characters) of the names each row's `entities` column records, "
            "U- rows the rest (an inserted token counts as B- if it belongs to one of the row's names).",
        ]
    retrieval = {name: s["retrieval"] for name, s in result["splits"].items() if s.get("retrieval")}
    if retrieval:
        lines += [
            "",
            f"## Hotword retrieval (`{result['settings'].get('hotwords_file')}`)",
            "",
            "Each clip's greedy CTC phoneme hypothesis looked up in the hotword list; recall and precision against "
            "the names each row's `entities` column records.",
            "",
            report.markdown_table(
                ["split", "recall", "precision", "hotwords per utterance", "names found / names"],
                [
                    [
                        name,
                        f(r["recall"], **pct),
                        f(r["precision"], **pct),
                        f(r["hotwords_per_utterance"], 2),
                        f"{r['found']} / {r['names']}",
                    ]
                    for name, r in retrieval.items()
                ],
            ),
        ]
    if "error_rates" in plots:
        lines += ["", f"![error rates]({plots['error_rates']})"]
    lines += ["", "## Hallucination", ""]
    hrows = [
        [
            name,
            s["hallucination"]["kind"],
            f(s["hallucination"]["rate"], **pct),
            s["hallucination"]["num_flagged"],
            s["hallucination"]["num_samples"],
        ]
        for name, s in result["splits"].items()
    ]
    lines.append(report.markdown_table(["split", "measure", "rate", "flagged", "utterances"], hrows))
    lines += [
        "",
        "Rule (speech splits): hypothesis more than "
        f"{result['settings']['length_ratio']}x longer than the reference with unigram precision below "
        f"{result['settings']['max_unigram_precision']}. Probe splits: any non-empty normalised output.",
    ]
    if "hallucination" in plots:
        lines += ["", f"![hallucination]({plots['hallucination']})"]
    lines += ["", "## Speed", ""]
    srows = [
        [name, s["n_utterances"], f(s["audio_seconds"], 1), f(s["decode_seconds"], 2), f(s["rtf"])]
        for name, s in result["splits"].items()
    ]
    srows.append(
        [
            "all",
            result["n_utterances"],
            f(result["audio_seconds"], 1),
            f(result["decode_seconds"], 2),
            f(result["rtf"]),
        ]
    )
    lines.append(report.markdown_table(["split", "utterances", "audio s", "decode s", "RTF"], srows))
    lines += ["", "## Entropy allocation", ""]
    a = result["entropy_allocation"]
    if a:
        dec = next(iter(a["decoder_entropy"].values()), {})
        lines.append(
            report.markdown_table(
                [
                    "NSE",
                    "PAI (bits)",
                    "PAI / H(P)",
                    "CSAI (bits)",
                    "CSAI frame (bits)",
                    "CKA to pretrained",
                    "H tok (audio)",
                    "H tok (text only)",
                ],
                [
                    [
                        figure_text(a["nse"], a.get("nse_ci95"), digits=4),
                        figure_text(a["pai_bits"], a.get("pai_ci95"), a.get("pai_stopped_at_start")),
                        figure_text(a["pai_normalised"], a.get("pai_normalised_ci95")),
                        figure_text(a["csai_bits"], a.get("csai_ci95"), a.get("csai_stopped_at_start")),
                        figure_text(
                            a["csai_frame_bits"],
                            a.get("csai_frame_ci95"),
                            a.get("csai_frame_stopped_at_start"),
                        ),
                        figure_text(a["cka_to_reference"], a.get("cka_to_reference_ci95"), digits=4),
                        dec.get("mean_with_audio"),
                        dec.get("mean_without_audio"),
                    ]
                ],
            )
        )
        lines += [
            "",
            f"On `{result['primary_split']}`: {a['n_frames']} frames of {a['n_labelled_utterances']} utterances, "
            f"labels from {a['label_source']}. CSAI: what the encoder tells about the word (character) beyond how "
            "it sounds; CSAI frame: beyond the frame's own phoneme only. In brackets: 95% bootstrap intervals over "
            "utterances (PAI, CSAI: over the held-out ones, the probes trained once, so narrower than the whole "
            "uncertainty); 'stopped at start': early stopping kept the probe without the encoder, a CSAI of 0 by "
            "construction. Details: `entropy_allocation/scores.json`.",
            "",
            f"![entropy allocation]({plots['entropy_allocation']})",
        ]
    else:
        lines.append("Not computed.")
    lines += ["", f"## Worst {result['settings']['worst_k']} examples per split", ""]
    for name, s in result["splits"].items():
        lines += [f"### {name}", ""]
        if not s["worst"]:
            lines += ["None.", ""]
            continue
        if s["kind"] == "probe":
            wrows = [[w["id"], w["prediction"]] for w in s["worst"]]
            lines.append(report.markdown_table(["id", "output (reference is empty)"], wrows))
        else:
            wrows = [
                [
                    w["id"],
                    f(w.get("error_rate"), **pct),
                    "yes" if w["hallucination"] else "",
                    w["reference"],
                    w["prediction"],
                ]
                for w in s["worst"]
            ]
            lines.append(
                report.markdown_table(["id", "error rate", "halluc.", "reference", "prediction"], wrows)
            )
        lines.append("")
    return "\n".join(lines) + "\n"
