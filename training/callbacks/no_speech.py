"""Calibrating the no-speech gates (`EntropyASRConfig.no_speech_threshold`, `min_speech_confidence`) on
held-out speech.

The decoder-side gate silences a clip when the LLM would end its turn at once with at least the threshold's
probability (Whisper's no-speech rule, with the model's own end of turn as the no-speech token). The threshold is
set from speech only: (1 + margin) x the highest such probability over clips of the dev split (at least a floor),
so none of them would be silenced; noise and silence the model has learned to answer with an empty turn then end
at the gate too.

The encoder-side gate silences a clip whose speech confidence (how peaked the phoneme-CTC posteriors are where a
phoneme wins, `speech_confidence` in the model's code) is below its minimum, set from speech only too:
(1 - confidence_margin) x the lowest confidence over the same dev clips. It catches what the LLM answers although
no phoneme is clear: babble (several talkers at once), to which the tiny demo models write a training sentence.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from training.data.loading import SpeechDataset, load_stage_split
from training.data.splits import Utterance, length_batches, subset_indices, usable_utterances
from training.inference import load_pipeline

logger = logging.getLogger(__name__)


@torch.inference_mode()
def _per_clip(model, method: str, processor, clips: Sequence, batch_size: int, desc: str) -> np.ndarray:
    """`model.METHOD(**processor output)` -> (B,) for every clip, in batches of similar length, in input order."""

    out = np.zeros(len(clips))
    batches = length_batches([len(c) for c in clips], batch_size)
    for idx in tqdm(batches, desc=desc, unit="batch", disable=None):
        inputs = processor(audio=[clips[i] for i in idx]).to(model.device)
        out[idx] = getattr(model, method)(**inputs).cpu().numpy()
    return out


def no_speech_probabilities(model, processor, clips: Sequence, batch_size: int = 16) -> np.ndarray:
    """P(end of turn as the first transcript token) per clip (`model.no_speech_probability`), in batches of
    similar length."""
    return _per_clip(model, "no_speech_probability", processor, clips, batch_size, "no-speech calibration")


def speech_confidences(model, processor, clips: Sequence, batch_size: int = 16) -> np.ndarray:
    """Speech confidence per clip (`model.speech_confidence`), in batches of similar length."""
    return _per_clip(
        model, "speech_confidence", processor, clips, batch_size, "speech-confidence calibration"
    )


def confidence_threshold_from(confidences: np.ndarray, margin: float) -> float | None:
    """The minimum confidence that silences none of these speech clips, with a relative margin below the
    lowest; None (no gate) when a clip has confidence 0 (no phoneme won anywhere in it: the CTC head cannot
    tell this speech from silence) or the margin leaves nothing."""
    if len(confidences) == 0:
        raise ValueError("no calibration clips")
    threshold = float(np.min(confidences)) * (1.0 - margin)
    return threshold if threshold > 0 else None


def threshold_from(probabilities: np.ndarray, margin: float, floor: float = 0.01) -> float:
    """The gate that silences none of these speech clips, with a relative margin, at least `floor` (a model
    that never ends at once on dev speech would otherwise get a gate near 0, silencing any clip that gives
    ending a hair more probability), at most 1."""
    if len(probabilities) == 0:
        raise ValueError("no calibration clips")
    return float(min(1.0, max(floor, float(np.max(probabilities)) * (1.0 + margin))))


def calibrate_model_folder(
    model_dir: str | Path,
    clips: Sequence,
    margin: float,
    batch_size: int = 16,
    floor: float = 0.01,
    confidence_margin: float | None = None,
) -> dict[str, Any]:
    """Measure on `clips`, write `no_speech_threshold` (and, with a `confidence_margin`,
    `min_speech_confidence`; without one, or if measuring the confidences fails, null: the config holds the
    gates of these weights only) into MODEL_DIR/config.json, return what was measured."""

    model_dir = Path(model_dir)
    # a paper-scale model calibrates on the GPU it trained on
    device = "cuda" if torch.cuda.is_available() else "cpu"
    recognizer = load_pipeline(str(model_dir), device=device)
    candidates = [Utterance(f"calibration clip {i}", c, "", None, i) for i, c in enumerate(clips)]
    usable, _ = usable_utterances(recognizer.processor, candidates)  # too long or too short: skipped, logged
    if not usable:
        raise ValueError("no calibration clip the processor accepts")
    clips = [u.audio for u in usable]
    probs = no_speech_probabilities(recognizer.model, recognizer.processor, clips, batch_size)
    threshold = threshold_from(probs, margin, floor)
    info = {
        "no_speech_threshold": threshold,
        "clips": len(clips),
        "max_probability": float(probs.max()),
        "median_probability": float(np.median(probs)),
        "margin": margin,
        "floor": floor,
    }
    logger.info(
        "no-speech gate: threshold %.4f (%d speech clips, highest end-of-turn-first probability %.4f)",
        threshold,
        len(clips),
        info["max_probability"],
    )
    min_confidence = None
    if confidence_margin is not None and not hasattr(recognizer.model, "speech_confidence"):
        logger.warning("speech-confidence gate not calibrated: the model's code (saved before it) has none")
    elif confidence_margin is not None:
        try:
            confidences = speech_confidences(recognizer.model, recognizer.processor, clips, batch_size)
        except (ValueError, KeyError, RuntimeError) as err:  # the decoder-side gate stands without it
            logger.warning("speech-confidence gate not calibrated: %s", err)
        else:
            min_confidence = confidence_threshold_from(confidences, confidence_margin)
            info.update(
                min_speech_confidence=min_confidence,
                min_confidence=float(confidences.min()),
                median_confidence=float(np.median(confidences)),
                confidence_margin=confidence_margin,
            )
            logger.info(
                "speech-confidence gate: minimum %s (lowest confidence on the speech clips %.4f)",
                "none" if min_confidence is None else f"{min_confidence:.4f}",
                info["min_confidence"],
            )
    set_gate(model_dir, threshold, min_confidence)
    return info


GATE_KEYS = ("no_speech_threshold", "min_speech_confidence")


def set_gate(model_dir: str | Path, threshold: float | None, min_confidence: float | None = None) -> None:
    """Write `no_speech_threshold` and `min_speech_confidence` into MODEL_DIR/config.json, both (a gate left
    out is set to null: gates measured on other weights must not survive), through a temporary file: readers
    never see half a config."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    values = dict(zip(GATE_KEYS, (threshold, min_confidence)))
    if all(config.get(k) == v for k, v in values.items()):
        return
    config.update(values)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def calibrate_stage_output(config, out: Path) -> dict[str, Any] | None:
    """The stage hook: calibrate the saved model in `out` on `config.no_speech.samples` clips of the eval split
    (recorded in stage_info.json). None, and no gate in the saved config (not even one inherited from the
    starting model), when the stage writes no transcripts, calibration is off, there is no eval split, or the
    calibration fails (logged: the trained model is kept and the stage completes)."""

    if not config.kind.transcribes or config.no_speech.samples <= 0:
        set_gate(out, None)  # a gate inherited from the starting model was measured on other weights
        return None
    split = config.data.eval_split
    if not split:
        logger.warning("no-speech gate not calibrated: the stage has no data.eval_split")
        set_gate(out, None)
        return None
    try:
        ds = load_stage_split(config.data, split)
        ds = ds.select(subset_indices(len(ds), config.no_speech.samples))  # both languages of a sorted split
        clips = [row["audio"] for row in SpeechDataset(ds) if row is not None]
        if not clips:
            raise ValueError(f"no usable clip in the {split} split")
        gate = config.no_speech
        info = calibrate_model_folder(
            out, clips, gate.margin, floor=gate.floor, confidence_margin=gate.confidence_margin
        )
    except (ValueError, KeyError, RuntimeError) as err:  # the model is saved: finish the stage without a gate
        logger.warning("no-speech gate not calibrated: %s", err)
        set_gate(out, None)
        return None
    info["split"] = split
    info_path = out / "stage_info.json"
    stage_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    stage_info["no_speech"] = info
    info_path.write_text(json.dumps(stage_info, indent=2))
    return info
