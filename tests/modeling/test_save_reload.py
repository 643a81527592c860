"""A saved folder is self-contained: a fresh offline process loads it through the Auto classes and the
pipeline and reproduces logits and greedy transcripts."""

import json

import numpy as np
import soundfile as sf
import torch

from tests.conftest import run_python, synth_clip


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
    model, processor = tiny_model_and_processor
    clips = [synth_clip(1.3, seed=1), synth_clip(2.2, seed=2)]
    for i, c in enumerate(clips):
        sf.write(tmp_path / f"clip{i}.wav", c, 16000, subtype="FLOAT")
    np.save(tmp_path / "clip1.npy", clips[1])
    inputs = processor(audio=clips, context=["john smith"] * 2)
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs)[:, inputs["input_ids"].shape[1] :]
    expected_texts = processor.batch_decode(tokens)
    torch.save(dict(inputs), tmp_path / "inputs.pt")

    code = f"""
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
print(json.dumps({{
    "config": type(cfg).__name__, "model": type(model).__name__, "processor": type(proc).__name__,
    "same_inputs": bool(torch.equal(fresh["input_ids"], inputs["input_ids"])),
    "texts": proc.batch_decode(tokens),
    "pipe_path": pipe(t + "/clip1.wav"),
    "pipe_array": pipe(np.load(t + "/clip1.npy")),
    "pipe_dict": pipe({{"raw": np.load(t + "/clip1.npy"), "sampling_rate": 16000}}),
    "pipe_context": pipe(t + "/clip1.wav", context="john smith"),
    "pipe_bias": pipe(t + "/clip1.wav", context=["stop here"], hotword_bonus=1e4, prompt_hotwords=False),
}}))
try:
    pipe(t + "/clip1.wav", context=["stop here"], prompt_hotwords=False)
except ValueError as err:
    print(json.dumps({{"refused": str(err)}}))
"""
    lines = run_python(code).strip().splitlines()
    out, refused = json.loads(lines[-2]), json.loads(lines[-1])["refused"]
    assert out["config"] == "EntropyASRConfig"
    assert out["model"] == "EntropyASRForConditionalGeneration"
    assert out["processor"] == "EntropyASRProcessor"
    assert out["same_inputs"]
    reloaded = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(reloaded, logits, atol=1e-5, rtol=0)
    assert out["texts"] == expected_texts
    single = processor(audio=clips[1])
    with torch.no_grad():
        single_tokens = model.generate(**single)[:, single["input_ids"].shape[1] :]
    expected_single = processor.batch_decode(single_tokens)[0]
    assert out["pipe_path"] == {"text": expected_single}
    assert out["pipe_array"] == {"text": expected_single}
    assert out["pipe_dict"] == {"text": expected_single}
    # hotwords through the pipeline: in the prompt, or as a decoding bias alone (the model's remote code)
    from training.inference import Transcriber

    transcriber = Transcriber(model, processor)
    with_context = transcriber.transcribe([clips[1]], context=[["john smith"]])[0]["text"]
    biased = transcriber.transcribe(
        [clips[1]], context=[["stop here"]], hotword_bonus=1e4, prompt_hotwords=False
    )[0]["text"]
    assert out["pipe_context"] == {"text": with_context}
    assert out["pipe_bias"] == {"text": biased} and biased.startswith("stop here")
    assert "give a hotword_bonus" in refused
