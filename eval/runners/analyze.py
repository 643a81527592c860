"""Entropy-allocation analysis of one or several models on one dataset split (`entropy-asr analyze`).

For every model: encoder states on the split's utterances, frame labels by forced alignment
(`eval.runners.features`), then NSE, PAI, CSAI (and linear CKA to `--reference-model` on the same frames)
from `eval.entropy_allocation.allocation.entropy_allocation_scores`; and the decoder-side view, the LLM's per-token entropy
of the reference transcript with and without the audio (the model's `token_entropies`), summarised per
split. Several models (e.g. each stage's output) go into one table and one plot, like the paper's
Figure 1 (encoders before and after joint training).

Outputs in OUT:
- `scores.json` (schema below), `scores.md` (the comparison table), `scores.png` (one panel per score,
  one bar per model).

`scores.json` (schema "entropy-asr/analyze", version 1). Entropies are in bits per frame (log base 2,
unless `log_base` is changed); a score that is undefined is null.

    {
      "schema": "entropy-asr/analyze", "schema_version": 1,
      "dataset": str, "split": str, "max_utterances": int | null,
      "reference_model": str | null,     # CKA reference (e.g. the pretrained encoder)
      "label_model": str | null,         # phoneme head that labels the frames of every model, if given
      "unit_definition": str,            # what S is (see eval.runners.features)
      "allocation_config": {...},        # every AllocationConfig / ProbeConfig field used
      "models": [{
        "name": str, "path": str,
        "ctc_units": "phoneme" | "character",
        "label_source": "own_phoneme_head" | "label_model_phoneme_head" | "own_character_head_even_split",
        "n_utterances": int,             # utterances of the split analysed (after decoding skips)
        "n_labelled_utterances": int,    # of those, the ones whose frames were labelled
        "skipped": {reason: count},      # utterances skipped for frame labels, by reason
        "n_frames": int, "dim": int, "encoder_frames_per_second": float,
        "nse": float,                    # in [0, 1]
        "pai_bits": float, "pai_normalised": float,   # PAI and PAI / H(P)
        "csai_bits": float,              # CSAI beyond the unit's pronunciation
        "csai_frame_bits": float,        # frame-phoneme CSAI (conditioned on the frame's phoneme only)
        "cka_to_reference": float | null,
        "nse_ci95", "cka_to_reference_ci95": [low, high] | null,  # 95% bootstrap over blocks of utterances
        "pai_ci95", "pai_normalised_ci95", "csai_ci95", "csai_frame_ci95": [low, high] | null,  # the same
                                         # bootstrap over the held-out utterances, probes trained once
        "pai_stopped_at_start", "csai_stopped_at_start", "csai_frame_stopped_at_start": bool | null,  # the
                                         # starting probe kept: PAI at the marginal's, CSAI 0 by construction
        "scores": {...},                 # everything entropy_allocation_scores returned (h_p, ce_*, counts)
        "decoder_entropy": {split: {
          "n_utterances": int, "n_tokens": int, "skipped": int,
          "mean_with_audio": float, "mean_without_audio": float,    # mean over utterances of per-utterance means
          "mean_reduction": float,                                  # without - with: what the audio removed
          "token_mean_with_audio": float, "token_mean_without_audio": float,   # over all tokens
          "utterances": [{"id", "n_tokens", "mean_with_audio", "mean_without_audio"}]
        }} | {}
      }]
    }
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoProcessor

from eval.entropy_allocation.allocation import entropy_allocation_scores, resolve_config
from eval.runners import report
from eval.runners.features import (
    LABEL_MODEL_PHONEME_HEAD,
    PHONEME,
    UNIT_DEFINITION,
    EncoderOutputs,
    LabelledSet,
    SymbolTable,
    ctc_unit_kind,
    encode_utterances,
    frames_per_second,
    gather_kept,
    label_utterances,
    pool_frames,
)
from eval.runners.keys import figure_text
from training.data.splits import Utterance, load_split, usable_utterances
from training.inference import load_pipeline

logger = logging.getLogger(__name__)

SCHEMA = "entropy-asr/analyze"
SCHEMA_VERSION = 1


@dataclass
class AnalyzeConfig:
    """Everything `entropy-asr analyze` needs (the CLI flags one to one)."""

    models: list[str]
    data: str
    out: str
    split: str = "test"
    names: list[str] | None = None
    reference_model: str | None = None
    label_model: str | None = None
    max_utterances: int | None = None
    batch_size: int = 8
    device: str | None = None
    decoder_entropy: bool = True
    decoder_splits: list[str] | None = None  # default: [split]
    allocation_options: dict[str, Any] = field(default_factory=dict)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_recognizer(path: str, device: str):
    """The model folder's speech-recognition pipeline (`.model`, `.processor`)."""

    _check_local(path)
    return load_pipeline(path, device)


def load_processor(path: str) -> Any:
    """The processor of a model folder (for its audio checks), without loading the weights."""

    _check_local(path)
    return AutoProcessor.from_pretrained(path, trust_remote_code=True)


def _check_local(path: str) -> None:
    if not Path(path).exists() and str(path).startswith(("/", ".", "~")):
        raise FileNotFoundError(f"model folder {path} does not exist")


def model_names(paths: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """Display names: given ones, else folder names made unique with a numeric suffix."""
    if names is not None:
        if len(names) != len(paths):
            raise ValueError(f"{len(names)} names for {len(paths)} models")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {list(names)}")
        return list(names)
    out: list[str] = []
    for p in paths:
        base = Path(p).name or str(p)
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out


def _blank_id(model: Any) -> int:
    return int(getattr(model.config, "ctc_blank_id", 0))


# --------------------------------------------------------------------------------------------------------
# Decoder side
# --------------------------------------------------------------------------------------------------------


def decoder_entropy_summary(recognizer: Any, utterances: Sequence[Utterance], desc: str = "") -> dict:
    """Per-utterance mean LLM token entropy (bits) of the reference with and without the audio, summarised."""
    rows, skipped = [], 0
    token_with: list[float] = []
    token_without: list[float] = []
    for utt in tqdm(utterances, desc=desc or "token entropies", unit="utt", disable=None):
        try:
            r = recognizer.model.token_entropies(recognizer.processor, utt.audio, utt.text)
        except ValueError as err:  # audio the processor rejects (too long/short)
            logger.warning("token entropies: skipping %s: %s", utt.id, err)
            skipped += 1
            continue
        token_with += r["entropy_with_audio"]
        token_without += r["entropy_without_audio"]
        rows.append(
            {
                "id": utt.id,
                "n_tokens": len(r["tokens"]),
                "mean_with_audio": r["mean_with_audio"],
                "mean_without_audio": r["mean_without_audio"],
            }
        )

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    with_audio = mean([r["mean_with_audio"] for r in rows])
    without_audio = mean([r["mean_without_audio"] for r in rows])
    return {
        "n_utterances": len(rows),
        "n_tokens": len(token_with),
        "skipped": skipped,
        "mean_with_audio": with_audio,
        "mean_without_audio": without_audio,
        "mean_reduction": without_audio - with_audio,
        "token_mean_with_audio": mean(token_with),
        "token_mean_without_audio": mean(token_without),
        "utterances": rows,
    }


# --------------------------------------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------------------------------------


@dataclass
class SharedInputs:
    """What every analysed model of a run shares: the utterances, label tables and optional references."""

    utterances: list[Utterance]
    phoneme_table: SymbolTable = field(default_factory=SymbolTable)
    unit_table: SymbolTable = field(default_factory=SymbolTable)
    pronunciation_table: SymbolTable = field(default_factory=SymbolTable)
    reference: EncoderOutputs | None = None  # CKA reference states on the same utterances
    labels: LabelledSet | None = None  # labels from a label model, if one is given
    decoder_sets: dict[str, list[Utterance]] = field(default_factory=dict)


def analyze_recognizer(
    recognizer: Any,
    name: str,
    path: str,
    shared: SharedInputs,
    batch_size: int = 8,
    allocation_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The scores of one loaded model (its pipeline, `load_recognizer`): one `models[]` entry."""
    model, processor = recognizer.model, recognizer.processor
    utts = shared.utterances
    outputs = encode_utterances(
        model, processor, [u.audio for u in utts], batch_size, desc=f"encoding {name}"
    )
    units = ctc_unit_kind(processor.ctc_vocab)
    if shared.labels is not None:
        labelled = shared.labels
    else:
        labelled = label_utterances(utts, outputs.log_probs, processor.ctc_vocab, _blank_id(model))
    pooled = pool_frames(
        utts, outputs.states, labelled, shared.phoneme_table, shared.unit_table, shared.pronunciation_table
    )
    if len(pooled.utterances) < 2:
        raise ValueError(
            f"{name}: only {len(pooled.utterances)} utterance(s) could be labelled; the probes need at least 2 "
            "(held-out split by utterance): use more utterances"
        )
    reference = None
    if shared.reference is not None:
        reference = gather_kept(shared.reference.states, labelled)
    logger.info(
        "%s: %d frames of %d utterances, dim %d",
        name,
        pooled.n_frames,
        len(pooled.utterances),
        pooled.states.shape[1],
    )
    scores = allocation_scores_once(
        encoder_states=pooled.states,
        phonemes=pooled.phonemes,
        units=pooled.units,
        utterance_ids=pooled.utterance_ids,
        reference_states=reference,
        pronunciations=pooled.pronunciations,
        **(allocation_options or {}),
    )
    decoder = {
        split: decoder_entropy_summary(recognizer, rows, desc=f"token entropies {name}/{split}")
        for split, rows in shared.decoder_sets.items()
    }
    return {
        "name": name,
        "path": str(path),
        "ctc_units": units,
        "label_source": labelled.source,
        "n_utterances": len(utts),
        "n_labelled_utterances": len(pooled.utterances),
        "skipped": dict(labelled.skipped),
        "n_frames": pooled.n_frames,
        "dim": int(pooled.states.shape[1]),
        "encoder_frames_per_second": frames_per_second(utts, outputs.states),
        "nse": scores["nse"],
        "nse_ci95": scores.get("nse_ci95"),
        "pai_bits": scores["pai_bits"],
        "pai_ci95": scores.get("pai_ci95"),
        "pai_normalised": scores["pai_normalised"],
        "pai_normalised_ci95": scores.get("pai_normalised_ci95"),
        "pai_stopped_at_start": scores.get("pai_stopped_at_start"),
        "csai_bits": scores["csai_bits"],
        "csai_ci95": scores.get("csai_ci95"),
        "csai_stopped_at_start": scores.get("csai_stopped_at_start"),
        "csai_frame_bits": scores["csai_frame_bits"],
        "csai_frame_ci95": scores.get("csai_frame_ci95"),
        "csai_frame_stopped_at_start": scores.get("csai_frame_stopped_at_start"),
        "cka_to_reference": scores.get("cka"),
        "cka_to_reference_ci95": scores.get("cka_ci95"),
        "scores": scores,
        "decoder_entropy": decoder,
    }


_SCORES: dict[str, dict[str, Any]] = {}


def allocation_scores_once(**inputs: Any) -> dict[str, Any]:
    """`entropy_allocation_scores(**inputs)`, computed once per process for the same inputs (a digest of every
    array's bytes and every option): a stage that trains neither the encoder nor its CTC head (adaptor
    alignment, IA-SFT after its last swap), or one stage scored again on the same utterances, gives the same
    frames, labels and states, and its probes (most of an analysis's time) are not trained again. The result
    is a deterministic function of its inputs, so reusing it changes no figure. The last 8 results are kept."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        value = inputs[name]
        digest.update(name.encode())
        if isinstance(value, np.ndarray):
            value = np.ascontiguousarray(value)
            digest.update(f"{value.dtype}{value.shape}".encode())
            digest.update(value.tobytes() if value.dtype != object else repr(value.tolist()).encode())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=repr).encode())
    key = digest.hexdigest()
    if key in _SCORES:
        logger.info("entropy-allocation scores: the same frames, labels and states as before; reusing them")
    else:
        while len(_SCORES) >= 8:
            _SCORES.pop(next(iter(_SCORES)))
        _SCORES[key] = entropy_allocation_scores(**inputs)
    return copy.deepcopy(_SCORES[key])


# --------------------------------------------------------------------------------------------------------
# Shared inputs from other models
# --------------------------------------------------------------------------------------------------------


def _release_memory() -> None:
    """Return freed model memory (call after dropping the last reference to a model)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reference_outputs(
    path: str, utterances: Sequence[Utterance], device: str, batch_size: int
) -> EncoderOutputs:
    """Encoder states of the CKA reference model on the utterances."""
    ref = load_recognizer(path, device)
    out = encode_utterances(
        ref.model, ref.processor, [u.audio for u in utterances], batch_size, "encoding reference"
    )
    del ref
    _release_memory()
    return out


def label_model_labels(
    path: str, utterances: Sequence[Utterance], device: str, batch_size: int
) -> LabelledSet:
    """Frame labels from a phoneme-CTC label model, for all analysed models."""
    lab = load_recognizer(path, device)
    if ctc_unit_kind(lab.processor.ctc_vocab) != PHONEME:
        raise ValueError(f"--label-model {path} has a character CTC head; it must have a phoneme head")
    out = encode_utterances(
        lab.model, lab.processor, [u.audio for u in utterances], batch_size, "encoding labels"
    )
    labelled = label_utterances(
        utterances, out.log_probs, lab.processor.ctc_vocab, _blank_id(lab.model), LABEL_MODEL_PHONEME_HEAD
    )
    del lab
    _release_memory()
    return labelled


def prepare_shared(
    utterances: list[Utterance],
    device: str,
    batch_size: int,
    reference_model: str | None = None,
    label_model: str | None = None,
    decoder_sets: dict[str, list[Utterance]] | None = None,
) -> SharedInputs:
    shared = SharedInputs(utterances, decoder_sets=dict(decoder_sets or {}))
    if reference_model:
        shared.reference = _remembered(reference_outputs, reference_model, utterances, device, batch_size)
    if label_model:
        shared.labels = _remembered(label_model_labels, label_model, utterances, device, batch_size)
    return shared


_REMEMBERED: dict[tuple, Any] = {}


def _remembered(
    fn: Callable[..., Any], path: str, utterances: Sequence[Utterance], device: str, batch_size: int
):
    """`fn(path, utterances, device, batch_size)`, computed once per process for the same model folder (and
    version of its model.safetensors) and utterances: evaluating every stage of a recipe against one reference and
    one label model encodes their utterances once. The last 4 results are kept; models without a single
    model.safetensors (hub ids, sharded weights) are not remembered."""
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        return fn(path, utterances, device, batch_size)
    stat = weights.stat()
    key = (
        fn,
        str(weights.resolve()),
        stat.st_mtime_ns,
        stat.st_size,
        device,
        batch_size,
        tuple((u.id, u.index, len(u.audio)) for u in utterances),
    )
    if key not in _REMEMBERED:
        while len(_REMEMBERED) >= 4:
            _REMEMBERED.pop(next(iter(_REMEMBERED)))
        _REMEMBERED[key] = fn(path, utterances, device, batch_size)
    else:
        logger.info("%s of %s: reusing this process's result", fn.__name__, path)
    return _REMEMBERED[key]


# --------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------


def run_analysis(config: AnalyzeConfig) -> dict[str, Any]:
    """Analyse every model of `config`, write scores.json / scores.md / scores.png; return the JSON dict."""
    resolve_config(**config.allocation_options)  # fail early on a bad option
    device = config.device or default_device()
    names = model_names(config.models, config.names)
    utterances, counter = load_split(config.data, config.split, config.max_utterances)
    if counter.total:
        logger.warning("%s: %s", config.split, counter.summary())
    utterances, rejected = usable_utterances(load_processor(config.models[0]), utterances)
    if rejected:
        logger.warning("%s: %d clips rejected by the processor (length limits)", config.split, rejected)
    if len(utterances) < 2:
        raise ValueError(f"split {config.split!r} has {len(utterances)} usable utterance(s); need at least 2")
    logger.info("analysing %d utterances of %s/%s", len(utterances), config.data, config.split)
    decoder_sets: dict[str, list[Utterance]] = {}
    if config.decoder_entropy:
        for split in config.decoder_splits or [config.split]:
            decoder_sets[split] = (
                utterances
                if split == config.split
                else load_split(config.data, split, config.max_utterances, allow_empty=True)[0]
            )
    shared = prepare_shared(
        utterances, device, config.batch_size, config.reference_model, config.label_model, decoder_sets
    )
    entries = []
    for name, path in zip(names, config.models):
        recognizer = load_recognizer(path, device)
        entries.append(
            analyze_recognizer(recognizer, name, path, shared, config.batch_size, config.allocation_options)
        )
        del recognizer
        _release_memory()
    result = result_dict(
        config.data,
        config.split,
        entries,
        config.max_utterances,
        config.reference_model,
        config.label_model,
        config.allocation_options,
    )
    write_outputs(Path(config.out), result)
    return result


def result_dict(
    data: str,
    split: str,
    entries: list[dict[str, Any]],
    max_utterances: int | None = None,
    reference_model: str | None = None,
    label_model: str | None = None,
    allocation_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `scores.json` document (schema in the module docstring) around the per-model entries."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "dataset": str(data),
        "split": split,
        "max_utterances": max_utterances,
        "reference_model": reference_model,
        "label_model": label_model,
        "unit_definition": UNIT_DEFINITION,
        "allocation_config": asdict(resolve_config(**(allocation_options or {}))),
        "models": entries,
    }


def table_rows(entries: Sequence[dict]) -> tuple[list[str], list[list[Any]]]:
    header = [
        "model",
        "labels",
        "utts",
        "frames",
        "NSE",
        "PAI (bits)",
        "PAI / H(P)",
        "CSAI (bits)",
        "CSAI frame (bits)",
        "CKA to ref",
        "H tok (audio)",
        "H tok (text only)",
    ]
    rows = []
    for e in entries:
        dec = next(iter(e.get("decoder_entropy", {}).values()), {})
        rows.append(
            [
                e["name"],
                e["label_source"],
                e["n_labelled_utterances"],
                e["n_frames"],
                figure_text(e["nse"], e.get("nse_ci95"), digits=4),
                figure_text(e["pai_bits"], e.get("pai_ci95"), e.get("pai_stopped_at_start")),
                figure_text(e["pai_normalised"], e.get("pai_normalised_ci95")),
                figure_text(e["csai_bits"], e.get("csai_ci95"), e.get("csai_stopped_at_start")),
                figure_text(
                    e["csai_frame_bits"], e.get("csai_frame_ci95"), e.get("csai_frame_stopped_at_start")
                ),
                figure_text(e["cka_to_reference"], e.get("cka_to_reference_ci95"), digits=4),
                dec.get("mean_with_audio"),
                dec.get("mean_without_audio"),
            ]
        )
    return header, rows


def score_panels(entries: Sequence[dict]) -> dict[str, dict[str, float | None]]:
    panels = {
        "NSE": {e["name"]: e["nse"] for e in entries},
        "PAI / H(P)": {e["name"]: e["pai_normalised"] for e in entries},
        "PAI (bits/frame)": {e["name"]: e["pai_bits"] for e in entries},
        "CSAI (bits/frame)": {e["name"]: e["csai_bits"] for e in entries},
        "frame-phoneme CSAI (bits/frame)": {e["name"]: e["csai_frame_bits"] for e in entries},
    }
    if any(e["cka_to_reference"] is not None for e in entries):
        panels["CKA to reference"] = {e["name"]: e["cka_to_reference"] for e in entries}
    return panels


def markdown(result: dict[str, Any]) -> str:
    header, rows = table_rows(result["models"])
    lines = [
        f"# Entropy allocation: {result['dataset']} / {result['split']}",
        "",
        report.markdown_table(header, rows),
        "",
        "NSE: normalised spectral entropy of the encoder frames (low = compressed). PAI: phonetic information "
        "a linear probe reads from a frame (bits, and as a fraction of H(P)). CSAI: word/character identity a "
        "linear probe reads beyond the unit's pronunciation, e.g. which of two homophones was said (bits). CSAI "
        "frame: the same beyond the frame's own phoneme only, so phonetic context counts too. CKA: linear CKA to "
        "the reference encoder on the same frames. H tok: the LLM's mean next-token entropy of the reference "
        "transcript with the audio and from the text alone (bits). In brackets: 95% bootstrap intervals over "
        "utterances (PAI, CSAI: over the held-out utterances, probes trained once; narrower than the whole "
        "uncertainty); '0 (stopped at start)': early stopping kept the probe without Z, so the CSAI is 0 by "
        "construction.",
        "",
        f"Units: {result['unit_definition']}. Reference model: {result['reference_model'] or '–'}. "
        f"Label model: {result['label_model'] or '– (each model labels its own frames)'}.",
        "",
        "![scores](scores.png)",
        "",
    ]
    return "\n".join(lines)


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "scores.json", result)
    (out / "scores.md").write_text(markdown(result))
    report.panel_bar_plot(
        out / "scores.png", score_panels(result["models"]), title=f"{result['split']}: entropy allocation"
    )
    logger.info("wrote %s", out / "scores.json")
