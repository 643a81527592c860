"""EntropyASR: speech encoder -> phoneme CTC head / frame-stacking adaptor -> decoder-only LLM.

Layout follows transformers' speech LLMs (GraniteSpeech, Voxtral): `EntropyASRModel` holds the encoder, the
CTC head, the adaptor and the text backbone and returns `last_hidden_state`; the `...ForConditionalGeneration`
class adds the LM head, the losses and `generate`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import ModelOutput, logging

from .configuration_entropy_asr import EntropyASRConfig, num_encoder_frames, num_stacked_frames
from .encoder_entropy_asr import encode_chunked
from .generation_entropy_asr import DecodingOptions, EntropyASRGenerationMixin
from .streaming_entropy_asr import StreamingSession

logger = logging.get_logger(__name__)

PARTS = ("encoder", "ctc_head", "adaptor", "llm")


@dataclass
class EntropyASRModelOutput(ModelOutput):
    """Backbone output. `ctc_logits` (B, T_enc, V_ctc) and `encoder_lengths` (B,) come with audio."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: object | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    encoder_hidden_states: torch.FloatTensor | None = None
    encoder_lengths: torch.LongTensor | None = None
    ctc_logits: torch.FloatTensor | None = None


@dataclass
class EntropyASROutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: object | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    lm_loss: torch.FloatTensor | None = None
    ctc_loss: torch.FloatTensor | None = None
    ctc_logits: torch.FloatTensor | None = None
    encoder_hidden_states: torch.FloatTensor | None = None
    encoder_lengths: torch.LongTensor | None = None


def _encoder_hidden_size(encoder_config) -> int:
    return getattr(encoder_config, "hidden_size", None) or encoder_config.d_model


def _audio_encoder_of(model: nn.Module) -> nn.Module:
    """The audio encoder inside a loaded checkpoint: `.encoder` (Parakeet CTC/RNNT/TDT), `get_encoder()`
    (Whisper's encoder-decoder), or the model itself when it is a bare encoder."""
    candidates = [getattr(model, "encoder", None)]
    if hasattr(model, "get_encoder"):
        candidates.append(model.get_encoder())
    return next((c for c in candidates if isinstance(c, nn.Module) and c is not model), model)


def build_audio_encoder(encoder_config) -> nn.Module:
    """The encoder module for an encoder config: the encoder half only, never a full seq2seq model."""
    if encoder_config.model_type == "whisper":
        return WhisperEncoder(encoder_config)
    return AutoModel.from_config(encoder_config)


def _tag_init(layers: list[nn.Linear], last_std: float | None) -> None:
    """Set each layer's init std (read by `_init_weights`): fan-in scaled (He) for layers followed by an
    activation, so a deep head passes signal and gradient at initialisation (a 3-layer CTC head at std 0.02
    shrinks both ~40x and leaves CTC on its blank plateau for hundreds of steps); `last_std` for the output
    layer (None: the config's initializer_range)."""
    for layer in layers[:-1]:
        layer.init_std = (2.0 / layer.in_features) ** 0.5
    layers[-1].init_std = last_std


class EntropyASRAdaptor(nn.Module):
    """Concatenate `stack_factor` consecutive encoder frames, then a 2-layer MLP to the LLM width."""

    def __init__(self, config: EntropyASRConfig):
        super().__init__()
        self.stack_factor = config.stack_factor
        d_in = _encoder_hidden_size(config.encoder_config) * config.stack_factor
        self.linear_1 = nn.Linear(d_in, config.adaptor_hidden_size)
        self.act = ACT2FN[config.adaptor_activation]
        self.linear_2 = nn.Linear(config.adaptor_hidden_size, config.text_config.hidden_size)
        _tag_init([self.linear_1, self.linear_2], None)  # output at the LLM embeddings' small scale

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        b, t, d = hidden.shape  # (B, T_enc, d_enc), invalid frames already zeroed
        pad = (-t) % self.stack_factor
        hidden = F.pad(hidden, (0, 0, 0, pad))  # (B, T_enc + pad, d_enc)
        hidden = hidden.reshape(b, (t + pad) // self.stack_factor, d * self.stack_factor)  # (B, N, k*d_enc)
        return self.linear_2(self.act(self.linear_1(hidden)))  # (B, N, d_llm)


class EntropyASRCTCHead(nn.Module):
    """MLP over encoder frames to CTC logits over the phoneme (or character) vocabulary + blank."""

    def __init__(self, config: EntropyASRConfig):
        super().__init__()
        d = _encoder_hidden_size(config.encoder_config)
        dims = [d] + [config.ctc_hidden_size] * (config.ctc_num_layers - 1) + [config.ctc_vocab_size]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        _tag_init(list(self.layers), None)  # near-uniform posteriors at the start
        self.act = nn.GELU()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden)
            if i < len(self.layers) - 1:
                hidden = self.act(hidden)
        return hidden  # (B, T_enc, V_ctc)


class EntropyASRPreTrainedModel(PreTrainedModel):
    config: EntropyASRConfig
    config_class = EntropyASRConfig
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = [
        "ParakeetEncoderBlock",
        "WhisperEncoderLayer",
        "Qwen3DecoderLayer",
        "LlamaDecoderLayer",
    ]

    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", None) or 0.02
        if isinstance(module, nn.Linear) and hasattr(module, "init_std"):  # adaptor and CTC head layers
            nn.init.normal_(module.weight, mean=0.0, std=module.init_std or std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module is getattr(self, "lm_head", None):
            nn.init.normal_(module.weight, mean=0.0, std=std)


class EntropyASRModel(EntropyASRPreTrainedModel):
    def __init__(self, config: EntropyASRConfig):
        super().__init__(config)
        self.encoder = build_audio_encoder(config.encoder_config)
        self.ctc_head = EntropyASRCTCHead(config)
        self.adaptor = EntropyASRAdaptor(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def encode(
        self,
        input_features: torch.Tensor,
        input_features_mask: torch.Tensor | None = None,
        encoder_chunk_frames: int | None = None,
        encoder_left_chunks: int | None = None,
    ):
        """Encoder states (B, T_enc, d_enc) with invalid frames zeroed, and valid lengths (B,).
        `encoder_chunk_frames` / `encoder_left_chunks` override the config's chunk-limited encoding for this call
        (None: the config's; chunk 0: full context, the offline encoder)."""
        input_features = input_features.to(self.encoder.dtype)
        chunk = self.config.encoder_chunk_frames if encoder_chunk_frames is None else encoder_chunk_frames
        left = self.config.encoder_left_chunks if encoder_left_chunks is None else encoder_left_chunks
        is_whisper = self.config.encoder_config.model_type == "whisper"
        time_axis = 2 if is_whisper else 1  # Whisper features are (B, F, T), Parakeet (B, T, F)
        if input_features_mask is None:
            input_features_mask = torch.ones(
                input_features.shape[0],
                input_features.shape[time_axis],
                dtype=torch.long,
                device=input_features.device,
            )
        if chunk:
            hidden = encode_chunked(self.encoder, input_features, input_features_mask, chunk, left)
        elif is_whisper:
            hidden = self.encoder(input_features).last_hidden_state
        else:
            hidden = self.encoder(input_features, attention_mask=input_features_mask).last_hidden_state
        lengths = num_encoder_frames(
            input_features_mask.sum(-1).long(), self.config.encoder_frame_rule["conv_layers"]
        )
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        return hidden * valid[..., None].to(hidden.dtype), lengths

    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None, **chunking
    ):
        """Adaptor outputs (B, N, d_llm), their valid counts (B,), encoder states and lengths (`chunking`: the
        encoder_chunk_frames / encoder_left_chunks of `encode`)."""
        hidden, lengths = self.encode(input_features, input_features_mask, **chunking)
        return (*self.embed_audio(hidden, lengths), hidden, lengths)

    def embed_audio(self, hidden: torch.Tensor, lengths: torch.Tensor):
        """Encoder states (B, T_enc, d_enc) and lengths -> adaptor outputs (B, N, d_llm) and their valid counts."""
        return self.adaptor(hidden), num_stacked_frames(lengths, self.config.stack_factor)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        encoder_chunk_frames: int | None = None,
        encoder_left_chunks: int | None = None,
        **kwargs,
    ) -> EntropyASRModelOutput:
        encoder_hidden = encoder_lengths = ctc_logits = audio_embeds = counts = None
        if input_features is not None:
            audio_embeds, counts, encoder_hidden, encoder_lengths = self.get_audio_features(
                input_features,
                input_features_mask,
                encoder_chunk_frames=encoder_chunk_frames,
                encoder_left_chunks=encoder_left_chunks,
            )
            ctc_logits = self.ctc_head(encoder_hidden)
        if input_ids is None and inputs_embeds is None:
            # Audio-only call (encoder pretraining, CTC decoding): the LLM is not run.
            if input_features is None:
                raise ValueError("Pass input_ids, inputs_embeds or input_features.")
            return EntropyASRModelOutput(
                encoder_hidden_states=encoder_hidden, encoder_lengths=encoder_lengths, ctc_logits=ctc_logits
            )

        if inputs_embeds is None:
            inputs_embeds, audio_mask = self.embed_prompt(input_ids, audio_embeds, counts)
            prefill = cache is None or cache.get_seq_length() == 0
            if audio_embeds is None and prefill and audio_mask.any():
                raise ValueError(
                    f"input_ids hold {int(audio_mask.sum())} audio placeholder tokens but no input_features were given."
                )
        elif audio_embeds is not None:
            raise ValueError(
                "Pass input_ids (with audio placeholders), not inputs_embeds, together with input_features."
            )

        out = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return EntropyASRModelOutput(
            last_hidden_state=out.last_hidden_state,
            cache=getattr(out, "cache", None),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            encoder_hidden_states=encoder_hidden,
            encoder_lengths=encoder_lengths,
            ctc_logits=ctc_logits,
        )

    def embed_prompt(self, input_ids, audio_embeds=None, counts=None):
        """(token embeddings of `input_ids` with the adaptor outputs `audio_embeds` (their first `counts` rows)
        at the audio placeholders when given, the placeholder mask)."""
        audio_mask = input_ids == self.config.audio_token_id
        embeds = self.get_input_embeddings()(input_ids.masked_fill(audio_mask, 0))
        if audio_embeds is not None:
            embeds = self._merge_audio(embeds, audio_mask, audio_embeds, counts)
        return embeds, audio_mask

    @staticmethod
    def _merge_audio(inputs_embeds, audio_mask, audio_embeds, counts):
        placeholders = audio_mask.sum(-1)
        if placeholders.shape != counts.shape or not torch.equal(placeholders, counts.to(placeholders.dtype)):
            raise ValueError(
                f"Audio placeholder tokens per sample {placeholders.tolist()} do not match the audio positions the "
                f"encoder produced {counts.tolist()}; build inputs with EntropyASRProcessor (it expands <speech> "
                "with the same count function)."
            )
        valid = torch.arange(audio_embeds.shape[1], device=audio_embeds.device)[None, :] < counts[:, None]
        audio_flat = audio_embeds[valid].to(inputs_embeds.dtype)  # (sum(counts), d_llm)
        return inputs_embeds.masked_scatter(audio_mask[..., None].expand_as(inputs_embeds), audio_flat)


class EntropyASRForConditionalGeneration(
    EntropyASRGenerationMixin, EntropyASRPreTrainedModel, GenerationMixin
):
    """The recognizer: `EntropyASRModel` + LM head, losses, and decoding (`EntropyASRGenerationMixin`:
    `transcribe`, the one decoder, and `generate`)."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: EntropyASRConfig):
        super().__init__(config)
        self.model = EntropyASRModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def stream(
        self,
        processor,
        chunk_seconds: float = 0.64,
        settle_seconds: float | None = None,
        options: DecodingOptions | dict | None = None,
        **changes,
    ) -> StreamingSession:
        """A streaming session (`streaming_entropy_asr.StreamingSession`): `session.push(samples, sampling_rate)`
        returns the partial transcript, `session.finish()` the final one, decoded with this model's options (its
        saved defaults, then `options`, then `changes`)."""
        return StreamingSession(self, processor, chunk_seconds, settle_seconds, options, **changes)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    # ---- parts -------------------------------------------------------------------------------------------
    def part_modules(self) -> dict[str, list[nn.Module]]:
        """The four parts of the method: encoder, CTC head, adaptor, LLM (backbone + LM head)."""
        return {
            "encoder": [self.model.encoder],
            "ctc_head": [self.model.ctc_head],
            "adaptor": [self.model.adaptor],
            "llm": [self.model.language_model, self.lm_head],
        }

    def set_trainable(self, **parts: bool) -> None:
        """`set_trainable(encoder=False, llm=True, ...)`: switch requires_grad per part."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"Unknown parts {sorted(unknown)}; parts are {list(PARTS)}")
        modules = self.part_modules()
        for name, flag in parts.items():
            for module in modules[name]:
                module.requires_grad_(bool(flag))

    def train(self, mode: bool = True):
        """As `nn.Module.train`, but a part with no trainable parameter stays in eval mode: a frozen encoder
        keeps its normalisation statistics and runs without dropout."""
        super().train(mode)
        if mode:
            for modules in self.part_modules().values():
                for module in modules:
                    if not any(p.requires_grad for p in module.parameters()):
                        module.eval()
        return self

    def num_parameters_by_part(self, only_trainable: bool = False) -> dict[str, int]:
        """Parameter count per part (shared tensors, e.g. tied embeddings, counted once)."""
        counts, seen = {}, set()
        for name, modules in self.part_modules().items():
            total = 0
            for module in modules:
                for p in module.parameters():
                    if id(p) in seen or (only_trainable and not p.requires_grad):
                        continue
                    seen.add(id(p))
                    total += p.numel()
            counts[name] = total
        return counts

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        ctc_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> EntropyASROutput:
        """`labels`: unshifted token labels, -100 on prompt/audio/padding. `ctc_labels`: (B, L) CTC targets
        padded with -100. With only `input_features` (+ `ctc_labels`) the LLM is skipped. `encoder_chunk_frames`
        / `encoder_left_chunks` (keywords) override the config's chunk-limited encoding for this call."""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            input_features=input_features,
            input_features_mask=input_features_mask,
            use_cache=use_cache,
            **kwargs,
        )
        logits = lm_loss = ctc_loss = None
        if out.last_hidden_state is not None:
            hidden = out.last_hidden_state
            if isinstance(logits_to_keep, int) and logits_to_keep > 0:
                hidden = hidden[:, -logits_to_keep:, :]
            elif isinstance(logits_to_keep, torch.Tensor):
                hidden = hidden[:, logits_to_keep, :]
            logits = self.lm_head(hidden)
            if labels is not None:
                lm_loss = self.loss_function(
                    logits=logits,
                    labels=labels,
                    vocab_size=self.config.text_config.vocab_size,
                    num_items_in_batch=num_items_in_batch,
                )
        if ctc_labels is not None:
            if out.ctc_logits is None:
                raise ValueError("ctc_labels need input_features.")
            ctc_loss = self.ctc_loss(out.ctc_logits, out.encoder_lengths, ctc_labels)
        losses = [
            x
            for x in (lm_loss, None if ctc_loss is None else self.config.ctc_loss_weight * ctc_loss)
            if x is not None
        ]
        loss = sum(losses) if losses else None
        return EntropyASROutput(
            loss=loss,
            logits=logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            lm_loss=lm_loss,
            ctc_loss=ctc_loss,
            ctc_logits=out.ctc_logits,
            encoder_hidden_states=out.encoder_hidden_states,
            encoder_lengths=out.encoder_lengths,
        )

    def ctc_loss(
        self, ctc_logits: torch.Tensor, lengths: torch.Tensor, ctc_labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean-over-batch CTC loss (per-target-token normalised, as torch's 'mean')."""
        log_probs = ctc_logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
        valid = ctc_labels >= 0
        return F.ctc_loss(
            log_probs,
            ctc_labels[valid],
            lengths,
            valid.sum(-1),
            blank=self.config.ctc_blank_id,
            reduction="mean",
            zero_infinity=True,
        )

    # ---- building from pretrained parts ------------------------------------------------------------------
    @classmethod
    def config_from_pretrained_parts(cls, encoder: str, text: str, **config_kwargs) -> EntropyASRConfig:
        """A config whose sub-configs are those of an encoder checkpoint (Parakeet CTC/RNNT/TDT or encoder,
        Whisper) and of a causal LM checkpoint, by Hub name or local path."""
        enc_cfg = AutoConfig.from_pretrained(encoder)
        enc_cfg = getattr(enc_cfg, "encoder_config", None) or enc_cfg  # Parakeet CTC/RNNT nest the encoder
        text_cfg = AutoConfig.from_pretrained(text)
        return EntropyASRConfig(encoder_config=enc_cfg, text_config=text_cfg, **config_kwargs)

    @classmethod
    def from_pretrained_parts(
        cls, encoder: str, text: str, config: EntropyASRConfig | None = None, **config_kwargs
    ):
        """Build the model with encoder weights from an audio checkpoint and LLM weights from a causal LM
        checkpoint; the adaptor and CTC head start random."""
        config = config or cls.config_from_pretrained_parts(encoder, text, **config_kwargs)
        model = cls(config)
        source = AutoModel.from_pretrained(encoder)
        model.model.encoder.load_state_dict(_audio_encoder_of(source).state_dict())
        llm = AutoModelForCausalLM.from_pretrained(text)
        model.model.language_model.load_state_dict(llm.get_decoder().state_dict())
        if not config.tie_word_embeddings:
            model.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
        else:
            model.tie_weights()
        del source, llm
        return model


__all__ = [
    "EntropyASRPreTrainedModel",
    "EntropyASRModel",
    "EntropyASRForConditionalGeneration",
    "EntropyASRAdaptor",
    "EntropyASRCTCHead",
]
