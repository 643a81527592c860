"""ASR evaluation report for one model (`entropy-asr evaluate`).

Decodes every requested split in batches with the model folder's pipeline and its saved decoding options (the
joint CTC / LLM search for the demo's models; `EvaluateConfig.decoding` overrides them), then scores:
- error rates per split and scoring language (`eval.asr_error_rate.scoring`): each utterance's language is detected
  from its normalised reference (`detect_language`): "en" -> WER, "zh" -> CER, "mixed"
  (code-switch) -> mixed error rate (Mandarin characters + English words); plus an overall mixed-token
  error rate per split;
- hallucination (`eval.hallucination`): on speech splits the paper's per-sample rule, each sample
  tokenised by the language detected from its own reference and hypothesis; on probe splits (silence and
  noise with empty references) the probe rate, any non-empty normalised output;
- RTF: decoding wall time (features + encoder + generation, batched) / audio seconds, over all splits;
- the entropy-allocation scores of the model on the primary split (`eval.runners.analyze`);
- the worst examples per split (highest error rate; on probe splits, the longest non-empty outputs).

A split is a probe split if its name starts with "probe" or all its references are empty. Default splits:
"test" (or, without one, every split except "train") and every probe split. The primary split (headline
numbers) is "test" if evaluated, else the first speech split.

Outputs in OUT: `report.json` and `README.md` with its plots (`eval.runners.evaluation_report` describes both),
`entropy_allocation/` (the analyze outputs for the primary split).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from eval.asr_error_rate.scoring import (
    biased_error_rate,
    bootstrap_interval,
    detect_language,
    error_counts,
    error_rate,
    normalize_text,
    proportion_interval,
)
from eval.hallucination import is_hallucination, probe_hallucination_rate
from eval.runners import analyze
from eval.runners.evaluation_report import write_report
from modeling.generation_entropy_asr import DecodingOptions
from modeling.phonemizer_entropy_asr import G2PError
from training.data.g2p import phoneme_string
from training.data.loading import load_speech_dataset
from training.data.splits import Utterance, dataset_splits, length_batches, load_split, usable_utterances

logger = logging.getLogger(__name__)

SCHEMA = "entropy-asr/evaluate"
SCHEMA_VERSION = 1


@dataclass
class EvaluateConfig:
    """Everything `entropy-asr evaluate` needs (the CLI flags one to one)."""

    model: str
    data: str
    out: str
    splits: list[str] | None = None
    max_utterances: int | None = None
    batch_size: int = 16
    device: str | None = None
    reference_model: str | None = None
    label_model: str | None = None
    analysis: bool = True
    # the primary split's utterances the entropy-allocation analysis runs on: None, the decoded ones (max_utterances);
    # N, an evenly spaced N of the split loaded for the analysis alone, the same whatever max_utterances is, so that
    # models decoded on different subsets are analysed on one fixed set
    analysis_max_utterances: int | None = None
    decoder_entropy: bool = True
    length_ratio: float = 1.5
    max_unigram_precision: float = 0.1
    worst_k: int = 10
    allocation_options: dict[str, Any] = field(default_factory=dict)
    # prompt context while decoding: none; entities (each row's own `entities` column as its hotwords, without
    # retrieval: what a perfect hotword retriever would give); retrieved (hotwords_file, looked up in each clip)
    context: str = "none"
    hotwords_file: str | None = None
    # decoding options (`DecodingOptions` names) overriding the model's saved ones; the hotwords come from `context`
    decoding: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {CONTEXT_MODES}, got {self.context!r}")
        if (self.context == "retrieved") != (self.hotwords_file is not None):
            raise ValueError(
                "context 'retrieved' needs hotwords_file, and hotwords_file needs context 'retrieved'"
            )
        given = sorted({"hotwords", "hotwords_file"} & set(self.decoding))
        if given:
            raise ValueError(
                f"{given} come from the context mode (context, hotwords_file), not from decoding"
            )
        DecodingOptions().replace(**self.decoding)  # names and values checked now, before the model loads
        if self.context == "retrieved" and not Path(self.hotwords_file).is_file():
            raise FileNotFoundError(f"hotword file not found: {self.hotwords_file}")


CONTEXT_MODES = ("none", "entities", "retrieved")


def is_probe_split(name: str, references: Sequence[str]) -> bool:
    return name.startswith("probe") or all(not normalize_text(r or "") for r in references)


def default_splits(available: Sequence[str]) -> list[str]:
    speech = (
        ["test"]
        if "test" in available
        else [s for s in available if s != "train" and not s.startswith("probe")]
    )
    return speech + [s for s in available if s.startswith("probe")]


# --------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    utterances: list[Utterance]
    predictions: list[str]
    seconds: float  # decoding wall time
    rejected: int
    # per utterance, the hotwords it was decoded with, in its prompt or through the bias (context modes only)
    context: list[list[str]] | None = None


def decode_utterances(
    recognizer: Any,
    utterances: Sequence[Utterance],
    batch_size: int,
    desc: str,
    context: str = "none",
    hotwords_file: str | None = None,
    decoding: dict[str, Any] | None = None,
) -> Decoded:
    """Transcripts by the model's pipeline (`recognizer`), in batches of similar length; clips the processor rejects
    are skipped. `decoding`: options overriding the model's; `context`: see `EvaluateConfig.context` (for
    "entities" each clip is decoded with its own names, one at a time)."""
    usable, rejected = usable_utterances(recognizer.processor, utterances)
    texts: list[str] = [""] * len(usable)
    given: list[list[str]] | None = None if context == "none" else [[] for _ in usable]
    options = dict(decoding or {})
    if context == "retrieved":
        options["hotwords_file"] = hotwords_file
    elapsed = 0.0
    size = 1 if context == "entities" else batch_size
    batches = length_batches([len(u.audio) for u in usable], size)
    for idx in tqdm(batches, desc=desc, unit="batch", disable=None):
        start = time.perf_counter()
        extra: dict[str, Any] = {}
        if context == "entities" and usable[idx[0]].hotwords:
            extra = {"hotwords": list(usable[idx[0]].hotwords), "hotword_retrieval": False}
        out = recognizer([usable[i].audio for i in idx], batch_size=len(idx), **options, **extra)
        elapsed += time.perf_counter() - start
        for i, r in zip(idx, out):
            texts[i] = r["text"]
            if given is not None:
                given[i] = (
                    list(r.get("hotwords") or []) if context == "retrieved" else list(usable[i].hotwords)
                )
    return Decoded(usable, texts, elapsed, rejected, given)


def has_phoneme_ctc(processor: Any) -> bool:
    """A CTC head over phonemes (what hotword retrieval matches against), not characters (a character vocabulary
    holds the word separator `|`)."""
    vocab = processor.ctc_vocab
    return bool(vocab) and "|" not in vocab


def ctc_hypotheses(recognizer: Any):
    """`hypotheses(audios) -> [[phoneme, ...], ...]`: the greedy hypotheses of the model's phoneme CTC head (what
    the encoder hears, before the LLM); None for a model without one (a character head included)."""
    if not has_phoneme_ctc(recognizer.processor):
        return None
    model, processor = recognizer.model, recognizer.processor

    def hypotheses(audios: Sequence) -> list[list[str]]:
        inputs = processor(audio=list(audios)).to(model.device)
        ids = model.ctc_greedy_decode(inputs["input_features"], inputs["input_features_mask"])
        return [processor.decode_ctc(h) for h in ids]

    return hypotheses


def phoneme_error_rates(
    hypotheses: Any, utterances: Sequence[Utterance], batch_size: int, desc: str = "phonemes"
) -> dict[str, dict[str, Any]] | None:
    """Greedy phoneme error of the model's phoneme CTC head per language (`{lang: {"metric": "per", "error_rate",
    "substitutions", "deletions", "insertions", "hits", "reference_length", "num_samples"}}`): what stage 1 hears,
    before the LLM, grouped by the scoring language of the WER/CER buckets. References: each row's `phonemes`
    column (a string or a list), else the g2p of its text (rows it cannot convert are left out). None for a model
    without a phoneme CTC head (a character head included)."""

    if hypotheses is None:
        return None
    totals: dict[str, Counter] = defaultdict(Counter)
    per_row: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))  # errors, lengths
    batches = length_batches([len(u.audio) for u in utterances], batch_size)
    for idx in tqdm(batches, desc=desc, unit="batch", disable=None):
        hyps = hypotheses([utterances[i].audio for i in idx])
        for i, hyp in zip(idx, hyps):
            u = utterances[i]
            try:
                reference = u.phonemes or phoneme_string(u.text, u.language)
                reference = reference.split() if isinstance(reference, str) else [str(p) for p in reference]
            except G2PError as err:
                logger.warning("phoneme error: %s left out (%s)", u.id, err)
                continue
            if not reference:
                continue
            counts = error_counts(list(hyp), reference)
            language = detect_language(normalize_text(u.text))  # the WER/CER buckets' scoring language
            totals[language].update(
                substitutions=counts.substitutions,
                deletions=counts.deletions,
                insertions=counts.insertions,
                hits=counts.hits,
                reference_length=len(reference),
                num_samples=1,
            )
            per_row[language][0].append(counts.substitutions + counts.deletions + counts.insertions)
            per_row[language][1].append(len(reference))
    return {
        lang: {
            "metric": "per",
            "error_rate": (t["substitutions"] + t["deletions"] + t["insertions"]) / t["reference_length"],
            "ci95": bootstrap_interval(*per_row[lang]),
            **{k: t[k] for k in ("substitutions", "deletions", "insertions", "hits", "reference_length")},
            "num_samples": t["num_samples"],
        }
        for lang, t in sorted(totals.items())
    }


def retrieval_scores(decoded: Decoded) -> dict[str, Any] | None:
    """How the hotwords retrieved for each clip compare with the names it mentions (its `entities`): recall (names
    found / names), precision (retrieved that are its names / retrieved) and hotwords per utterance; None without
    retrieved context. Recall and precision are None where the rows record no names (probe splits, data without
    `entities`); there only the retrieval count means anything."""
    if decoded.context is None:
        return None
    names = sum(len(set(u.hotwords)) for u in decoded.utterances)
    retrieved = sum(len(c) for c in decoded.context)
    found = sum(len(set(u.hotwords) & set(c)) for u, c in zip(decoded.utterances, decoded.context))
    return {
        "recall": found / names if names else None,
        "precision": found / retrieved if retrieved and names else None,
        "hotwords_per_utterance": retrieved / len(decoded.utterances) if decoded.utterances else None,
        "names": names,
        "retrieved": retrieved,
        "found": found,
    }


# --------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------


def _counts(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "per_sample"}


def score_speech(decoded: Decoded, length_ratio: float, max_unigram_precision: float) -> dict[str, Any]:
    """Error rates by scoring language, overall mixed-token rate, rule hallucinations, per-utterance rows."""
    refs = [u.text for u in decoded.utterances]
    preds = decoded.predictions
    langs = [detect_language(normalize_text(r)) for r in refs]
    rows = [
        {
            "id": u.id,
            "language": u.language,
            "scoring_language": lang,
            "reference": u.text,
            "prediction": p,
            "seconds": u.seconds,
            "hallucination": is_hallucination(p, u.text, "auto", length_ratio, max_unigram_precision),
        }
        for u, p, lang in zip(decoded.utterances, preds, langs)
    ]
    _add_context(rows, decoded)
    by_lang: dict[str, list[int]] = defaultdict(list)
    for i, lang in enumerate(langs):
        by_lang[lang].append(i)
    error_rates, biased_error_rates = {}, {}
    for lang in ("en", "zh", "mixed"):
        idx = by_lang.get(lang)
        if not idx:
            continue
        res = error_rate(
            [preds[i] for i in idx], [refs[i] for i in idx], language=lang, return_per_sample=True
        )
        for i, sample in zip(idx, res["per_sample"]):
            rows[i].update(
                errors=sample["substitutions"] + sample["deletions"] + sample["insertions"],
                reference_length=sample["reference_length"],
                error_rate=sample["error_rate"],
            )
        errors = [rows[i]["errors"] for i in idx]
        error_rates[lang] = {
            **_counts(res),
            "ci95": bootstrap_interval(errors, [rows[i]["reference_length"] for i in idx]),
        }
        if any(decoded.utterances[i].hotwords for i in idx):
            biased_error_rates[lang] = biased_error_rate(
                [preds[i] for i in idx],
                [refs[i] for i in idx],
                [list(decoded.utterances[i].hotwords) for i in idx],
                language=lang,
            )
    overall = _counts(error_rate(preds, refs, language="mixed")) if refs else None
    flagged = [r["id"] for r in rows if r["hallucination"]]
    hallucination = {
        "kind": "rule",
        "rate": len(flagged) / len(rows) if rows else None,
        "ci95": proportion_interval(len(flagged), len(rows)),
        "num_flagged": len(flagged),
        "num_samples": len(rows),
        "flagged_ids": flagged,
        "length_ratio": length_ratio,
        "max_unigram_precision": max_unigram_precision,
    }
    return {
        "error_rates": error_rates,
        **({"biased_error_rates": biased_error_rates} if biased_error_rates else {}),
        "overall": overall,
        "hallucination": hallucination,
        "predictions": rows,
    }


def score_probe(decoded: Decoded) -> dict[str, Any]:
    """Probe-set hallucination rate: any non-empty normalised output counts."""
    res = probe_hallucination_rate(decoded.predictions)
    flagged = set(res["flagged_indices"])
    rows = [
        {
            "id": u.id,
            "language": u.language,
            "scoring_language": None,
            "reference": u.text,
            "prediction": p,
            "seconds": u.seconds,
            "hallucination": i in flagged,
        }
        for i, (u, p) in enumerate(zip(decoded.utterances, decoded.predictions))
    ]
    _add_context(rows, decoded)
    hallucination = {
        "kind": "probe",
        "rate": res["rate"] if rows else None,
        "ci95": proportion_interval(res["num_flagged"], res["num_samples"]),
        "num_flagged": res["num_flagged"],
        "num_samples": res["num_samples"],
        "flagged_ids": [rows[i]["id"] for i in res["flagged_indices"]],
    }
    return {"error_rates": {}, "overall": None, "hallucination": hallucination, "predictions": rows}


def _add_context(rows: list[dict], decoded: Decoded) -> None:
    """Each row's hotwords ("context": in its prompt, or biased towards), when the decoding had context."""
    if decoded.context is not None:
        for row, context in zip(rows, decoded.context):
            row["context"] = context


def worst_examples(rows: Sequence[dict], kind: str, k: int) -> list[dict]:
    """Speech: highest error rate first (then most errors); probe: longest non-empty output first."""
    if kind == "probe":
        hits = [r for r in rows if r["hallucination"]]
        return sorted(hits, key=lambda r: (-len(normalize_text(r["prediction"])), r["id"]))[:k]

    def key(r: dict) -> tuple:
        rate = r.get("error_rate")
        rate = float("inf") if rate is None else rate
        return (-rate, -r.get("errors", 0), r["id"])

    return sorted(rows, key=key)[:k]


# --------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------


def run_evaluation(config: EvaluateConfig) -> dict[str, Any]:
    """Decode and score every split, run the analysis, write report.json / README.md; return the report."""
    device = config.device or analyze.default_device()
    out = Path(config.out)
    available = dataset_splits(config.data)
    splits = list(config.splits or default_splits(available))
    if not splits:
        raise ValueError(f"no split to evaluate in {config.data} (splits: {available}); pass --splits")
    missing = [s for s in splits if s not in available]
    if missing:
        raise KeyError(f"splits {missing} are not in {config.data} (splits: {available})")
    recognizer = analyze.load_recognizer(config.model, device)

    split_reports: dict[str, dict] = {}
    loaded: dict[str, list[Utterance]] = {}
    for split in splits:
        kind = (
            "probe"
            if is_probe_split(split, load_speech_dataset(config.data, split=split)["text"])
            else "speech"
        )
        utterances, counter = load_split(
            config.data, split, config.max_utterances, allow_empty=kind == "probe"
        )
        if config.context == "entities" and kind == "speech" and not any(u.hotwords for u in utterances):
            logger.warning("--context entities: no row of %s has entities; decoding without context", split)
        decoded = decode_utterances(
            recognizer,
            utterances,
            config.batch_size,
            f"decoding {split}",
            config.context,
            config.hotwords_file,
            config.decoding,
        )
        scored = (
            score_probe(decoded)
            if kind == "probe"
            else score_speech(decoded, config.length_ratio, config.max_unigram_precision)
        )
        skipped = Counter(counter.as_dict())
        if decoded.rejected:
            skipped["audio_rejected"] += decoded.rejected
        audio_seconds = sum(u.seconds for u in decoded.utterances)
        split_reports[split] = {
            "kind": kind,
            "n_utterances": len(decoded.utterances),
            "skipped": dict(skipped),
            "audio_seconds": audio_seconds,
            "decode_seconds": decoded.seconds,
            "rtf": decoded.seconds / audio_seconds if audio_seconds else None,
            **{
                k: scored[k]
                for k in ("error_rates", "biased_error_rates", "overall", "hallucination")
                if k in scored
            },
            **(
                {"phoneme_error_rates": per}
                if (per := _phoneme_errors(recognizer, decoded, kind, config))
                else {}
            ),
            **({"retrieval": retrieval_scores(decoded)} if config.context == "retrieved" else {}),
            "worst": worst_examples(scored["predictions"], kind, config.worst_k),
            "predictions": scored["predictions"],
        }
        if kind == "speech":
            loaded[split] = decoded.utterances
        logger.info("%s: %s", split, _split_summary(split_reports[split]))

    speech = [s for s in splits if split_reports[s]["kind"] == "speech"]
    primary = "test" if "test" in speech else (speech[0] if speech else None)
    analysis = None
    if config.analysis and primary is not None:
        analysed = loaded[primary]
        if config.analysis_max_utterances is not None:
            analysed, counter = load_split(config.data, primary, config.analysis_max_utterances)
            analysed, rejected = usable_utterances(recognizer.processor, analysed)
            logger.info(
                "entropy allocation on %d utterances of %s (%d skipped, %d rejected by the processor)",
                len(analysed),
                primary,
                counter.total,
                rejected,
            )
        analysis = _analysis(recognizer, config, analysed, primary, device, out)

    listed = {"hotwords_file": config.hotwords_file} if config.context == "retrieved" else {}
    options = recognizer.model.decoding_options(**config.decoding, **listed)
    result = _assemble(config, device, split_reports, primary, analysis, options, recognizer.model.config)
    write_report(out, result)
    return result


def _phoneme_errors(recognizer: Any, decoded: Decoded, kind: str, config: EvaluateConfig) -> dict | None:
    if kind != "speech" or not decoded.utterances:
        return None
    return phoneme_error_rates(ctc_hypotheses(recognizer), decoded.utterances, config.batch_size)


def _analysis(
    recognizer: Any, config: EvaluateConfig, utterances: list[Utterance], split: str, device: str, out: Path
) -> dict | None:
    if len(utterances) < 2:
        logger.warning("entropy allocation skipped: %s has fewer than 2 utterances", split)
        return None
    shared = analyze.prepare_shared(
        utterances,
        device,
        config.batch_size,
        config.reference_model,
        config.label_model,
        {split: utterances} if config.decoder_entropy else None,
    )
    try:
        entry = analyze.analyze_recognizer(
            recognizer,
            Path(config.model).name or str(config.model),
            config.model,
            shared,
            config.batch_size,
            config.allocation_options,
        )
    except ValueError as err:  # e.g. too few utterances could be aligned
        logger.warning("entropy allocation skipped: %s", err)
        return None
    analyze.write_outputs(
        out / "entropy_allocation",
        analyze.result_dict(
            config.data,
            split,
            [entry],
            config.max_utterances
            if config.analysis_max_utterances is None
            else config.analysis_max_utterances,
            config.reference_model,
            config.label_model,
            config.allocation_options,
        ),
    )
    return entry


def _split_summary(s: dict) -> str:
    parts = [f"{lang} {r['metric']} {100 * r['error_rate']:.2f}%" for lang, r in s["error_rates"].items()]
    parts += [
        f"{lang} per {100 * r['error_rate']:.2f}%" for lang, r in (s.get("phoneme_error_rates") or {}).items()
    ]
    parts += [
        f"{lang} {r['biased']['metric']} on names {100 * r['biased']['error_rate']:.2f}%"
        for lang, r in (s.get("biased_error_rates") or {}).items()
        if r["biased"]["error_rate"] is not None
    ]
    h = s["hallucination"]
    if h["rate"] is not None:
        parts.append(f"hallucination ({h['kind']}) {100 * h['rate']:.2f}%")
    r = s.get("retrieval") or {}
    if r.get("recall") is not None:
        parts.append(f"hotword recall {100 * r['recall']:.1f}% ({r['found']} of {r['names']} names)")
    if r.get("hotwords_per_utterance") is not None:
        parts.append(f"{r['hotwords_per_utterance']:.2f} hotwords retrieved per utterance")
    return f"{s['n_utterances']} utterances, " + ", ".join(parts)


def _assemble(
    config: EvaluateConfig,
    device: str,
    splits: dict[str, dict],
    primary: str | None,
    analysis: dict | None,
    options: DecodingOptions,
    model_config: Any,
) -> dict[str, Any]:
    """The report: headline numbers of the primary split, settings (the decoding options in effect, the gates as
    the model's config resolves them), splits and the analysis."""
    decoding = options.to_dict()
    decoding["no_speech_threshold"], decoding["min_speech_confidence"] = options.gates(model_config)
    decoding["hotwords"] = len(decoding["hotwords"])
    p = splits.get(primary, {}) if primary else {}

    def rate(lang: str, key: str = "error_rates", field: str = "error_rate") -> Any:
        r = (p.get(key) or {}).get(lang)
        return None if r is None else r.get(field)

    def side(lang: str, which: str, field: str = "error_rate") -> Any:
        return ((p.get("biased_error_rates") or {}).get(lang) or {}).get(which, {}).get(field)

    probes = [s for s in splits.values() if s["kind"] == "probe"]
    n_probe = sum(s["hallucination"]["num_samples"] for s in probes)
    decode_seconds = sum(s["decode_seconds"] for s in splits.values())
    audio_seconds = sum(s["audio_seconds"] for s in splits.values())
    n_utts = sum(s["n_utterances"] for s in splits.values())
    a = analysis or {}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "model": str(config.model),
        "dataset": str(config.data),
        "primary_split": primary,
        "wer_en": rate("en"),
        "cer_zh": rate("zh"),
        "mer_mixed": rate("mixed"),
        "wer_en_ci95": rate("en", field="ci95"),
        "cer_zh_ci95": rate("zh", field="ci95"),
        "mer_mixed_ci95": rate("mixed", field="ci95"),
        "per_en": rate("en", "phoneme_error_rates"),
        "per_zh": rate("zh", "phoneme_error_rates"),
        "per_en_ci95": rate("en", "phoneme_error_rates", "ci95"),
        "per_zh_ci95": rate("zh", "phoneme_error_rates", "ci95"),
        "bwer_en": side("en", "biased"),
        "uwer_en": side("en", "unbiased"),
        "bcer_zh": side("zh", "biased"),
        "ucer_zh": side("zh", "unbiased"),
        "bwer_en_ci95": side("en", "biased", "ci95"),
        "uwer_en_ci95": side("en", "unbiased", "ci95"),
        "bcer_zh_ci95": side("zh", "biased", "ci95"),
        "ucer_zh_ci95": side("zh", "unbiased", "ci95"),
        "bmer_mixed": side("mixed", "biased"),
        "umer_mixed": side("mixed", "unbiased"),
        "bmer_mixed_ci95": side("mixed", "biased", "ci95"),
        "umer_mixed_ci95": side("mixed", "unbiased", "ci95"),
        "hallucination_rule": p.get("hallucination", {}).get("rate"),
        "hallucination_rule_ci95": p.get("hallucination", {}).get("ci95"),
        "hallucination_probe": (
            sum(s["hallucination"]["num_flagged"] for s in probes) / n_probe if n_probe else None
        ),
        "hallucination_probe_ci95": proportion_interval(
            sum(s["hallucination"]["num_flagged"] for s in probes), n_probe
        ),
        "nse": a.get("nse"),
        "nse_ci95": a.get("nse_ci95"),
        "pai": a.get("pai_bits"),
        "pai_ci95": a.get("pai_ci95"),
        "pai_normalised": a.get("pai_normalised"),
        "pai_stopped_at_start": a.get("pai_stopped_at_start"),
        "csai": a.get("csai_bits"),
        "csai_ci95": a.get("csai_ci95"),
        "csai_stopped_at_start": a.get("csai_stopped_at_start"),
        "csai_frame": a.get("csai_frame_bits"),
        "csai_frame_ci95": a.get("csai_frame_ci95"),
        "csai_frame_stopped_at_start": a.get("csai_frame_stopped_at_start"),
        "cka_to_pretrained": a.get("cka_to_reference"),
        "cka_to_pretrained_ci95": a.get("cka_to_reference_ci95"),
        "rtf": decode_seconds / audio_seconds if audio_seconds else None,
        "decode_seconds": decode_seconds,
        "audio_seconds": audio_seconds,
        "n_utterances": n_utts,
        "utterances_per_second": n_utts / decode_seconds if decode_seconds else None,
        "settings": {
            "batch_size": config.batch_size,
            "max_utterances": config.max_utterances,
            "analysis_max_utterances": config.analysis_max_utterances,
            "device": device,
            "length_ratio": config.length_ratio,
            "max_unigram_precision": config.max_unigram_precision,
            "worst_k": config.worst_k,
            "context": config.context,
            "hotwords_file": config.hotwords_file,
            **decoding,
            "reference_model": config.reference_model,
            "label_model": config.label_model,
            "torch_threads": torch.get_num_threads(),
        },
        "splits": splits,
        "entropy_allocation": analysis,
    }
