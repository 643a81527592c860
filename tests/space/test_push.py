"""`entropy-asr push --dry-run`: the model folder loads in a fresh offline process through AutoModel,
AutoProcessor and pipeline and transcribes; the card's metadata parses and its usage code runs against the
folder; a LoRA adapter is merged; the Space and metric folders are complete."""

from __future__ import annotations

import filecmp
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import ISOLATED, REPO, run_python

MODEL_ID = "someone/entropy-asr-tiny"
REPORT = {
    "recipes": {
        "conventional": {"final_stage": "joint", "stages": {"joint": {"wer_en": 0.5, "cer_zh": 0.6}}},
        "entropy-aware": {
            "final_stage": "grpo",
            "stages": {
                "alignment": {"wer_en": 0.9, "cer_zh": 0.95},
                "grpo": {
                    "wer_en": 0.081,
                    "cer_zh": 0.092,
                    "hallucination_rule": 0.004,
                    "hallucination_probe": 0.0,
                    "nse": 0.41,
                    "pai": 2.1,
                    "csai": 0.12,
                    "cka_to_pretrained": 0.97,
                    "rtf": 0.05,
                },
            },
        },
    },
    "pocketsphinx": {"wer_en": 0.3},
}


@pytest.fixture(scope="module")
def release(tiny_model_dir, examples_dir, tmp_path_factory) -> Path:
    from training.commands.cli import main

    out = tmp_path_factory.mktemp("release")
    report = out / "summary.json"
    report.write_text(json.dumps(REPORT))
    rc = main(
        [
            "push",
            "--model",
            str(tiny_model_dir),
            "--repo-id",
            MODEL_ID,
            "--space-id",
            "someone/entropy-asr-demo",
            "--metric-id",
            "someone/entropy_allocation",
            "--dry-run",
            "--out",
            str(out),
            "--report",
            str(report),
            "--examples",
            str(examples_dir),
        ]
    )
    assert rc == 0
    return out


def test_model_folder_is_complete(release, tiny_model_dir):
    model = release / "model"
    names = {p.name for p in model.iterdir()}
    for required in (
        "README.md",
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "processor_config.json",
        "tokenizer.json",
        "configuration_entropy_asr.py",
        "modeling_entropy_asr.py",
        "processing_entropy_asr.py",
        "pipeline_entropy_asr.py",
    ):
        assert required in names, required
    for name in ("modeling_entropy_asr.py", "processing_entropy_asr.py"):
        assert filecmp.cmp(model / name, REPO / "modeling" / name, shallow=False)
    config = json.loads((model / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_entropy_asr.EntropyASRForConditionalGeneration"
    assert filecmp.cmp(model / "model.safetensors", tiny_model_dir / "model.safetensors", shallow=False)


def test_card_metadata_parses_with_the_report_scores(release):
    from huggingface_hub import ModelCard

    card = ModelCard.load(release / "model" / "README.md")
    data = card.data
    assert data.license == "apache-2.0"
    assert data.language == ["en", "zh"]
    assert data.pipeline_tag == "automatic-speech-recognition"
    assert "entropy-allocation" in data.tags and data.datasets
    scores = {r.metric_name: r.metric_value for r in data.eval_results}
    assert scores["WER, English (%)"] == 8.1  # the entropy-aware recipe's final stage, as a percentage
    assert scores["CER, Mandarin (%)"] == 9.2
    assert scores["NSE of encoder frames"] == 0.41
    assert scores["CKA to the pretrained encoder"] == 0.97
    assert scores["Hallucination rate, paper's rule (%)"] == 0.4
    assert {r.task_type for r in data.eval_results} == {"automatic-speech-recognition"}
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert "| WER, English (%) | 8.1 |" in card.text
    assert "spaces/someone/entropy-asr-demo" in card.text


def test_fresh_offline_process_loads_transcribes_and_runs_the_card_snippet(
    release, tiny_model_and_processor, clips, tmp_path
):
    model, processor = tiny_model_and_processor
    wave = processor.prepare_audio(str(clips["nav"]))
    expected = model.transcribe([wave], processor)[0]["text"]

    folder = release / "model"
    card = (folder / "README.md").read_text(encoding="utf-8")
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 1 and f'"{MODEL_ID}"' in snippets[0]
    snippet = snippets[0].replace(f'"{MODEL_ID}"', repr(str(folder)))  # the Hub id -> the dry-run folder
    shutil.copy(clips["nav"], tmp_path / "speech.wav")
    (tmp_path / "snippet.py").write_text(snippet, encoding="utf-8")
    # The snippet runs as written (only the Hub id replaced by the folder); then the objects it built through
    # pipeline, AutoModel and AutoProcessor are checked in the same fresh offline process.
    code = """
import contextlib, io, json, os, runpy
assert os.environ["HF_HUB_OFFLINE"] == "1"
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    g = runpy.run_path("snippet.py", run_name="__main__")
model, proc, asr = g["model"], g["processor"], g["asr"]
print(json.dumps({"auto": model.transcribe(["speech.wav"], proc)[0]["text"], "pipeline": asr("speech.wav")["text"],
                  "classes": [type(model).__name__, type(proc).__name__, type(asr).__name__],
                  "snippet_printed": printed.getvalue()}))
"""
    result = json.loads(run_python(code, cwd=tmp_path).strip().splitlines()[-1])
    assert result["classes"] == [
        "EntropyASRForConditionalGeneration",
        "EntropyASRProcessor",
        "EntropyASRPipeline",
    ]
    assert result["auto"] == expected and result["pipeline"] == expected
    # the snippet prints the pipeline's transcript, the dict with timestamps and phonemes, the greedy transcript,
    # then the batch's list
    printed = result["snippet_printed"]
    assert printed.startswith(expected + "\n")
    assert "'phonemes':" in printed and "'chunks':" in printed and printed.rstrip().endswith("]")


def test_space_folder_is_filled_in(release, examples_dir):
    from huggingface_hub import SpaceCard

    space = release / "space"
    app_text = (space / "app.py").read_text(encoding="utf-8")
    assert f'DEFAULT_MODEL_ID = "{MODEL_ID}"' in app_text
    assert not any(p.suffix == ".py" and p.name != "app.py" for p in space.iterdir())  # no project code
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.models == [MODEL_ID]
    assert (space / "requirements.txt").is_file()
    assert sorted(p.name for p in (space / "examples").iterdir()) == ["call.hotwords.txt", "call.wav"]


def test_space_folder_runs_without_the_repo(release, clips, tiny_model_and_processor):
    """app.py decodes with the model folder's own pipeline in a process that can import nothing of the project."""
    code = f"""{ISOLATED}
import os, json
os.chdir({str(release / "space")!r}); sys.path.insert(0, ".")
os.environ["ENTROPY_ASR_MODEL"] = {str(release / "model")!r}
import app
backend = app.load_backend(os.environ["ENTROPY_ASR_MODEL"], device="cpu")
r = backend.run({str(clips["nav"])!r}, "John Smith", 0.0, True, False)  # in the prompt, every clip, no bias
biased = backend.run({str(clips["nav"])!r}, "stop here", 20.0, False, False)  # through the bias alone
print(json.dumps({{"text": r.transcript, "note": r.note, "plot": r.figure is not None, "biased": biased.transcript,
                  "words": r.words}}))
"""
    model, processor = tiny_model_and_processor
    wave = processor.prepare_audio(str(clips["nav"]))
    options = {
        "hotwords": ["John Smith"],
        "hotword_bonus": 0.0,
        "prompt_hotwords": True,
        "hotword_retrieval": False,
    }
    expected = model.transcribe([wave], processor, return_timestamps="word", **options)[0]
    result = json.loads(run_python(code).strip().splitlines()[-1])
    assert result.pop("biased").startswith("stop here")
    words = [[c["text"], *c["timestamp"]] for c in expected["chunks"] if c["timestamp"][0] is not None]
    assert result == {"text": expected["text"], "note": "", "plot": True, "words": words}


def test_metric_folder_is_an_evaluate_space(release):
    from huggingface_hub import metadata_load

    metric = release / "metric"
    if not (REPO / "eval" / "entropy_allocation").is_dir():
        pytest.skip("eval/entropy_allocation/ has not landed yet (see test_metric_stand_in)")
    meta = metadata_load(metric / "README.md")
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["title"]
    assert (metric / "entropy_allocation.py").is_file() and (metric / "app.py").is_file()
    assert (metric / "requirements.txt").is_file()
    import evaluate

    module = evaluate.load(str(metric / "entropy_allocation.py"))
    assert "encoder_states" in module.features[0]


def test_metric_stand_in_is_renamed_for_its_repo(tmp_path):
    import evaluate
    from huggingface_hub import metadata_load

    from training.commands.release import assemble_metric

    src = tmp_path / "stand_in"
    src.mkdir()
    (src / "stand_in.py").write_text(
        '"""Stand-in metric."""\nimport datasets\nimport evaluate\n\n'
        "class StandIn(evaluate.Metric):\n"
        "    def _info(self):\n"
        "        return evaluate.MetricInfo(description='x', citation='', inputs_description='',\n"
        "            features=datasets.Features({'predictions': datasets.Value('int64'),\n"
        "                                        'references': datasets.Value('int64')}))\n"
        "    def _compute(self, predictions, references):\n"
        "        return {'matches': sum(p == r for p, r in zip(predictions, references))}\n",
        encoding="utf-8",
    )
    (src / "README.md").write_text(
        "---\ntitle: Stand In\ntags: [evaluate, metric]\n---\n# Stand-in\n", encoding="utf-8"
    )
    out = assemble_metric(src, tmp_path / "out", "someone/renamed_metric")
    assert (out / "renamed_metric.py").is_file() and not (out / "stand_in.py").exists()
    meta = metadata_load(out / "README.md")
    assert meta["title"] == "Stand In" and meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert 'evaluate.load(str(HERE / "renamed_metric.py"))' in (out / "app.py").read_text()
    module = evaluate.load(str(out / "renamed_metric.py"))
    assert module.compute(predictions=[1, 2, 3], references=[1, 0, 3]) == {"matches": 2}
    with pytest.raises(ValueError, match="Python identifier"):
        assemble_metric(src, tmp_path / "out2", "someone/renamed-metric")


def test_missing_metric_folder_is_skipped_with_a_reason(tiny_model_dir, tmp_path, capsys):
    from training.commands.cli import main

    rc = main(
        ["push", "--model", str(tiny_model_dir), "--repo-id", MODEL_ID, "--dry-run", "--out", str(tmp_path)]
        + ["--metric-dir", str(tmp_path / "no_such_metric")]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "metric folder: skipped:" in out and "does not exist" in out
    assert not (tmp_path / "metric").exists() and (tmp_path / "model" / "README.md").is_file()
    card = (tmp_path / "model" / "README.md").read_text()
    assert "No evaluation report was given" in card and "model-index" not in card


def test_lora_adapter_is_merged(tiny_model_dir, tmp_path, tiny_model_and_processor):
    from peft import LoraConfig, get_peft_model

    from modeling import EntropyASRForConditionalGeneration
    from training.commands.release import assemble_model

    folder = tmp_path / "with_adapter"
    shutil.copytree(tiny_model_dir, folder)
    torch.manual_seed(1)
    base = EntropyASRForConditionalGeneration.from_pretrained(folder).eval()
    config = LoraConfig(
        r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False, lora_alpha=8
    )
    peft_model = get_peft_model(base, config).eval()
    peft_model.save_pretrained(folder)
    _, processor = tiny_model_and_processor
    from tests.conftest import synth_clip

    inputs = processor(audio=[synth_clip(1.5, seed=4)])
    with torch.no_grad():
        adapted = peft_model(**inputs).logits
        plain = EntropyASRForConditionalGeneration.from_pretrained(tiny_model_dir).eval()(**inputs).logits
    assert (adapted - plain).abs().max() > 1e-3  # the adapter changes the output

    out = assemble_model(folder, tmp_path / "merged")
    names = {p.name for p in out.iterdir()}
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    merged = EntropyASRForConditionalGeneration.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-4, rtol=1e-4)


def test_bad_repo_id_and_missing_model_are_usage_errors(tiny_model_dir, tmp_path, caplog):
    from training.commands.cli import main

    assert main(["push", "--model", str(tiny_model_dir), "--repo-id", "no-namespace", "--dry-run"]) == 2
    assert "not of the form USER/NAME" in caplog.text
    assert (
        main(
            [
                "push",
                "--model",
                str(tmp_path / "nope"),
                "--repo-id",
                MODEL_ID,
                "--dry-run",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "does not exist" in caplog.text


def test_example_clips_from_a_corpus_folder(tmp_path):
    """`--examples` pointing at a make-corpus output takes clips (and their entities as hotwords) from test."""
    import io

    import numpy as np
    import soundfile as sf
    from datasets import Audio, Dataset, DatasetDict

    from training.commands.release import export_examples

    def row(i, lang, entities):
        buf = io.BytesIO()
        sf.write(buf, (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32), 16000, format="FLAC")
        return {
            "audio": {"bytes": buf.getvalue(), "path": None},
            "text": f"t{i}",
            "language": lang,
            "entities": entities,
        }

    rows = [row(0, "en", ["John Smith"]), row(1, "en", []), row(2, "zh", ["张伟"]), row(3, "en", ["Paris"])]
    test = Dataset.from_list(rows).cast_column("audio", Audio(sampling_rate=16000, decode=False))
    DatasetDict({"test": test}).save_to_disk(str(tmp_path / "corpus" / "dataset"))
    n = export_examples(tmp_path / "corpus", tmp_path / "examples", max_examples=2)
    assert n == 2
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == [
        "en_00.hotwords.txt",
        "en_00.wav",
        "zh_01.hotwords.txt",
        "zh_01.wav",
    ]
    assert (tmp_path / "examples" / "zh_01.hotwords.txt").read_text(encoding="utf-8").strip() == "张伟"
    assert sf.info(str(tmp_path / "examples" / "en_00.wav")).frames == 8000


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ({"wer_en": 0.1, "nse": 0.5, "rtf": 0.02, "notes": "x"}, {"wer_en": 0.1, "nse": 0.5, "rtf": 0.02}),
        (  # evaluate-module names, nested; the test split wins over dev
            {
                "dataset": "my corpus",
                "splits": {"dev": {"wer": 0.3}, "test": {"en": {"wer": 0.2}, "zh": {"cer": 0.25}}},
                "allocation": {"pai_bits": 1.5, "pai_normalised": 0.7, "csai_bits": 0.1, "cka": 0.99},
            },
            {
                "wer_en": 0.2,
                "cer_zh": 0.25,
                "pai": 1.5,
                "pai_normalised": 0.7,
                "csai": 0.1,
                "cka_to_pretrained": 0.99,
                "dataset": "my corpus",
            },
        ),
        (
            {"recipes": {"conventional": {"final_stage": "sft", "stages": {"sft": {"wer_en": 0.4}}}}},
            {"wer_en": 0.4},
        ),
    ],
)
def test_read_report_shapes(tmp_path, report, expected):
    from training.commands.release import read_report

    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    scores = read_report(path)
    assert scores.pop("source").startswith("report.json")
    assert scores == expected


def test_read_report_recipe_choice(tmp_path):
    from training.commands.release import read_report

    path = tmp_path / "summary.json"
    path.write_text(json.dumps(REPORT))
    assert read_report(path)["wer_en"] == 0.081  # entropy-aware by default, its final stage
    assert read_report(path, "conventional")["wer_en"] == 0.5
    with pytest.raises(KeyError, match="no recipe 'other'"):
        read_report(path, "other")
