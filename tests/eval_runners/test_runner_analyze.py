"""`entropy-asr analyze` on the tiny corpus with the random tiny model: structure and consistency of the
scores (the random model's values mean nothing), several models in one table, CKA to a reference, frame
labels from a label model (labels from each model's own head are covered by the evaluate tests)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from training.commands.cli import main


@pytest.fixture(scope="module")
def perturbed_model_dir(tmp_path_factory, tiny_model_and_processor):
    """The tiny model with noise added to its encoder: a second, different encoder to compare."""
    from training.build import save_model_folder

    model, processor = tiny_model_and_processor
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.model.encoder.parameters():
            p.add_(0.5 * p.std().nan_to_num(0.02) * torch.randn(p.shape, generator=gen))
    return save_model_folder(other, processor, tmp_path_factory.mktemp("perturbed_model"))


@pytest.fixture(scope="module")
def analysis(tmp_path_factory, tiny_corpus, tiny_model_dir, perturbed_model_dir):
    out = tmp_path_factory.mktemp("analyze")
    code = main(
        [
            "analyze",
            "--model", str(tiny_model_dir), str(perturbed_model_dir),
            "--names", "tiny", "perturbed",
            "--reference-model", str(tiny_model_dir),
            "--label-model", str(tiny_model_dir),
            "--data", str(tiny_corpus / "dataset"),
            "--split", "test",
            "--max-utterances", "8",
            "--batch-size", "4",
            "--device", "cpu",
            "--option", "num_threads=1",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    return out, json.loads((out / "scores.json").read_text())


def test_scores_json_per_model(analysis):
    _, result = analysis
    assert result["schema"] == "entropy-asr/analyze" and result["schema_version"] == 1
    assert result["split"] == "test" and result["max_utterances"] == 8
    assert result["allocation_config"]["log_base"] == 2.0
    assert result["allocation_config"]["probe"]["num_threads"] == 1  # --option reached the probes
    assert [m["name"] for m in result["models"]] == ["tiny", "perturbed"]
    assert result["label_model"] is not None
    for m in result["models"]:
        assert m["label_source"] == "label_model_phoneme_head" and m["ctc_units"] == "phoneme"
        assert m["n_utterances"] == 8 and m["n_labelled_utterances"] == 8 - sum(m["skipped"].values())
        assert math.isfinite(m["nse"]) and 0.0 <= m["nse"] <= 1.0
        assert m["nse"] == m["scores"]["nse"] and m["pai_bits"] == m["scores"]["pai_bits"]
        assert math.isfinite(m["pai_bits"])
        assert m["scores"]["h_p"] > 0  # held-out frames with more than one phoneme: PAI / H(P) defined
        assert m["pai_normalised"] == pytest.approx(m["pai_bits"] / m["scores"]["h_p"])
        assert m["dim"] == 144 and m["n_frames"] == m["scores"]["n_frames"] > 0
        assert m["encoder_frames_per_second"] == pytest.approx(25.0, rel=0.05)  # tiny encoder: 25 Hz
        # both CSAIs, each with its interval (or the flag that it is 0 by construction), never clipped
        for key in ("csai", "csai_frame"):
            assert m[f"{key}_bits"] == m["scores"][f"{key}_bits"] and math.isfinite(m[f"{key}_bits"])
            assert m[f"{key}_ci95"] == m["scores"][f"{key}_ci95"]
            low, high = m[f"{key}_ci95"]
            assert low <= m[f"{key}_bits"] <= high
            assert (low == high == 0.0) == (m[f"{key}_stopped_at_start"] is True)
        assert m["pai_ci95"][0] <= m["pai_bits"] <= m["pai_ci95"][1]
        assert m["scores"]["n_pronunciation_classes"] > 1
    # one label model labels both encoders: the same frames, the same label entropies
    tiny, perturbed = result["models"]
    assert tiny["n_frames"] == perturbed["n_frames"]
    assert tiny["scores"]["h_p"] == perturbed["scores"]["h_p"]


def test_cka_to_itself_is_one_and_to_another_encoder_less(analysis):
    _, result = analysis
    tiny, perturbed = result["models"]
    assert tiny["cka_to_reference"] == pytest.approx(1.0, abs=1e-6)
    assert perturbed["cka_to_reference"] < 1.0 - 1e-3
    assert tiny["scores"]["nse_reference"] == pytest.approx(tiny["nse"], abs=1e-9)


def test_decoder_entropies_summarised(analysis):
    _, result = analysis
    for m in result["models"]:
        dec = m["decoder_entropy"]["test"]
        assert dec["n_utterances"] == len(dec["utterances"]) == 8
        assert dec["n_tokens"] == sum(u["n_tokens"] for u in dec["utterances"]) > 0
        assert dec["mean_with_audio"] == pytest.approx(
            sum(u["mean_with_audio"] for u in dec["utterances"]) / 8
        )
        assert dec["mean_reduction"] == pytest.approx(dec["mean_without_audio"] - dec["mean_with_audio"])
        assert all(u["mean_with_audio"] >= 0 and u["mean_without_audio"] >= 0 for u in dec["utterances"])


def test_table_and_plot_compare_both_models(analysis):
    out, result = analysis
    table = (out / "scores.md").read_text()
    rows = [
        line for line in table.splitlines() if line.startswith("| tiny") or line.startswith("| perturbed")
    ]
    assert len(rows) == 2
    assert f"{result['models'][1]['nse']:.4f}" in rows[1]
    png = (out / "scores.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_unknown_split_fails_cleanly(tmp_path, tiny_corpus, tiny_model_dir, caplog):
    args = ["analyze", "--model", str(tiny_model_dir), "--data", str(tiny_corpus / "dataset")]
    code = main([*args, "--split", "nope", "--out", str(tmp_path)])
    assert code == 2
    assert "nope" in caplog.text and not (tmp_path / "scores.json").exists()


def test_bad_allocation_option_fails_cleanly(tmp_path, tiny_corpus, tiny_model_dir, caplog):
    args = ["analyze", "--model", str(tiny_model_dir), "--data", str(tiny_corpus / "dataset")]
    code = main([*args, "--option", "no_such_option=1", "--out", str(tmp_path)])
    assert code == 2
    assert "no_such_option" in caplog.text


def test_reference_and_label_outputs_are_computed_once_per_model_version(tmp_path, monkeypatch):
    """Evaluating every stage of a recipe against one reference and one label model encodes their utterances
    once per process; new weights in the folder, other utterances or another model are computed again."""
    import numpy as np

    from eval.runners import analyze
    from training.data.splits import Utterance

    calls = []
    monkeypatch.setattr(analyze, "_REMEMBERED", {})
    monkeypatch.setattr(analyze, "reference_outputs", lambda *a: calls.append(("ref", a[0])) or len(calls))
    monkeypatch.setattr(analyze, "label_model_labels", lambda *a: calls.append(("lab", a[0])) or len(calls))
    model = tmp_path / "stage1"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"v1")
    utts = [Utterance(f"u{i}", np.zeros(1600, np.float32), "x", "en", i) for i in range(3)]

    def shared(utterances=utts, label=str(model)):
        s = analyze.prepare_shared(utterances, "cpu", 4, str(model), label)
        return s.reference, s.labels

    assert shared() == (1, 2) and shared() == (1, 2) and len(calls) == 2
    assert shared(utts[:2]) == (3, 4)  # other utterances
    assert shared(label="hub/label-model") == (1, 5) and calls[-1] == ("lab", "hub/label-model")
    assert shared(label="hub/label-model") == (1, 6)  # no model.safetensors here: not remembered
    (model / "model.safetensors").write_bytes(b"v2, retrained")  # new weights: size and mtime change
    assert shared() == (7, 8) and len(calls) == 8


def test_allocation_scores_are_reused_for_the_same_inputs_only(monkeypatch):
    """A stage that trains neither the encoder nor its head gives the analysis the same inputs as the stage
    before it: the probes are not trained again, and the figures are those computed the first time. Any
    change to an array or an option computes them again."""
    import numpy as np

    from eval.entropy_allocation import allocation
    from eval.runners import analyze

    calls = []

    def scores(**inputs):
        calls.append(inputs)
        return allocation.entropy_allocation_scores(**inputs)

    monkeypatch.setattr(analyze, "_SCORES", {})
    monkeypatch.setattr(analyze, "entropy_allocation_scores", scores)
    rng = np.random.default_rng(0)
    n, utts = 600, 20
    phonemes = rng.integers(0, 6, n)
    inputs = {
        "encoder_states": (np.eye(6)[phonemes] + 0.3 * rng.standard_normal((n, 6))).astype(np.float32),
        "phonemes": phonemes,
        "units": phonemes // 2,
        "utterance_ids": np.array([f"u{i % utts}" for i in range(n)]),
        "pronunciations": phonemes // 2,
        "bootstrap_resamples": 20,
    }
    first = analyze.allocation_scores_once(**inputs)
    again = analyze.allocation_scores_once(
        **{k: v.copy() if hasattr(v, "copy") else v for k, v in inputs.items()}
    )
    assert len(calls) == 1 and again == first and again is not first
    again["nse"] = -1.0  # the caller's copy: the remembered result is untouched
    assert analyze.allocation_scores_once(**inputs)["nse"] == first["nse"]
    analyze.allocation_scores_once(**dict(inputs, encoder_states=inputs["encoder_states"] * np.float32(1.5)))
    assert len(calls) == 2
    analyze.allocation_scores_once(**dict(inputs, bootstrap_resamples=21))
    analyze.allocation_scores_once(**dict(inputs, utterance_ids=np.roll(inputs["utterance_ids"], 1)))
    assert len(calls) == 4
