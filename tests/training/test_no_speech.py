"""No-speech gate calibration: the threshold silences none of the calibration clips, is written into the
model folder, and loads back through the Auto classes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import synth_clip
from training.callbacks.no_speech import (
    calibrate_model_folder,
    confidence_threshold_from,
    no_speech_probabilities,
    speech_confidences,
    threshold_from,
)
from training.data.splits import subset_indices


def test_threshold_and_spacing():
    assert threshold_from(np.array([0.01, 0.04, 0.02]), 0.25) == pytest.approx(0.05)
    assert threshold_from(np.array([0.9]), 0.25) == 1.0
    assert threshold_from(np.array([1e-9, 0.0]), 0.25) == 0.01  # the floor: never a gate near 0
    assert threshold_from(np.array([1e-9]), 0.25, floor=1e-3) == 1e-3
    with pytest.raises(ValueError):
        threshold_from(np.array([]), 0.25)
    # the calibration clips: evenly spaced rows, as the evaluation picks its subsets
    assert subset_indices(10, 3) == [0, 4, 9] or subset_indices(10, 3) == [0, 5, 9]
    assert subset_indices(3, 10) == [0, 1, 2]


def _measured_on_a_copy(tiny_model_dir, tmp_path, measure, method: str):
    """A copy of the tiny model in tmp_path/model, four clips, the copy's pipeline and `measure`'s values on the
    clips, checked to be the model's `method` on one clip at a time (batched in length order, returned in input
    order)."""
    from training.inference import load_pipeline

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    clips = [synth_clip(s, seed=i) for i, s in enumerate((0.8, 1.4, 2.1, 2.9))]
    pipe = load_pipeline(str(folder), "cpu")
    values = measure(pipe.model, pipe.processor, clips, batch_size=3)
    single = [float(getattr(pipe.model, method)(**pipe.processor(audio=[c]))[0]) for c in clips]
    np.testing.assert_allclose(values, single, rtol=1e-4, atol=1e-7)
    return folder, clips, pipe, values


def _texts(pipe, clips) -> list[str]:
    """Greedy transcripts of the clips through the pipeline (the gates act on every decoder alike)."""
    return [r["text"] for r in pipe(list(clips), batch_size=len(clips), ctc_weight=0)]


def test_calibrated_folder_keeps_its_clips_and_silences_a_likelier_one(tiny_model_dir, tmp_path):
    from training.inference import load_pipeline

    folder, clips, before, probs = _measured_on_a_copy(
        tiny_model_dir, tmp_path, no_speech_probabilities, "no_speech_probability"
    )
    order = np.argsort(probs)
    low, high = [clips[i] for i in order[:3]], clips[order[3]]
    assert probs[order[3]] > 1.01 * probs[order[2]], "the random model must rank the clips apart"
    texts = _texts(before, low + [high])
    assert all(t.strip() for t in texts)

    # calibrated on the three clips least likely to end at once: they keep their transcripts, the fourth ends
    info = calibrate_model_folder(folder, low, margin=0.001, floor=1e-12)
    assert info["no_speech_threshold"] == pytest.approx(1.001 * probs[order[:3]].max())
    assert (
        json.loads((folder / "config.json").read_text())["no_speech_threshold"] == info["no_speech_threshold"]
    )
    after = load_pipeline(str(folder), "cpu")
    assert after.model.config.no_speech_threshold == info["no_speech_threshold"]
    assert _texts(after, low + [high]) == texts[:3] + [""]


def _stage_config(tiny_corpus, out, stage="joint_sft", **no_speech):
    from training.config import load_stage_config

    return load_stage_config(
        {
            "stage": stage,
            "model": str(out),
            "output_dir": str(out),
            "data": {
                "path": str(tiny_corpus / "dataset"),
                "text_corpus": str(tiny_corpus / "text_corpus.txt"),
            },
            "no_speech": no_speech,
        }
    )


@pytest.mark.parametrize("case", ["pretrain", "samples 0", "no eval split", "calibration fails"])
def test_a_stage_that_does_not_calibrate_leaves_no_inherited_gate(
    tiny_model_dir, tiny_corpus, tmp_path, monkeypatch, case
):
    from training.callbacks import no_speech
    from training.callbacks.no_speech import calibrate_stage_output, set_gate

    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    set_gate(out, 0.3, 0.2)  # as if the starting model had been calibrated
    saved = json.loads((out / "config.json").read_text())
    assert saved["no_speech_threshold"] == 0.3 and saved["min_speech_confidence"] == 0.2
    config = _stage_config(tiny_corpus, out, stage="pretrain" if case == "pretrain" else "joint_sft")
    if case == "samples 0":
        config.no_speech.samples = 0
    if case == "no eval split":
        config.data.eval_split = None
    if case == "calibration fails":
        monkeypatch.setattr(
            no_speech, "calibrate_model_folder", lambda *a, **k: (_ for _ in ()).throw(ValueError("broken"))
        )
    assert calibrate_stage_output(config, out) is None
    saved = json.loads((out / "config.json").read_text())
    assert saved["no_speech_threshold"] is None and saved["min_speech_confidence"] is None
    assert not (out / "config.json.tmp").exists()


def test_confidence_threshold():
    assert confidence_threshold_from(np.array([0.5, 0.4, 0.7]), 0.1) == pytest.approx(0.36)
    assert confidence_threshold_from(np.array([0.5]), 0.0) == 0.5
    assert confidence_threshold_from(np.array([0.5, 0.0]), 0.1) is None  # a clip where no phoneme won
    with pytest.raises(ValueError):
        confidence_threshold_from(np.array([]), 0.1)


def test_calibrated_speech_confidence_keeps_its_clips_and_silences_a_flatter_one(tiny_model_dir, tmp_path):
    from training.inference import load_pipeline

    folder, clips, before, conf = _measured_on_a_copy(
        tiny_model_dir, tmp_path, speech_confidences, "speech_confidence"
    )
    order = np.argsort(conf)[::-1]  # most confident first
    high, low = [clips[i] for i in order[:3]], clips[order[3]]
    assert conf[order[3]] < 0.99 * conf[order[2]], "the random model must rank the clips apart"
    texts = _texts(before, high + [low])
    assert all(t.strip() for t in texts)

    info = calibrate_model_folder(folder, high, margin=0.25, confidence_margin=0.001)
    assert info["min_confidence"] == pytest.approx(conf[order[2]], rel=1e-4)
    assert info["min_speech_confidence"] == pytest.approx(0.999 * conf[order[2]], rel=1e-4)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["min_speech_confidence"] == info["min_speech_confidence"]
    assert saved["no_speech_threshold"] == info["no_speech_threshold"]
    after = load_pipeline(str(folder), "cpu")
    assert _texts(after, high + [low]) == texts[:3] + [""]
    # without a confidence margin only the decoder-side gate is written, and an old encoder-side one is cleared
    info = calibrate_model_folder(folder, high, margin=0.25)
    saved = json.loads((folder / "config.json").read_text())
    assert "min_speech_confidence" not in info and saved["min_speech_confidence"] is None


def test_a_failed_confidence_measurement_keeps_the_no_speech_gate(tiny_model_dir, tmp_path, monkeypatch):
    from training.callbacks import no_speech

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    no_speech.set_gate(folder, 0.5, 0.2)  # gates of other weights: both replaced
    monkeypatch.setattr(
        no_speech, "speech_confidences", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory"))
    )
    clips = [synth_clip(s, seed=i) for i, s in enumerate((0.8, 1.4))]
    info = calibrate_model_folder(folder, clips, margin=0.25, confidence_margin=0.1)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["no_speech_threshold"] == info["no_speech_threshold"] != 0.5
    assert saved["min_speech_confidence"] is None and "min_speech_confidence" not in info
