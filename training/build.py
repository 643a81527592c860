"""Build EntropyASR models and processors from YAML model configs, and write loadable model folders.

A model YAML (configs/model/*.yaml) has these sections; each of `encoder`, `text` and `tokenizer` either
gives a config inline or names a pretrained checkpoint (Hub id or local folder) with `pretrained:`:

    encoder: {model_type: parakeet_encoder, hidden_size: 128, ...}   # or {pretrained: nvidia/parakeet-ctc-0.6b}
    text: {model_type: qwen3, hidden_size: 192, ...}                 # or {pretrained: Qwen/Qwen3-1.7B}
    tokenizer: {vocab_size: 2000}                                    # trained locally; or {pretrained: ...}
    adaptor: {stack_factor: 4, hidden_size: 384}
    ctc: {vocab: configs/phonemes/en-zh.txt, hidden_size: 256, num_layers: 3}
    audio: {max_seconds: 30.0}
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoTokenizer,
    ParakeetFeatureExtractor,
    PreTrainedTokenizerFast,
    WhisperFeatureExtractor,
)

from modeling import EntropyASRConfig, EntropyASRForConditionalGeneration, EntropyASRProcessor
from modeling.generation_entropy_asr import DecodingOptions
from modeling.processing_entropy_asr import (
    DEFAULT_CONTEXT_PROMPT,
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_USER_PROMPT,
    SPEECH_PLACEHOLDER,
)
from training.config import REPO_ROOT, parse_yaml
from training.data.g2p import WORD_SEPARATOR
from training.data.lexicon import build_phonemizer

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad": "<|endoftext|>", "bos": "<|im_start|>", "eot": "<|im_end|>", "audio": "<|audio|>"}
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_KNOWN_SECTIONS = {
    "encoder",
    "text",
    "tokenizer",
    "adaptor",
    "ctc",
    "audio",
    "generation",
    "tie_word_embeddings",
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = parse_yaml(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def resolve_path(path: str | Path) -> Path:
    """Paths in configs are relative to the repository root unless absolute or existing as given."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


def read_vocab_file(path: str | Path) -> list[str]:
    symbols = [line.rstrip("\n") for line in open(resolve_path(path), encoding="utf-8")]
    symbols = [s for s in symbols if s.strip()]
    if len(symbols) < 2:
        raise ValueError(f"CTC vocabulary {path} has fewer than 2 symbols")
    return symbols


PROMPT_WEIGHT = 200  # how many times the prompt's words count in tokenizer training


def prompt_scaffold() -> list[str]:
    """The words of the transcription prompt around the audio (roles, system, user and context prompts): the
    texts the LLM reads in every example besides the transcript."""

    user = DEFAULT_USER_PROMPT.replace(SPEECH_PLACEHOLDER, SPECIAL_TOKENS["audio"])
    return [
        f"system\n{DEFAULT_SYSTEM_PROMPT}",
        f"user\n{user}",
        "assistant\n",
        DEFAULT_CONTEXT_PROMPT.format(context=""),
    ]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """Byte-level BPE trained locally on `texts` (English and Chinese), with the prompt's special tokens and a
    ChatML chat template. Returns a transformers fast tokenizer.

    The prompt's own words are added to the training texts (`PROMPT_WEIGHT` times), so they become whole tokens:
    a transcript-only vocabulary spelled the prompt in 76 byte-sized pieces, more than the audio and the
    transcript together, and every training step and every transcription paid for them (29 tokens with it)."""

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [t for t in texts if t.strip()] + prompt_scaffold() * PROMPT_WEIGHT
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        eos_token=SPECIAL_TOKENS["eot"],
        bos_token=None,
        unk_token=None,
    )
    fast.add_special_tokens({"additional_special_tokens": [SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["audio"]]})
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    return fast


def _load_pretrained_tokenizer(name: str):
    tok = AutoTokenizer.from_pretrained(name)
    if SPECIAL_TOKENS["audio"] not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [SPECIAL_TOKENS["audio"]]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_feature_extractor(encoder_config, max_seconds: float):
    if encoder_config.model_type == "whisper":
        chunk = int(2 * encoder_config.max_source_positions * 160 / 16000)
        return WhisperFeatureExtractor(feature_size=encoder_config.num_mel_bins, chunk_length=chunk)

    return ParakeetFeatureExtractor(feature_size=encoder_config.num_mel_bins)


def build_config(cfg: dict[str, Any], tokenizer=None):
    """EntropyASRConfig from a model YAML mapping. With a tokenizer, the LLM vocabulary and the special token
    ids follow it; without one (e.g. meta-device size checks) they come from the YAML."""

    unknown = set(cfg) - _KNOWN_SECTIONS
    if unknown:
        raise ValueError(f"Unknown model config keys {sorted(unknown)}; known: {sorted(_KNOWN_SECTIONS)}")
    enc_section, text_section = dict(cfg.get("encoder") or {}), dict(cfg.get("text") or {})
    enc_pretrained, text_pretrained = (
        enc_section.pop("pretrained", None),
        text_section.pop("pretrained", None),
    )
    if enc_pretrained:
        enc_cfg = AutoConfig.from_pretrained(enc_pretrained)
        enc_cfg = getattr(enc_cfg, "encoder_config", None) or enc_cfg  # Parakeet CTC/RNNT nest the encoder
    else:
        enc_cfg = enc_section
    if text_pretrained:
        text_cfg = AutoConfig.from_pretrained(text_pretrained)
    else:
        text_cfg = {**text_section, **({"vocab_size": len(tokenizer)} if tokenizer is not None else {})}
    ctc = dict(cfg.get("ctc") or {})
    ctc_vocab = read_vocab_file(ctc.get("vocab", "configs/phonemes/en-zh.txt"))
    adaptor, audio = dict(cfg.get("adaptor") or {}), dict(cfg.get("audio") or {})
    generation = dict(cfg.get("generation") or {})
    token_ids = {}
    if tokenizer is not None:
        eot = (
            tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["eot"])
            if SPECIAL_TOKENS["eot"] in tokenizer.get_vocab()
            else None
        )
        token_ids = {
            "audio_token_id": tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["audio"]),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": eot if eot is not None else tokenizer.eos_token_id,
        }
    config = EntropyASRConfig(
        encoder_config=enc_cfg,
        text_config=text_cfg,
        stack_factor=int(adaptor.get("stack_factor", 4)),
        adaptor_hidden_size=int(adaptor.get("hidden_size", 2048)),
        ctc_vocab_size=len(ctc_vocab),
        ctc_hidden_size=int(ctc.get("hidden_size", 512)),
        ctc_num_layers=int(ctc.get("num_layers", 3)),
        ctc_blank_id=0,
        max_audio_seconds=float(audio.get("max_seconds", 30.0)),
        max_tokens_per_second=float(generation.get("max_tokens_per_second", 10.0)),
        min_token_bound=int(generation.get("min_token_bound", 8)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        **token_ids,
    )
    return config, ctc_vocab, (enc_pretrained, text_pretrained)


def build_model_and_processor(
    cfg: dict[str, Any], tokenizer_texts: Iterable[str] | None = None, seed: int = 0
):
    """(model, processor) from a model YAML mapping. Pretrained parts are loaded by name or path; what is built
    from scratch is initialised from `seed` (the caller's global RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_model_and_processor(cfg, tokenizer_texts)


def _build_model_and_processor(cfg: dict[str, Any], tokenizer_texts: Iterable[str] | None):
    if tokenizer_texts is not None:
        tokenizer_texts = list(tokenizer_texts)  # read twice: tokenizer and phonemizer
    tok_section = dict(cfg.get("tokenizer") or {})
    text_pretrained = (cfg.get("text") or {}).get("pretrained")
    if "pretrained" in tok_section or (text_pretrained and not tok_section):
        tokenizer = _load_pretrained_tokenizer(tok_section.get("pretrained", text_pretrained))
    else:
        if tokenizer_texts is None:
            raise ValueError(
                "The model config trains its tokenizer: pass a tokenizer corpus (--tokenizer-corpus)."
            )
        tokenizer = train_tokenizer(tokenizer_texts, vocab_size=int(tok_section.get("vocab_size", 2000)))
    config, ctc_vocab, (enc_pretrained, text_pretrained) = build_config(cfg, tokenizer)
    if enc_pretrained or text_pretrained:
        if not (enc_pretrained and text_pretrained):
            raise ValueError("Give both encoder.pretrained and text.pretrained, or neither.")
        model = EntropyASRForConditionalGeneration.from_pretrained_parts(
            enc_pretrained, text_pretrained, config=config
        )
    else:
        model = EntropyASRForConditionalGeneration(config)
        init_encoder_for_scratch_training(model.model.encoder)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
        model.config.text_config.vocab_size = len(tokenizer)
    configure_generation(model, tokenizer, (cfg.get("generation") or {}).get("decoding"))

    processor = EntropyASRProcessor(
        feature_extractor=build_feature_extractor(config.encoder_config, config.max_audio_seconds),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        audio_token=SPECIAL_TOKENS["audio"],
        audio_length_kwargs=config.audio_length_kwargs,
        ctc_vocab=ctc_vocab,
        max_audio_seconds=config.max_audio_seconds,
        end_of_turn_token=SPECIAL_TOKENS["eot"]
        if SPECIAL_TOKENS["eot"] in tokenizer.get_vocab()
        else tokenizer.eos_token,
    )
    if WORD_SEPARATOR not in ctc_vocab:  # a phoneme CTC head: its lexicon travels with the processor
        processor.phonemizer = build_phonemizer(tokenizer_texts, phonemes=ctc_vocab)
    return model, processor


def init_encoder_for_scratch_training(encoder: torch.nn.Module) -> None:
    """Fan-in scaled (PyTorch default) init of a randomly built audio encoder's convolutions and linears.

    transformers initialises them all at N(0, 0.02), which suits loading a checkpoint but not training from
    scratch: the small-fan-in convolutions of the subsampling front-end (3x3 kernels, depthwise) shrink the
    mel features ~1e4x, and CTC pretraining sits on its blank plateau for hundreds of steps longer."""
    for module in encoder.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            module.reset_parameters()


def configure_generation(model, tokenizer, decoding: dict[str, Any] | None = None) -> None:
    """Generation that stops at the end-of-turn token and never emits the audio placeholder, and the decoding
    options the model folder ships with (`DecodingOptions`; the model YAML's `generation.decoding`)."""

    eot = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["eot"])
    gen = model.generation_config
    gen.eos_token_id = eot if eot is not None else tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = None
    gen.do_sample = False
    gen.suppress_tokens = [model.config.audio_token_id]
    DecodingOptions.from_dict(decoding).save_to(gen)


def register_auto_classes() -> None:
    """Make `save_pretrained` of the project's config, model and processor write their `auto_map` entries
    (without it a processor saved in a fresh process, e.g. by a training stage, loads back as a bare tokenizer)."""

    EntropyASRConfig.register_for_auto_class()
    EntropyASRForConditionalGeneration.register_for_auto_class("AutoModel")
    EntropyASRProcessor.register_for_auto_class()


def save_model_folder(model, processor, out: str | Path) -> Path:
    """Write a self-contained folder: safetensors weights, config with auto_map and custom_pipelines, the
    remote-code .py files (configuration, modeling, processing, phonemizer, pipeline), processor and tokenizer
    files, and phonemizer.json for a phoneme CTC head."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    register_auto_classes()
    model.config.auto_map = {
        **(getattr(model.config, "auto_map", None) or {}),
        "AutoModelForSpeechSeq2Seq": "modeling_entropy_asr.EntropyASRForConditionalGeneration",
    }
    model.config.custom_pipelines = {
        "automatic-speech-recognition": {
            "impl": "pipeline_entropy_asr.EntropyASRPipeline",
            "pt": ["AutoModel"],
            "type": "audio",
        }
    }
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    write_remote_code(out)
    return out


# Every file of modeling/ the model folder needs: the remote code is exactly that folder's *_entropy_asr.py files.
REMOTE_CODE_FILES = tuple(sorted(p.name for p in (REPO_ROOT / "modeling").glob("*_entropy_asr.py")))


def write_remote_code(out: str | Path) -> None:
    """Copy the remote-code files from modeling/ into a saved folder (always all of them: a config that names
    the pipeline without its file cannot be loaded), and drop stray pickled weights."""
    out = Path(out)
    src = REPO_ROOT / "modeling"
    for name in REMOTE_CODE_FILES:
        shutil.copy2(src / name, out / name)
    for stray in out.glob("*.bin"):
        stray.unlink()
