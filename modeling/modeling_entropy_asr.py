"""EntropyASR: speech encoder -> phoneme CTC head / frame-stacking adaptor -> decoder-only LLM.

Layout follows transformers' speech LLMs (GraniteSpeech, Voxtral): `EntropyASRModel` holds the encoder, the
CTC head, the adaptor and the text backbone and returns `last_hidden_state`; the `...ForConditionalGeneration`
class adds the LM head, the losses and `generate`.
"""

import math
import re
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    DynamicCache,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.utils import ModelOutput, logging

from .configuration_entropy_asr import EntropyASRConfig, num_encoder_frames, num_stacked_frames

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
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

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


# Scripts written without spaces between words: a hotword in them may start anywhere.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_TOKEN_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _token_texts(tokenizer) -> tuple[dict[str, list[int]], int]:
    """(decoded text -> token ids over the whole vocabulary, the longest such text), computed once per tokenizer
    (a second for Qwen3's)."""
    cached = _TOKEN_TEXTS.get(tokenizer)
    if cached is None:
        table: dict[str, list[int]] = {}
        for i in range(len(tokenizer)):
            text = tokenizer.decode([i])
            if text and not text.isspace():
                table.setdefault(text, []).append(i)
        cached = _TOKEN_TEXTS[tokenizer] = (table, max((len(t) for t in table), default=0))
    return cached


class HotwordBias:
    """Contextual biasing for greedy decoding (a `transformers` logits processor; with beam search each clip's
    `num_beams` score rows share its hotwords): while clip i is decoded, the tokens that spell the next
    characters of one of its hotwords get `bonus` added to their logits, so a name the model half-hears is
    completed the way the hotword list spells it. Inside a hotword (the transcript ends with its first
    characters, from a word boundary in spaced scripts) only the tokens that continue it are favoured;
    otherwise the tokens that start one (in spaced scripts at a word boundary; in Chinese or Japanese
    anywhere). It works on token text, so how a hotword is tokenized in context does not matter, but a
    character that no token spells on its own (one split over byte-level tokens) is never favoured."""

    def __init__(self, tokenizer, hotwords: Sequence[Sequence[str]], bonus: float, prompt_length: int):
        self.tokenizer, self.bonus, self.prompt_length = tokenizer, float(bonus), prompt_length
        if not math.isfinite(self.bonus) or self.bonus < 0:
            raise ValueError(f"hotword_bonus must be a finite number >= 0, got {bonus}")
        self.hotwords = [[w for w in row if w] for row in hotwords]
        self.by_text, self.longest = _token_texts(tokenizer)

    def _spelling(self, rest: str, prefix: str = "") -> set[int]:
        """Tokens whose text is `prefix` + a non-empty start of `rest`."""
        out: set[int] = set()
        for n in range(1, min(self.longest, len(rest)) + 1):
            out.update(self.by_text.get(prefix + rest[:n], ()))
        return out

    @staticmethod
    def spaced(hotword: str) -> bool:
        """Whether the hotword is written with spaces between words (not Chinese or Japanese)."""
        return _UNSPACED.search(hotword) is None

    @classmethod
    def inside(cls, written: str, hotword: str) -> list[int]:
        """How many characters of `hotword` the transcript `written` ends with, for each partial match (from a
        word boundary for spaced hotwords; never the whole hotword)."""
        spaced = cls.spaced(hotword)
        return [
            k
            for k in range(1, len(hotword))
            if written.endswith(hotword[:k]) and (not spaced or len(written) == k or written[-k - 1] == " ")
        ]

    def targets(self, written: str, hotwords: Sequence[str]) -> set[int]:
        """The tokens favoured after `written`: those continuing a hotword it is inside, else those starting one."""
        partial = {(w, k) for w in hotwords for k in self.inside(written, w)}
        if partial:
            return set().union(*(self._spelling(w[k:]) for w, k in partial))
        out: set[int] = set()
        for w in hotwords:
            if not self.spaced(w):  # Chinese, Japanese: no word boundaries in the text
                out |= self._spelling(w)
            else:  # a word starts after a space: the token's own, or one already written
                out |= self._spelling(w, " ") if written.strip() else set()
                out |= self._spelling(w) if not written or written.endswith(" ") else set()
        return out

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, clips = scores.shape[0], len(self.hotwords)
        if clips == 0 or rows % clips:
            raise ValueError(f"HotwordBias holds hotwords for {clips} clips, got scores for {rows} rows")
        per_clip = rows // clips  # beam search: `num_beams` rows per clip, in clip order
        generated = input_ids[:, self.prompt_length :].tolist()  # one device sync per step
        for row in range(rows):
            words = self.hotwords[row // per_clip]
            if not words:
                continue
            written = self.tokenizer.decode(generated[row], skip_special_tokens=True)
            ids = self.targets(written, words)
            if ids:
                scores[row, sorted(ids)] += self.bonus
        return scores


def _end_rows(scores: torch.Tensor, rows: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """EOS forced in the rows where `rows` is True (an empty transcript when applied at the first step). With
    beam search the scores hold `num_beams` rows per clip, in clip order: each clip's mask is repeated."""
    if rows.shape[0] != scores.shape[0]:
        rows = rows.repeat_interleave(scores.shape[0] // rows.shape[0])
    if rows.any():
        scores = scores.clone()
        scores[rows] = float("-inf")
        scores[rows, eos[0]] = 0.0
    return scores


def _no_speech_gate(scores: torch.Tensor, eos: torch.Tensor, threshold: float) -> torch.Tensor:
    """Rows whose end-of-turn probability is at least `threshold` get EOS forced (the first decoding step)."""
    return _end_rows(scores, scores.float().softmax(-1)[:, eos].sum(-1) >= threshold, eos)


def speech_confidence(ctc_logits: torch.Tensor, lengths: torch.Tensor, blank_id: int) -> torch.Tensor:
    """(B,) mean probability of the CTC head's best label over the valid frames where that label is not blank;
    0 for a clip with no such frame (what `config.min_speech_confidence` is compared with)."""
    best, label = ctc_logits.float().softmax(-1).max(-1)  # (B, T)
    valid = torch.arange(label.shape[1], device=label.device)[None, :] < lengths[:, None]
    counted = valid & (label != blank_id)
    n = counted.sum(-1)
    return torch.where(n > 0, (best * counted).sum(-1) / n.clamp(min=1), best.new_zeros(best.shape[0]))


class _NoSpeechGate(LogitsProcessor):
    """`config.no_speech_threshold` for `GenerationMixin.generate`: at the first new token, rows that would end
    their turn with at least that probability are ended (an empty transcript)."""

    def __init__(self, prompt_length: int, threshold: float, eos_token_id):
        self.prompt_length, self.threshold = prompt_length, threshold
        self.eos = torch.tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] != self.prompt_length:
            return scores
        return _no_speech_gate(scores, self.eos.to(scores.device), self.threshold)


class _EndRowsAtOnce(LogitsProcessor):
    """`config.min_speech_confidence` for `GenerationMixin.generate`: the clips whose speech confidence was
    below it (measured before generation) end at the first new token."""

    def __init__(self, prompt_length: int, rows: torch.Tensor, eos_token_id):
        self.prompt_length, self.rows = prompt_length, rows
        self.eos = torch.tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] != self.prompt_length:
            return scores
        return _end_rows(scores, self.rows.to(scores.device), self.eos.to(scores.device))


class _PerRowLengthBound(LogitsProcessor):
    """Forces EOS in row i once it has generated `bounds[i]` tokens (rows are prompt-aligned by left padding)."""

    def __init__(self, prompt_length: int, bounds: torch.Tensor, eos_token_id: int):
        self.prompt_length, self.bounds, self.eos = prompt_length, bounds, eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1] - self.prompt_length
        rows = (
            self.bounds.to(scores.device).repeat_interleave(scores.shape[0] // self.bounds.numel())
            <= generated
        )
        if rows.any():
            forced = torch.full_like(scores[rows], float("-inf"))
            forced[:, self.eos] = 0
            scores = scores.clone()
            scores[rows] = forced
        return scores


# ---- lean decoding step for Llama-family text models ---------------------------------------------------------
_LEAN_TEXT_MODELS = ("llama", "qwen2", "qwen3")


class _LeanDecoder:
    """Decoding (and unpadded prefill) for a Llama-family text model (Llama, Qwen2, Qwen3) without
    transformers' per-call machinery (cache objects, mask building, attention dispatch): the keys and values
    already computed are copied once into buffers preallocated for the whole transcript, and each call applies
    the model's own weights, rotary embedding and `apply_rotary_pos_emb` as its forward does, around one
    `scaled_dot_product_attention` (float32 norms as one `torch.rms_norm` call). It gives the tokens of the
    model's forward (tested against `GenerationMixin.generate`); `supports` lists what it needs."""

    def __init__(self, language_model: nn.Module, kv: list, attention_mask: torch.Tensor, capacity: int):
        """`kv`: per layer (keys, values) of the first `kv[0][0].shape[2]` positions, batch 1 (broadcast) or B;
        `attention_mask` (B, capacity or fewer): the prompt's padding; `capacity`: the positions to hold."""
        self.lm = language_model
        self.rope = sys.modules[type(language_model.layers[0].self_attn).__module__].apply_rotary_pos_emb
        batch = attention_mask.shape[0]
        self.length = kv[0][0].shape[2]
        self.keys, self.values = [], []
        for keys, values in kv:
            for src, dst in ((keys, self.keys), (values, self.values)):
                buf = src.new_empty(batch, src.shape[1], capacity, src.shape[-1])
                buf[:, :, : self.length] = src
                dst.append(buf)
        # Boolean key mask over the buffers; None when no row is padded (the unmasked SDPA path).
        if bool(attention_mask.all()):
            self.mask = None
        else:
            self.mask = attention_mask.new_ones(batch, 1, 1, capacity, dtype=torch.bool)
            self.mask[:, 0, 0, : attention_mask.shape[1]] = attention_mask.bool()

    @staticmethod
    def cache_kv(cache, num_layers: int) -> list:
        """Per layer (keys, values) of a transformers cache's first `num_layers` layers."""
        return [(layer.keys, layer.values) for layer in cache.layers[:num_layers]]

    @staticmethod
    def supports(language_model: nn.Module) -> bool:
        config = language_model.config
        parts = ("layers", "embed_tokens", "rotary_emb", "norm")
        if config.model_type not in _LEAN_TEXT_MODELS or language_model.training:
            return False
        if not all(hasattr(language_model, name) for name in parts):
            return False
        if any(kind != "full_attention" for kind in (getattr(config, "layer_types", None) or [])):
            return False
        if getattr(config, "_attn_implementation", None) not in (None, "sdpa", "eager"):
            return False
        linears = (
            ("self_attn", "q_proj"),
            ("self_attn", "k_proj"),
            ("self_attn", "v_proj"),
            ("self_attn", "o_proj"),
        )
        linears += (("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))
        norms = [language_model.norm]
        for layer in language_model.layers:
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
            norms += [
                getattr(layer.self_attn, name)
                for name in ("q_norm", "k_norm")
                if hasattr(layer.self_attn, name)
            ]
        return all(hasattr(norm, "variance_epsilon") for norm in norms) and all(
            all(type(getattr(getattr(layer, part), name, None)) is nn.Linear for part, name in linears)
            and hasattr(layer.mlp, "act_fn")
            and getattr(layer.self_attn, "sliding_window", None) is None
            for layer in language_model.layers
        )

    @staticmethod
    def _norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's RMSNorm; in float32 as one `torch.rms_norm` call (fewer dispatches; bitwise equal to
        transformers' RMSNorm on CPU)."""
        if x.dtype != torch.float32:
            return module(x)
        return torch.rms_norm(x, (x.shape[-1],), module.weight, module.variance_epsilon)

    def forward(self, hidden: torch.Tensor, position_ids: torch.LongTensor) -> torch.Tensor:
        """Feed T input embeddings per row (B, T, E) at `position_ids` (B, T), causally after the positions
        already held; returns the final-norm hidden states (B, T, E)."""
        lm, n, norm = self.lm, self.length, self._norm
        t = hidden.shape[1]
        cos, sin = lm.rotary_emb(hidden, position_ids)
        mask = None if self.mask is None else self.mask[..., : n + t]
        if t > 1:
            if mask is not None:
                raise ValueError("a multi-token step needs unpadded rows")
            mask = torch.ones(t, n + t, dtype=torch.bool, device=hidden.device).tril(diagonal=n)[None, None]
        for layer, keys, values in zip(lm.layers, self.keys, self.values):
            attn, mlp = layer.self_attn, layer.mlp
            x = norm(layer.input_layernorm, hidden)
            shape = (*x.shape[:-1], -1, attn.head_dim)
            q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(shape)
            k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(shape)
            if hasattr(attn, "q_norm"):  # Qwen3
                q, k = norm(attn.q_norm, q), norm(attn.k_norm, k)
            q, k = self.rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            keys[:, :, n : n + t] = k
            values[:, :, n : n + t] = (
                F.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(shape).transpose(1, 2)
            )
            out = F.scaled_dot_product_attention(
                q,
                keys[:, :, : n + t],
                values[:, :, : n + t],
                attn_mask=mask,
                scale=attn.scaling,
                enable_gqa=True,
            )
            hidden = hidden + F.linear(
                out.transpose(1, 2).reshape(*x.shape[:-1], -1), attn.o_proj.weight, attn.o_proj.bias
            )
            x = norm(layer.post_attention_layernorm, hidden)
            gate = mlp.act_fn(F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias))
            hidden = hidden + F.linear(
                gate * F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias),
                mlp.down_proj.weight,
                mlp.down_proj.bias,
            )
        self.length = n + t
        return norm(lm.norm, hidden)


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

    def encode(self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None):
        """Encoder states (B, T_enc, d_enc) with invalid frames zeroed, and valid lengths (B,)."""
        input_features = input_features.to(self.encoder.dtype)
        is_whisper = self.config.encoder_config.model_type == "whisper"
        time_axis = 2 if is_whisper else 1  # Whisper features are (B, F, T), Parakeet (B, T, F)
        if input_features_mask is None:
            input_features_mask = torch.ones(
                input_features.shape[0],
                input_features.shape[time_axis],
                dtype=torch.long,
                device=input_features.device,
            )
        if is_whisper:
            hidden = self.encoder(input_features).last_hidden_state
        else:
            hidden = self.encoder(input_features, attention_mask=input_features_mask).last_hidden_state
        lengths = num_encoder_frames(
            input_features_mask.sum(-1).long(), self.config.encoder_frame_rule["conv_layers"]
        )
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
        return hidden * valid[..., None].to(hidden.dtype), lengths

    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None
    ):
        """Adaptor outputs (B, N, d_llm), their valid counts (B,), encoder states and lengths."""
        hidden, lengths = self.encode(input_features, input_features_mask)
        audio_embeds = self.adaptor(hidden)
        counts = num_stacked_frames(lengths, self.config.stack_factor)
        return audio_embeds, counts, hidden, lengths

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
        **kwargs,
    ) -> EntropyASRModelOutput:
        encoder_hidden = encoder_lengths = ctc_logits = audio_embeds = counts = None
        if input_features is not None:
            audio_embeds, counts, encoder_hidden, encoder_lengths = self.get_audio_features(
                input_features, input_features_mask
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


class EntropyASRForConditionalGeneration(EntropyASRPreTrainedModel, GenerationMixin):
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
        padded with -100. With only `input_features` (+ `ctc_labels`) the LLM is skipped."""
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

    @torch.no_grad()
    def ctc_greedy_decode(self, input_features, input_features_mask=None) -> list[list[int]]:
        """Greedy CTC hypothesis (collapsed repeats, blanks removed) per clip, as CTC vocabulary ids."""
        hidden, lengths = self.model.encode(input_features, input_features_mask)
        best = self.model.ctc_head(hidden).argmax(-1)
        hyps = []
        for row, n in zip(best.tolist(), lengths.tolist()):
            prev, hyp = None, []
            for tok in row[:n]:
                if tok != prev and tok != self.config.ctc_blank_id:
                    hyp.append(tok)
                prev = tok
            hyps.append(hyp)
        return hyps

    # ---- generation --------------------------------------------------------------------------------------
    def default_max_new_tokens(self, input_features_mask: torch.Tensor | None, num_feature_frames: int):
        """Per-clip bound on new tokens from its duration (LongTensor (B,)): output much longer than the
        speech allows is a hallucination, not a transcript."""
        if input_features_mask is not None:
            frames = input_features_mask.sum(-1).long()
        else:
            frames = torch.tensor([num_feature_frames])
        seconds = frames.double() * self.config.hop_length / self.config.sampling_rate
        bound = torch.ceil(seconds * self.config.max_tokens_per_second).long()
        return bound.clamp(min=self.config.min_token_bound)

    # Keyword arguments the lean greedy loop understands; anything else goes through GenerationMixin.generate.
    _GREEDY_KWARGS = frozenset(
        (
            "input_ids",
            "attention_mask",
            "input_features",
            "input_features_mask",
            "max_new_tokens",
            "min_new_tokens",
            "logits_processor",
        )
    )

    def _is_plain_greedy(self, args: tuple, kwargs: dict) -> bool:
        """True when `generate` is asked for what transcription needs and nothing else: greedy search with the
        saved generation config (EOS, pad, suppressed tokens), audio in the prompt, and at most custom logits
        processors (classes not defined by transformers, such as hotword biasing)."""
        g = self.generation_config
        greedy_values = {"do_sample": False, "num_beams": 1}  # explicit settings that ask for greedy search
        extra = set(kwargs) - self._GREEDY_KWARGS
        # custom processors run in the loop; transformers' own ones (which GenerationMixin merges with the
        # ones it builds from the generation config) go through GenerationMixin
        custom = all(
            not type(p).__module__.startswith("transformers.") for p in kwargs.get("logits_processor") or []
        )
        return (
            not args
            and custom
            and all(k in greedy_values and kwargs[k] == greedy_values[k] for k in extra)
            and kwargs.get("input_ids") is not None
            and kwargs.get("input_features") is not None
            and not g.do_sample
            and (g.num_beams or 1) == 1
            and (g.num_return_sequences or 1) == 1
            and g.repetition_penalty in (None, 1.0)
            and not g.no_repeat_ngram_size
            and not g.bad_words_ids
            and not g.begin_suppress_tokens
            and g.forced_bos_token_id is None
            and g.forced_eos_token_id is None
            and not g.sequence_bias
            and not g.min_length
            and not g.return_dict_in_generate
            and g.eos_token_id is not None
        )

    def _cached_prompt_head(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor):
        """(n, kv): the keys and values (per layer, batch 1) of the first n prompt tokens (the chat template's
        system and user text before the audio, the same for every clip), computed once and kept while the
        LLM's weights are unchanged; (0, None) when the rows do not share an unpadded head."""
        audio = (input_ids[0] == self.config.audio_token_id).nonzero()
        if audio.numel() == 0 or not bool(attention_mask.all()):
            return 0, None
        n = int(audio[0])
        head = input_ids[:, :n]
        if n < 2 or not bool((head == head[:1]).all()):
            return 0, None
        lm = self.model.language_model
        key = (tuple(head[0].tolist()), tuple((p.data_ptr(), p._version) for p in lm.parameters()))
        stored = getattr(self, "_prompt_head_kv", None)
        if stored is None or stored[0] != key:
            positions = torch.arange(n, device=input_ids.device)[None]
            head_cache = lm(input_ids=head[:1], position_ids=positions, use_cache=True).cache
            kv = _LeanDecoder.cache_kv(head_cache, len(lm.layers))
            self._prompt_head_kv = stored = (key, kv)
        return n, stored[1]

    @torch.no_grad()
    def _greedy_generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        input_features: torch.Tensor,
        input_features_mask: torch.Tensor | None,
        bounds: torch.Tensor,
        min_new_tokens: int,
        logits_processor: LogitsProcessorList | None = None,
    ) -> torch.LongTensor:
        """Greedy decoding with a KV cache in a plain loop (the same tokens as `GenerationMixin.generate` with
        the saved generation config, without transformers' per-step logits processor objects and stopping
        criteria: the loop applies their effects itself). The audio is
        encoded once, in the prefill. When the LLM is a family `_LeanDecoder` supports, the decoding steps run
        there, and so does the prefill of unpadded rows, after the prompt text before the audio taken from
        `_cached_prompt_head`; otherwise the text model's own forward runs them. Row i may emit at most
        `bounds[i]` tokens before EOS; finished rows are padded with `pad_token_id`. With
        `config.no_speech_threshold`, rows that would end their turn at the first step with at least that
        probability end there, and so do rows whose speech confidence (from the encoder states of the prefill)
        is below `config.min_speech_confidence`. `logits_processor` (custom processors) then sees the float32
        scores and the sequences so far, in the place `GenerationMixin.generate` gives them. Returns prompt + new
        tokens, like `generate`."""
        g = self.generation_config
        eos = torch.tensor(g.eos_token_id if isinstance(g.eos_token_id, list) else [g.eos_token_id])
        eos = eos.to(input_ids.device)
        pad = g.pad_token_id if g.pad_token_id is not None else int(eos[0])
        suppress = list(g.suppress_tokens or [])
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        bounds = bounds.to(input_ids.device)
        max_new = int(bounds.max())
        if max_new <= 0:
            return input_ids
        batch = input_ids.shape[0]
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        unheard = None  # rows below config.min_speech_confidence
        done, head_kv = self._cached_prompt_head(input_ids, attention_mask)
        lm, lean, capacity = self.model.language_model, None, input_ids.shape[1] + max_new
        lean_supported = _LeanDecoder.supports(lm)
        if head_kv is not None and lean_supported:
            lean = _LeanDecoder(lm, head_kv, attention_mask, capacity)
            audio_embeds, counts, enc_hidden, enc_lengths = self.model.get_audio_features(
                input_features, input_features_mask
            )
            embeds, _ = self.model.embed_prompt(input_ids[:, done:], audio_embeds, counts)
            hidden = lean.forward(embeds, position_ids[:, done:])
            if self.config.min_speech_confidence is not None:
                unheard = self._below_speech_confidence(self.model.ctc_head(enc_hidden), enc_lengths)
        else:
            cache = None
            if head_kv is not None:
                cache = DynamicCache(config=self.config.text_config)
                for i, (keys, values) in enumerate(head_kv):
                    cache.update(
                        keys.expand(batch, -1, -1, -1).clone(), values.expand(batch, -1, -1, -1).clone(), i
                    )
            out = self.model(
                input_ids=input_ids[:, done:],
                attention_mask=attention_mask,
                position_ids=position_ids[:, done:],
                input_features=input_features,
                input_features_mask=input_features_mask,
                cache=cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state
            if self.config.min_speech_confidence is not None:
                unheard = self._below_speech_confidence(out.ctc_logits, out.encoder_lengths)
            if lean_supported and hasattr(out.cache, "layers"):
                lean = _LeanDecoder(
                    lm, _LeanDecoder.cache_kv(out.cache, len(lm.layers)), attention_mask, capacity
                )
        for step in range(max_new):
            logits = self.lm_head(hidden[:, -1]).float()
            if suppress:
                logits[:, suppress] = float("-inf")
            if step < min_new_tokens:
                logits[:, eos] = float("-inf")
            if step == 0 and self.config.no_speech_threshold is not None:
                logits = _no_speech_gate(logits, eos, self.config.no_speech_threshold)
            if step == 0 and unheard is not None:
                logits = _end_rows(logits, unheard.to(logits.device), eos)
            if logits_processor:
                logits = logits_processor(
                    torch.cat([input_ids, *(t[:, None] for t in new_tokens)], 1), logits
                )
            at_bound = bounds <= step
            if at_bound.any():
                logits[at_bound] = float("-inf")
                logits[at_bound, eos[0]] = 0.0
            token = logits.argmax(-1).masked_fill(finished, pad)
            new_tokens.append(token)
            finished |= torch.isin(token, eos)
            if bool(finished.all()) or step == max_new - 1:
                break
            position_ids = position_ids[:, -1:] + 1
            if lean is not None:
                hidden = lean.forward(self.get_input_embeddings()(token[:, None]), position_ids)
                continue
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
            out = self.model(
                input_ids=token[:, None],
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=out.cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state
        return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)

    @torch.no_grad()
    def no_speech_probability(
        self, input_ids, attention_mask=None, input_features=None, input_features_mask=None, **_
    ) -> torch.Tensor:
        """(B,) probability that the transcript ends at once (end of turn as its first token), with the generation
        config's suppressed tokens left out: what `config.no_speech_threshold` is compared with. Takes the
        processor's output for prompts without transcripts."""
        position_ids = None
        if attention_mask is not None:  # left padding: positions count real tokens, as in generation
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = (
            self(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                input_features=input_features,
                input_features_mask=input_features_mask,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
        g = self.generation_config
        if g.suppress_tokens:
            logits[:, list(g.suppress_tokens)] = float("-inf")
        eos = g.eos_token_id if isinstance(g.eos_token_id, list) else [g.eos_token_id]
        return logits.softmax(-1)[:, eos].sum(-1)

    @torch.no_grad()
    def speech_confidence(self, input_features, input_features_mask=None, **_) -> torch.Tensor:
        """(B,) speech confidence of each clip (see `speech_confidence`): what `config.min_speech_confidence`
        is compared with. Takes the processor's output (the prompt is not needed: only the encoder runs)."""
        hidden, lengths = self.model.encode(input_features, input_features_mask)
        return speech_confidence(self.model.ctc_head(hidden), lengths, self.config.ctc_blank_id)

    def _below_speech_confidence(self, ctc_logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        confidence = speech_confidence(ctc_logits, lengths, self.config.ctc_blank_id)
        return confidence < self.config.min_speech_confidence

    def _duration_bounds(self, features: torch.Tensor, features_mask: torch.Tensor | None) -> torch.Tensor:
        """`default_max_new_tokens` for a batch of encoder inputs (Whisper features are (B, F, T))."""
        time_axis = 2 if self.config.encoder_config.model_type == "whisper" else 1
        return self.default_max_new_tokens(features_mask, features.shape[time_axis])

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`; without an explicit `max_new_tokens`/`max_length`, each clip gets the
        duration bound of `default_max_new_tokens` (a row that reaches its bound is ended with EOS, so a batch
        gives the same transcripts as single calls). Plain greedy transcription (see `_is_plain_greedy`) runs
        in `_greedy_generate`, which gives the same tokens faster (measured in tests/benchmarks/bench_model.py)."""
        if kwargs.get("logits_processor") is not None:  # a generator would be used up by the checks below
            kwargs["logits_processor"] = list(kwargs["logits_processor"])
        if self._is_plain_greedy(args, kwargs):
            features = kwargs["input_features"]
            if kwargs.get("max_new_tokens") is not None or self.generation_config.max_new_tokens is not None:
                limit = kwargs.get("max_new_tokens") or self.generation_config.max_new_tokens
                bounds = torch.full((features.shape[0],), int(limit))
            else:
                bounds = self._duration_bounds(features, kwargs.get("input_features_mask"))
                bounds = bounds.expand(features.shape[0]) if bounds.numel() == 1 else bounds
            min_new = kwargs.get("min_new_tokens") or self.generation_config.min_new_tokens or 0
            return self._greedy_generate(
                kwargs["input_ids"],
                kwargs.get("attention_mask"),
                features,
                kwargs.get("input_features_mask"),
                bounds,
                int(min_new),
                LogitsProcessorList(kwargs.get("logits_processor") or []),
            )
        gen_config = kwargs.get("generation_config")
        explicit = any(k in kwargs for k in ("max_new_tokens", "max_length")) or (
            gen_config is not None and gen_config.max_new_tokens is not None
        )
        features = kwargs.get("input_features")
        prompt = kwargs.get("input_ids", args[0] if args else None)
        eos = (gen_config or self.generation_config).eos_token_id
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        threshold = self.config.no_speech_threshold
        if threshold is not None and features is not None and prompt is not None and eos is not None:
            processors.insert(0, _NoSpeechGate(prompt.shape[1], threshold, eos))
        confidence = self.config.min_speech_confidence
        if confidence is not None and features is not None and prompt is not None and eos is not None:
            unheard = self.speech_confidence(features, kwargs.get("input_features_mask")) < confidence
            processors.insert(0, _EndRowsAtOnce(prompt.shape[1], unheard, eos))
        if not explicit and features is not None and self.generation_config.max_new_tokens is None:
            bounds = self._duration_bounds(features, kwargs.get("input_features_mask"))
            kwargs["max_new_tokens"] = int(bounds.max())
            if bounds.numel() > 1 and bool((bounds != bounds.max()).any()):
                if prompt is not None and eos is not None:
                    first_eos = eos[0] if isinstance(eos, (list, tuple)) else eos
                    processors.append(_PerRowLengthBound(prompt.shape[1], bounds, first_eos))
        if processors:
            kwargs["logits_processor"] = processors
        return super().generate(*args, **kwargs)

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
