"""Model configs, the paper-scale size, building from pretrained parts saved locally, and the CLI."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, TOKENIZER_TEXTS, synth_clip
from training.build import build_config, build_model_and_processor, load_yaml


def test_paper_config_has_2p3b_parameters():
    from modeling import EntropyASRForConditionalGeneration

    config, ctc_vocab, _ = build_config(load_yaml(REPO / "configs/model/paper-2.3b.yaml"))
    with torch.device("meta"):
        model = EntropyASRForConditionalGeneration(config)
    parts = model.num_parameters_by_part()
    total = sum(parts.values())
    assert abs(total - 2.3e9) <= 0.15e9, parts
    assert 0.55e9 <= parts["encoder"] <= 0.65e9  # Conformer ~0.6B
    assert 1.6e9 <= parts["llm"] <= 1.8e9  # Qwen3-1.7B
    assert config.audio_tokens_per_second == pytest.approx(6.25, abs=0.02)  # 160 ms per LLM position
    assert config.ctc_vocab_size == len(ctc_vocab)


def test_unknown_config_key_is_named():
    cfg = load_yaml(REPO / "configs/model/tiny.yaml")
    cfg["encodr"] = {}
    with pytest.raises(ValueError, match="encodr"):
        build_config(cfg)


@pytest.fixture(scope="module")
def pretrained_parts(tmp_path_factory):
    """Tiny Parakeet-CTC, Whisper and Qwen3 checkpoints saved locally, standing in for Hub names."""
    from transformers import (
        ParakeetCTCConfig,
        ParakeetForCTC,
        Qwen3Config,
        Qwen3ForCausalLM,
        WhisperConfig,
        WhisperModel,
    )

    from training.build import train_tokenizer

    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    enc = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "subsampling_factor": 4,
        "subsampling_conv_channels": 16,
    }
    ParakeetForCTC(ParakeetCTCConfig(encoder_config=enc, vocab_size=33, pad_token_id=32)).save_pretrained(
        root / "parakeet"
    )
    WhisperModel(
        WhisperConfig(
            d_model=64,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=128,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            max_source_positions=250,
            vocab_size=100,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=3,
        )
    ).save_pretrained(root / "whisper")
    tok = train_tokenizer(TOKENIZER_TEXTS, vocab_size=400)
    tok.save_pretrained(root / "qwen3")
    Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tok),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            intermediate_size=128,
            pad_token_id=tok.pad_token_id,
        )
    ).save_pretrained(root / "qwen3")
    return root


@pytest.mark.parametrize("encoder", ["parakeet", "whisper"])
def test_build_from_pretrained_parts(pretrained_parts, encoder):
    from transformers import AutoModel, AutoModelForCausalLM

    cfg = {
        "encoder": {"pretrained": str(pretrained_parts / encoder)},
        "text": {"pretrained": str(pretrained_parts / "qwen3")},
        "adaptor": {"hidden_size": 32},
        "ctc": {"hidden_size": 32},
        "audio": {"max_seconds": 5.0},
    }
    model, processor = build_model_and_processor(cfg)
    source = AutoModel.from_pretrained(pretrained_parts / encoder)
    source_encoder = source.encoder if encoder == "parakeet" else source.get_encoder()
    for name, value in source_encoder.state_dict().items():
        torch.testing.assert_close(model.model.encoder.state_dict()[name], value, atol=0, rtol=0)
    llm = AutoModelForCausalLM.from_pretrained(pretrained_parts / "qwen3")
    n_vocab = llm.get_input_embeddings().weight.shape[0]
    torch.testing.assert_close(
        model.get_input_embeddings().weight[:n_vocab], llm.get_input_embeddings().weight
    )
    torch.testing.assert_close(
        model.model.language_model.layers[1].mlp.down_proj.weight, llm.model.layers[1].mlp.down_proj.weight
    )
    torch.testing.assert_close(model.lm_head.weight[:n_vocab], llm.lm_head.weight)
    inputs = processor(audio=[synth_clip(1.2)], transcript=["call john smith"])
    assert torch.isfinite(model(**inputs).loss)


def test_weights_built_from_scratch_follow_the_seed_only():
    """The demo's runs differed from their first step because the model was initialised from an unseeded RNG."""
    cfg = load_yaml(REPO / "configs/model/tiny.yaml")
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, _ = build_model_and_processor(cfg, TOKENIZER_TEXTS, seed=0)
    assert torch.equal(torch.rand(3), before)  # the caller's RNG is left where it was
    b, _ = build_model_and_processor(cfg, TOKENIZER_TEXTS, seed=0)
    c, _ = build_model_and_processor(cfg, TOKENIZER_TEXTS, seed=1)
    wa, wb, wc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    encoder = [k for k in wa if k.startswith("model.encoder.") and k.endswith("weight") and wa[k].dim() > 1]
    assert encoder and all(not torch.equal(wa[k], wc[k]) for k in encoder)


def test_cli_init_model_and_transcribe(tmp_path):
    import soundfile as sf

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TOKENIZER_TEXTS), encoding="utf-8")
    exe = [sys.executable, "-m", "training.commands.cli"]
    out = tmp_path / "model"
    proc = subprocess.run(
        exe
        + [
            "init-model",
            "--config",
            str(REPO / "configs/model/tiny.yaml"),
            "--tokenizer-corpus",
            str(corpus),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file()
    sf.write(tmp_path / "a.wav", synth_clip(1.5), 16000)
    sf.write(tmp_path / "b.flac", synth_clip(2.5, 1), 16000)
    (tmp_path / "bad.wav").write_bytes(b"garbage")
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text("john smith\n张伟\n", encoding="utf-8")
    # the three transcribe commands below need only the folder: they run at once, one torch thread each (three
    # interpreters that mostly import, on two cores), and the --stream one and its reference on the same count
    popen = dict(
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    first = subprocess.Popen(
        exe
        + [
            "transcribe",
            "--model",
            str(out),
            str(tmp_path / "a.wav"),
            str(tmp_path / "b.flac"),
            str(tmp_path / "bad.wav"),
            "--hotwords-file",
            str(hotwords),
        ],
        **popen,
    )
    # --stream: each file replayed through a streaming session (as fast as it decodes), partial lines with the
    # audio heard and the push's compute, then the same final line as without --stream
    files = [str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]
    plain = exe + ["transcribe", "--model", str(out), *files, "--max-new-tokens", "4"]
    streamed = subprocess.Popen(plain + ["--stream", "--speed", "0", "--chunk-seconds", "0.5"], **popen)
    reference = subprocess.Popen(plain, **popen)
    stdout, stderr = first.communicate(timeout=300)
    lines = stdout.strip().splitlines()
    assert first.returncode == 1, stderr  # one file failed
    assert len(lines) == 3 and lines[0].startswith(str(tmp_path / "a.wav") + "\t")
    assert all(line.split("\t")[-1].startswith("hotwords: ") for line in lines[:2])
    assert "ERROR: Could not decode audio file" in lines[2]
    help_out = subprocess.run(exe + ["transcribe", "--help"], capture_output=True, text=True, cwd=REPO)
    assert help_out.returncode == 0 and "--model" in help_out.stdout and "--stream" in help_out.stdout
    stdout, stderr = streamed.communicate(timeout=300)
    assert streamed.returncode == 0, stderr
    lines = stdout.strip().splitlines()
    stdout, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr
    assert lines[-2:] == stdout.strip().splitlines()
    for line in lines[:-2]:
        path, heard, _, took = line.split("\t")
        assert path in files and heard.endswith(" s") and took.endswith(" ms)")
    bad = subprocess.run(
        plain + ["--stream", "--chunk-seconds", "0"], capture_output=True, text=True, cwd=REPO
    )
    assert bad.returncode == 2 and "--chunk-seconds: must be a positive number" in bad.stderr


def test_scratch_init_passes_signal_through_frontend_and_heads(tiny_model_and_processor):
    """A randomly built model's audio front-end, CTC head and adaptor keep the signal's scale (transformers'
    N(0, 0.02) for every conv shrinks normalised mel features ~1e4x, which stalls CTC pretraining), and the
    adaptor's output starts at the LLM embeddings' scale."""
    model, processor = tiny_model_and_processor
    inputs = processor(audio=[synth_clip(2.0), synth_clip(3.0, seed=1)])
    features, mask = inputs["input_features"], inputs["input_features_mask"]
    with torch.no_grad():
        front = model.model.encoder.subsampling(features, mask)
        hidden, lengths = model.model.encode(features, mask)
        logits = model.model.ctc_head(hidden)
        audio = model.model.adaptor(hidden)
    valid = torch.arange(hidden.shape[1])[None, :] < lengths[:, None]
    assert 0.02 < front.std().item() / features[mask.bool()].std().item() < 10  # N(0, 0.02) init: ~1e-4
    assert 0.05 < logits[valid].std().item() < 3
    embed_std = model.get_input_embeddings().weight.std().item()
    assert 0.2 < audio.std().item() / embed_std < 20
    # the CTC head's layers before the output are fan-in scaled
    first = model.model.ctc_head.layers[0]
    assert abs(first.weight.std().item() - (2 / first.in_features) ** 0.5) < 0.02


def test_locally_trained_tokenizer_reads_the_prompt_in_words(tiny_model_and_processor):
    """The prompt's words are whole tokens (a transcript-only vocabulary spelled them byte by byte), and the
    transcripts' words still are."""
    from training.build import train_tokenizer

    _, processor = tiny_model_and_processor
    tok = processor.tokenizer
    prompt = processor.build_prompt().replace("<speech>", "")
    pieces = tok.convert_ids_to_tokens(tok(prompt, add_special_tokens=False)["input_ids"])
    for word in ("system", "user", "assistant", "ĠMultilingual", "ĠRecognition", "Transcribe", "Ġspeech"):
        assert word in pieces, pieces
    assert len(pieces) <= 30, pieces
    from training import build

    weight, build.PROMPT_WEIGHT = build.PROMPT_WEIGHT, 0
    try:
        bare = train_tokenizer(TOKENIZER_TEXTS, vocab_size=2000)  # transcripts only: the vocabulary before
    finally:
        build.PROMPT_WEIGHT = weight
    assert len(bare(prompt, add_special_tokens=False)["input_ids"]) > 2 * len(pieces)
    for (
        sentence
    ) in TOKENIZER_TEXTS:  # transcripts cost no more tokens than with the transcript-only vocabulary
        assert len(tok(sentence)["input_ids"]) <= len(bare(sentence)["input_ids"]) + 1, sentence
