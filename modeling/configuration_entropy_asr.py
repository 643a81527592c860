"""Configuration of the EntropyASR speech LLM and the one function that says how many audio positions
a clip of a given length becomes.

Everything that turns "number of samples" into "number of LLM audio positions" lives in
`num_audio_tokens`; the processor (to expand `<speech>`) and the model (to count adaptor outputs) both
call it, so the two can never disagree.
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# How each supported encoder family turns mel frames into encoder frames: a stack of 1-D/2-D convolutions
# given as (kernel, stride, padding) along time, and how the feature extractor counts valid mel frames.
# Keyed by the encoder config's `model_type` (a config property, never a checkpoint name).
_ENCODER_FRAME_RULES = {
    # Parakeet/FastConformer: log2(subsampling_factor) stride-2 convs (k=3, p=1); valid mel frames n // hop.
    "parakeet_encoder": lambda cfg: {
        "conv_layers": [[cfg.subsampling_conv_kernel_size, cfg.subsampling_conv_stride, 1]]
        * int(round(math.log(cfg.subsampling_factor, cfg.subsampling_conv_stride))),
        "feature_rounding": "floor",
    },
    # Whisper: conv1 (k=3, s=1, p=1), conv2 (k=3, s=2, p=1); the feature extractor marks ceil(n / hop) frames.
    "whisper": lambda cfg: {"conv_layers": [[3, 1, 1], [3, 2, 1]], "feature_rounding": "ceil"},
}


def num_feature_frames(num_samples, hop_length: int, feature_rounding: str = "floor"):
    """Valid mel frames for `num_samples` samples (int or integer tensor)."""
    if feature_rounding == "floor":
        return num_samples // hop_length
    if feature_rounding == "ceil":
        return (num_samples + hop_length - 1) // hop_length
    raise ValueError(f"feature_rounding must be 'floor' or 'ceil', got {feature_rounding!r}")


def num_encoder_frames(num_frames, conv_layers):
    """Encoder output frames after the subsampling convolutions; 0 stays 0."""
    for kernel, stride, padding in conv_layers:
        out = (num_frames + 2 * padding - kernel) // stride + 1
        num_frames = out * (num_frames > 0)  # works for ints and tensors alike
    return num_frames


def num_stacked_frames(num_frames, stack_factor: int):
    """Adaptor positions after stacking `stack_factor` frames (last group zero-padded)."""
    return (num_frames + stack_factor - 1) // stack_factor


def num_audio_tokens(
    num_samples,
    *,
    hop_length: int,
    conv_layers,
    stack_factor: int,
    feature_rounding: str = "floor",
    max_feature_frames: int | None = None,
):
    """Number of LLM audio positions for a clip of `num_samples` samples (int or integer tensor).

    The single source of truth shared by `EntropyASRProcessor` (placeholder expansion) and
    `EntropyASRModel` (adaptor output length)."""
    frames = num_feature_frames(num_samples, hop_length, feature_rounding)
    if max_feature_frames is not None:
        frames = (
            min(frames, max_feature_frames)
            if isinstance(frames, int)
            else frames.clamp(max=max_feature_frames)
        )
    return num_stacked_frames(num_encoder_frames(frames, conv_layers), stack_factor)


@strict
class EntropyASRConfig(PreTrainedConfig):
    r"""Speech encoder + frame-stacking adaptor + phoneme CTC head + decoder-only LLM.

    Args:
        encoder_config: a transformers audio-encoder config (default Parakeet/FastConformer with 4x
            subsampling = 25 Hz; a Whisper config also works).
        text_config: any causal-LM config (default Qwen3; Llama works too).
        stack_factor: encoder frames concatenated per LLM position (4 -> 6.25 Hz at 25 Hz input).
        adaptor_hidden_size: width of the adaptor's 2-layer MLP.
        ctc_vocab_size: size of the CTC vocabulary (phonemes + blank; or characters for the baseline).
        ctc_hidden_size / ctc_num_layers: the CTC head MLP (paper: 3 layers).
        ctc_blank_id: CTC blank index.
        audio_token_id: id of the dedicated audio placeholder token in the tokenizer.
        sampling_rate / hop_length: front-end parameters the audio-token count depends on.
        max_audio_seconds: longest accepted clip.
        max_tokens_per_second / min_token_bound: the default bound on new tokens derived from audio length
            (named so that generation does not mistake them for `max_new_tokens` / `min_new_tokens`).
        ctc_loss_weight: weight of the CTC loss when phoneme labels are given together with text labels.
        no_speech_threshold: when set, a clip whose first generated token is the end of turn with at least this
            probability gets an empty transcript (the LLM itself says there is no speech; Whisper's
            no-speech gate). Training stages calibrate it on their dev split; None: no gate.
        min_speech_confidence: when set, a clip whose speech confidence is below it gets an empty transcript (the
            encoder side says there is no speech): the mean, over the frames where the CTC head's best label is
            not blank, of that label's probability (0 when there is no such frame). Speech the encoder
            recognises gives peaked phoneme posteriors; noise, music and babble flat ones. Training stages
            calibrate it on their dev split together with `no_speech_threshold`; None: no gate.
        encoder_chunk_frames / encoder_left_chunks: chunk-limited (streaming) encoding on the same weights
            (encoder_entropy_asr.py; Parakeet/FastConformer encoders): attention sees the frame's chunk of
            `encoder_chunk_frames` encoder frames and `encoder_left_chunks` chunks before it (-1: all), the
            convolution nothing after the chunk. None: full context, the offline encoder.
    """

    model_type = "entropy_asr"
    sub_configs_defaults = {
        "encoder_config": SubConfigSpec(
            config_class=AutoConfig, model_type="parakeet_encoder", init_kwargs={"subsampling_factor": 4}
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3"),
    }

    encoder_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    stack_factor: int = 4
    adaptor_hidden_size: int = 2048
    adaptor_activation: str = "gelu"
    ctc_vocab_size: int = 200
    ctc_hidden_size: int = 512
    ctc_num_layers: int = 3
    ctc_blank_id: int = 0
    ctc_loss_weight: float = 1.0
    audio_token_id: int | None = None
    sampling_rate: int = 16000
    hop_length: int = 160
    max_audio_seconds: float = 30.0
    max_tokens_per_second: float = 10.0
    min_token_bound: int = 8
    no_speech_threshold: float | int | None = None  # int: a hand-edited 1 is valid too
    min_speech_confidence: float | int | None = None
    tie_word_embeddings: bool = False
    encoder_chunk_frames: int | None = None
    encoder_left_chunks: int = -1

    def validate_architecture(self):
        if self.stack_factor < 1:
            raise ValueError(f"stack_factor must be >= 1, got {self.stack_factor}")
        if self.ctc_num_layers < 1:
            raise ValueError(f"ctc_num_layers must be >= 1, got {self.ctc_num_layers}")
        if self.no_speech_threshold is not None and not 0.0 < self.no_speech_threshold <= 1.0:
            raise ValueError(f"no_speech_threshold must be in (0, 1], got {self.no_speech_threshold}")
        if self.min_speech_confidence is not None and not 0.0 < self.min_speech_confidence <= 1.0:
            raise ValueError(f"min_speech_confidence must be in (0, 1], got {self.min_speech_confidence}")
        if self.encoder_chunk_frames is not None:
            if self.encoder_chunk_frames < 1:
                raise ValueError(
                    f"encoder_chunk_frames must be >= 1 or None, got {self.encoder_chunk_frames}"
                )
            if getattr(self.encoder_config, "model_type", None) != "parakeet_encoder":
                raise ValueError(
                    "encoder_chunk_frames needs a Parakeet/FastConformer encoder (parakeet_encoder)"
                )
        if self.encoder_left_chunks < -1:
            raise ValueError(
                f"encoder_left_chunks must be -1 (all) or >= 0, got {self.encoder_left_chunks!r}"
            )
        if not 0 <= self.ctc_blank_id < self.ctc_vocab_size:
            raise ValueError(
                f"ctc_blank_id {self.ctc_blank_id} outside the CTC vocabulary ({self.ctc_vocab_size})"
            )

    @property
    def encoder_frame_rule(self) -> dict:
        model_type = getattr(self.encoder_config, "model_type", None)
        if model_type not in _ENCODER_FRAME_RULES:
            raise ValueError(
                f"Unsupported encoder model_type {model_type!r}; supported: {sorted(_ENCODER_FRAME_RULES)}"
            )
        return _ENCODER_FRAME_RULES[model_type](self.encoder_config)

    @property
    def audio_length_kwargs(self) -> dict:
        """Keyword arguments of `num_audio_tokens` for this model (also stored by the processor)."""
        rule = self.encoder_frame_rule
        max_frames = None
        if getattr(self.encoder_config, "model_type", None) == "whisper":
            max_frames = 2 * self.encoder_config.max_source_positions
        return {
            "hop_length": self.hop_length,
            "conv_layers": rule["conv_layers"],
            "stack_factor": self.stack_factor,
            "feature_rounding": rule["feature_rounding"],
            "max_feature_frames": max_frames,
        }

    @property
    def audio_tokens_per_second(self) -> float:
        return num_audio_tokens(self.sampling_rate * 100, **self.audio_length_kwargs) / 100.0


__all__ = ["EntropyASRConfig", "num_audio_tokens", "num_encoder_frames", "num_feature_frames"]
