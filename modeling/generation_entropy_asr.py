"""Decoding of EntropyASR: the one decoder behind `pipeline("automatic-speech-recognition", ...)`, the CLI and the
Space (transformers keeps Whisper's and Parakeet's decoding beside their models the same way).

- `DecodingOptions`: every decoding choice, validated in one place, saved with the model (generation_config.json).
- `EntropyASRGenerationMixin.transcribe`: a batch of clips -> transcripts: the encoder runs once; the gates
  (no-speech, speech confidence) empty clips without speech; hotword retrieval (`HotwordIndex`: phoneme
  Aho-Corasick with fuzzy edits over the CTC head's greedy hypothesis) picks each clip's hotwords; then the joint
  CTC / LLM beam search (`JointSearch`, the default) or the LLM's greedy loop, with the hotword bias
  (`HotwordBias`); word timestamps from the CTC head's forced alignment of the transcript.
- `generate` stays transformers' `GenerationMixin.generate` (sampling, beam search for training), with the greedy
  transcription case run by the same greedy loop.

Only torch, transformers, the standard library and this folder's files are imported: a model folder decodes
with nothing of the project installed (its phonemizer is data in the folder, `phonemizer_entropy_asr`).
"""

import dataclasses
import functools
import heapq
import itertools
import math
import numbers
import re
import sys
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.utils import logging

from .alignment_entropy_asr import encoder_frame_seconds, unit_timestamps
from .phonemizer_entropy_asr import is_hanzi, split_units, units_with_spans, unspoken

logger = logging.get_logger(__name__)

WORD_SEPARATOR = "|"  # the word boundary of a character CTC vocabulary (the conventional recipe's)


# ---- the decoding options --------------------------------------------------------------------------------------
_HOTWORD_SPLIT = re.compile(r"[,;\n\uff0c\u3001\uff1b]+")  # , ; newline and the full-width ， 、 ；
TIMESTAMP_KINDS = ("word",)


class DecodingOptionError(ValueError):
    """A decoding option with a value the decoder cannot use; the message names the option."""


def _number(name: str, value, kind, ok, rule: str):
    """`value` as `kind` (float or int) if `ok(value)`, else a DecodingOptionError naming `name` and the `rule`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DecodingOptionError(f"{name} must be a number, got {value!r}")
    if kind is int and (not math.isfinite(value) or float(value) != int(value)):
        raise DecodingOptionError(f"{name} must be a whole number, got {value!r}")
    value = kind(value)
    if not math.isfinite(value) or not ok(value):
        raise DecodingOptionError(f"{name} must be {rule}, got {value!r}")
    return value


def parse_hotwords(value, name: str = "hotwords") -> tuple[str, ...]:
    """Hotwords as a tuple of distinct names, in order: from a string ('Zhang Wei, 稻香；Yellow Submarine': commas,
    semicolons and new lines, half- or full-width) or a sequence of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        items = _HOTWORD_SPLIT.split(value)
    elif isinstance(value, (list, tuple, set, frozenset)) or hasattr(value, "__iter__"):
        items = list(value)
        bad = next((w for w in items if not isinstance(w, str)), None)
        if bad is not None:
            raise DecodingOptionError(f"{name} must be strings, got {bad!r} ({type(bad).__name__})")
    else:
        raise DecodingOptionError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
    return tuple(dict.fromkeys(w for w in (" ".join(item.split()) for item in items) if w))


def read_hotwords_file(path) -> tuple[str, ...]:
    """One hotword per line (blank lines and lines starting with # ignored); a DecodingOptionError naming
    `hotwords_file` for a missing, unreadable or non-UTF-8 file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DecodingOptionError(f"hotwords_file: no such file: {path}") from None
    except UnicodeDecodeError as err:
        raise DecodingOptionError(f"hotwords_file {path} is not UTF-8 text ({err})") from None
    except OSError as err:
        raise DecodingOptionError(f"hotwords_file {path} cannot be read ({err.strerror or err})") from None
    return parse_hotwords([ln for ln in lines if not ln.lstrip().startswith("#")], "hotwords_file")


@dataclass(frozen=True)
class DecodingOptions:
    """Every decoding choice of EntropyASR, validated in one place (`DecodingOptionError` names the option).

    A model folder saves its defaults in generation_config.json (key `decoding`, `save_to`); `for_model`
    reads them, and `pipeline(...)(clip, **options)` or `model.transcribe(..., **options)` override them per call.

    Search:
        ctc_weight: weight of the CTC head's prefix score in the joint CTC / LLM beam search, in [0, 1); 0 is the
            LLM's greedy decoding alone.
        beam_size, ctc_candidates: hypotheses kept per clip, and the LLM's most likely next tokens proposed for
            each (joint search only).
        beam_margin: hypotheses ranked more than this below their clip's best (a score in nats, as the search
            ranks them) are dropped, however few are left (None: the beam keeps `beam_size`; joint search only).
        unit_bonus: a length bonus per unit written (word, Hanzi, digit string; joint search only).
        max_new_tokens: a bound on the transcript's tokens (None: the clip's duration bound).
    Hotwords:
        hotwords: names the clip may contain (a list, or one string separated by commas, semicolons or new
            lines); hotwords_file: a UTF-8 file of them, one per line, merged in.
        hotword_retrieval: only the hotwords whose phonemes the CTC head hears in a clip (phoneme Aho-Corasick,
            with max_hotword_edits edits, one per phonemes_per_edit phonemes of a name; ignore_tones drops Mandarin
            tones) act on it, at most max_hotwords; False: every hotword acts on every clip. A name found with
            edits must also be no more than hotword_margin nats less likely under the CTC head than what it
            heard over the same frames (None: no such check; off with ignore_tones, as it would weigh the
            tones): what it heard wrongly passes, a different name one sound away from the one said does not.
        hotword_bonus: added to the LLM's scores of the tokens that continue a clip's hotword (0: none);
            prompt_hotwords: the clip's hotwords also go into the prompt's context.
    Gates (empty transcripts for clips without speech):
        use_gates: apply the model's calibrated gates; no_speech_threshold / min_speech_confidence override
            their values (None: the model's, `EntropyASRConfig`).
    Output:
        return_timestamps: "word" adds `chunks` [{"text", "timestamp": (start, end)}] in seconds, from the CTC
            head's forced alignment of the transcript; return_phonemes adds the CTC head's greedy hypothesis.
    """

    ctc_weight: float = 0.3
    beam_size: int = 8
    ctc_candidates: int = 50
    beam_margin: float | None = None
    unit_bonus: float = 2.0
    max_new_tokens: int | None = None
    hotwords: tuple[str, ...] = ()
    hotwords_file: str | None = None
    hotword_retrieval: bool = True
    hotword_bonus: float = 4.0
    prompt_hotwords: bool = False
    max_hotwords: int = 8
    max_hotword_edits: int = 4
    phonemes_per_edit: int = 3
    hotword_margin: float | None = 5.0
    ignore_tones: bool = False
    use_gates: bool = True
    no_speech_threshold: float | None = None
    min_speech_confidence: float | None = None
    return_timestamps: str | bool | None = False
    return_phonemes: bool = False

    def __post_init__(self):
        put = object.__setattr__
        put(
            self,
            "ctc_weight",
            _number(
                "ctc_weight",
                self.ctc_weight,
                float,
                lambda w: 0 <= w < 1,
                "in [0, 1) (0: greedy LLM decoding)",
            ),
        )
        put(self, "beam_size", _number("beam_size", self.beam_size, int, lambda n: n >= 1, ">= 1"))
        put(
            self,
            "ctc_candidates",
            _number("ctc_candidates", self.ctc_candidates, int, lambda n: n >= 1, ">= 1"),
        )
        if self.beam_margin is not None:
            margin = _number(
                "beam_margin", self.beam_margin, float, lambda m: m >= 0, ">= 0 (None: no margin)"
            )
            put(self, "beam_margin", margin)
        put(self, "unit_bonus", _number("unit_bonus", self.unit_bonus, float, lambda b: b >= 0, ">= 0"))
        if self.max_new_tokens is not None:
            put(
                self,
                "max_new_tokens",
                _number("max_new_tokens", self.max_new_tokens, int, lambda n: n >= 1, ">= 1"),
            )
        words = parse_hotwords(self.hotwords)
        if self.hotwords_file is not None:
            if not isinstance(self.hotwords_file, (str, bytes)) and not hasattr(
                self.hotwords_file, "__fspath__"
            ):
                raise DecodingOptionError(f"hotwords_file must be a path, got {self.hotwords_file!r}")
            words = tuple(dict.fromkeys(words + read_hotwords_file(self.hotwords_file)))
            put(self, "hotwords_file", None)  # read: its names are in `hotwords`
        put(self, "hotwords", words)
        put(
            self,
            "hotword_bonus",
            _number("hotword_bonus", self.hotword_bonus, float, lambda b: b >= 0, ">= 0"),
        )
        put(self, "max_hotwords", _number("max_hotwords", self.max_hotwords, int, lambda n: n >= 1, ">= 1"))
        put(
            self,
            "max_hotword_edits",
            _number("max_hotword_edits", self.max_hotword_edits, int, lambda n: n >= 0, ">= 0"),
        )
        put(
            self,
            "phonemes_per_edit",
            _number("phonemes_per_edit", self.phonemes_per_edit, int, lambda n: n >= 2, ">= 2"),
        )
        if self.hotword_margin is not None:
            margin = _number(
                "hotword_margin", self.hotword_margin, float, lambda m: m >= 0, ">= 0 (None: no check)"
            )
            put(self, "hotword_margin", margin)
        for name in ("hotword_retrieval", "prompt_hotwords", "ignore_tones", "use_gates", "return_phonemes"):
            if not isinstance(getattr(self, name), bool):
                raise DecodingOptionError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.hotwords and not self.prompt_hotwords and self.hotword_bonus == 0:
            raise DecodingOptionError(
                "hotwords would do nothing: with hotword_bonus 0 they act only through the prompt "
                "(prompt_hotwords=True)"
            )
        if self.no_speech_threshold is not None:
            value = _number(
                "no_speech_threshold", self.no_speech_threshold, float, lambda p: 0 < p <= 1, "in (0, 1]"
            )
            put(self, "no_speech_threshold", value)
        if self.min_speech_confidence is not None:
            value = _number(
                "min_speech_confidence", self.min_speech_confidence, float, lambda p: 0 < p <= 1, "in (0, 1]"
            )
            put(self, "min_speech_confidence", value)
        stamps = self.return_timestamps
        if stamps in (None, False):
            put(self, "return_timestamps", False)
        elif stamps is True:  # transformers' ASR pipelines: True asks for the finest timestamps the model has
            put(self, "return_timestamps", "word")
        elif stamps not in TIMESTAMP_KINDS:
            raise DecodingOptionError(
                f"return_timestamps must be False, True or one of {list(TIMESTAMP_KINDS)}, got {stamps!r} (word "
                "timestamps come from the CTC head's alignment of the transcript)"
            )

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def replace(self, **changes) -> "DecodingOptions":
        """A copy with `changes` (validated; an unknown name is a DecodingOptionError listing the known ones)."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise DecodingOptionError(
                f"unknown decoding option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"the options are: {', '.join(self.names())}"
            )
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def from_dict(cls, values: dict | None) -> "DecodingOptions":
        return cls().replace(**dict(values or {}))

    @classmethod
    def for_model(
        cls, model, options: "DecodingOptions | dict | None" = None, **changes
    ) -> "DecodingOptions":
        """The model's saved defaults (`generation_config.decoding`), then `options` (a dict of some options; a
        DecodingOptions instance is a whole set and replaces the defaults), then `changes`, checked once together."""
        if isinstance(options, DecodingOptions):
            return options.replace(**changes)
        saved = dict(getattr(model.generation_config, "decoding", None) or {})
        return cls().replace(**{**saved, **(options or {}), **changes})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hotwords_file"} | {
            "hotwords": list(self.hotwords)
        }

    def save_to(self, generation_config) -> None:
        """Make these the defaults of a model: written to generation_config.json by `save_pretrained`. (A
        generation config derived from the model config drops attributes it does not know when it is read back:
        this one is the model's own from now on.)"""
        generation_config.decoding = self.to_dict()
        generation_config._from_model_config = False

    # ---- what they ask for ----------------------------------------------------------------------------------
    @property
    def joint(self) -> bool:
        return self.ctc_weight > 0

    def gates(self, config) -> tuple[float | None, float | None]:
        """(no-speech threshold, minimum speech confidence) in effect for a model config."""
        if not self.use_gates:
            return None, None
        return (
            config.no_speech_threshold if self.no_speech_threshold is None else self.no_speech_threshold,
            config.min_speech_confidence
            if self.min_speech_confidence is None
            else self.min_speech_confidence,
        )


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

    @classmethod
    def project(cls, layer: nn.Module, x: torch.Tensor, cos, sin, rope):
        """A layer's queries, keys (normed for Qwen3, rotated) and values (B, heads, T, d) of its normed input x
        (B, T, E)."""
        attn = layer.self_attn
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(shape)
        k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(shape)
        if hasattr(attn, "q_norm"):  # Qwen3
            q, k = cls._norm(attn.q_norm, q), cls._norm(attn.k_norm, k)
        q, k = rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return q, k, F.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(shape).transpose(1, 2)

    @classmethod
    def finish(cls, layer: nn.Module, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of a layer after its attention (`attended` (B, T, heads * d)): output projection and residual,
        then the MLP and residual."""
        attn, mlp = layer.self_attn, layer.mlp
        hidden = hidden + F.linear(attended, attn.o_proj.weight, attn.o_proj.bias)
        x = cls._norm(layer.post_attention_layernorm, hidden)
        gate = mlp.act_fn(F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias))
        up = F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias)
        return hidden + F.linear(gate * up, mlp.down_proj.weight, mlp.down_proj.bias)

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
            q, k, v = self.project(layer, norm(layer.input_layernorm, hidden), cos, sin, self.rope)
            keys[:, :, n : n + t], values[:, :, n : n + t] = k, v
            out = F.scaled_dot_product_attention(
                q,
                keys[:, :, : n + t],
                values[:, :, : n + t],
                attn_mask=mask,
                scale=layer.self_attn.scaling,
                enable_gqa=True,
            )
            hidden = self.finish(layer, hidden, out.transpose(1, 2).reshape(*hidden.shape[:-1], -1))
        self.length = n + t
        return norm(lm.norm, hidden)


# ---- hotword retrieval (companion paper): phoneme Aho-Corasick over the CTC head's greedy hypothesis --------
_TONE = re.compile(r"(?<=[a-zêv])[1-5]$")


_SYLLABIC_NASALS = ("m", "n")  # toneless, they would read as the initials m and n


def _strip_tone(symbol: str) -> str:
    """`ang3` -> `ang`; a syllabic nasal keeps a mark (`n2` -> `n~`) so it does not become the initial `n`."""
    base = _TONE.sub("", symbol)
    return base + "~" if base != symbol and base in _SYLLABIC_NASALS else base


@dataclass(frozen=True)
class HotwordMatch:
    start: int  # phoneme index in the hypothesis
    end: int  # one past the last phoneme
    hotwords: tuple[str, ...]  # every hotword with this phoneme sequence (homophones)
    edits: int = 0  # substitutions + insertions + deletions between the hotword and hypothesis[start:end]


def _best_alignment(key: Sequence[int], window: Sequence[int]) -> tuple[int, int, int]:
    """(edits, start, end) of the substring of `window` closest to `key` in edit distance: for each end, the
    earliest start among its cheapest alignments; of those, the fewest edits, then the span closest to the key's
    length (a phoneme misheard at an edge stays inside), then the earliest."""
    n = len(key)
    # row j, position i: (cost, start) of the cheapest alignment of key[:j] ending just before window[i]
    prev = [(0, i) for i in range(len(window) + 1)]  # the empty key prefix matches anywhere for free
    for j in range(1, n + 1):
        cur = [(j, 0)]
        for i in range(1, len(window) + 1):
            sub = prev[i - 1][0] + (key[j - 1] != window[i - 1])
            cur.append(
                min((sub, prev[i - 1][1]), (prev[i][0] + 1, prev[i][1]), (cur[i - 1][0] + 1, cur[i - 1][1]))
            )
        prev = cur
    cost, _, start, end = min(
        (cost, abs(end - start - n), start, end) for end, (cost, start) in enumerate(prev)
    )
    return cost, start, end


PHONEMES_PER_EDIT = 6  # default: one phoneme edit tolerated per this many phonemes of a hotword
# Hotwords shorter than this match exactly whatever the spacing: a 3- or 4-phoneme name with an edit matches
# everyday words (two-syllable Mandarin names such as 代艳 `d ai4 ian4` in 打电话 `d a3 d ian4 h ua4`).
FUZZY_MIN_PHONEMES = 5


class HotwordIndex:
    """Aho-Corasick automaton over phoneme symbols.

    >>> index = HotwordIndex.from_phonemes({"liberty park": "L IH B ER T IY P AA R K".split()})
    >>> index.retrieve("D R AY V T UW L IH B ER T IY P AA R K P L IY Z".split())
    ['liberty park']
    """

    def __init__(
        self,
        ignore_tones: bool = False,
        min_phonemes: int = 3,
        max_edits: int = 0,
        phonemes_per_edit: int = PHONEMES_PER_EDIT,
    ):
        if min_phonemes < 1:
            raise ValueError(f"min_phonemes must be >= 1, got {min_phonemes}")
        if max_edits < 0 or phonemes_per_edit < 2:
            raise ValueError(
                f"need max_edits >= 0 and phonemes_per_edit >= 2, got {max_edits}, {phonemes_per_edit}"
            )
        self.ignore_tones = ignore_tones
        self.min_phonemes = min_phonemes
        self.max_edits, self.phonemes_per_edit = max_edits, phonemes_per_edit
        self._pieces: HotwordIndex | None = None  # exact automaton over the pieces of fuzzy-matched hotwords
        self._piece_refs: list[tuple[int, int]] = []  # piece id -> (key id, offset of the piece in the key)
        self._symbols: dict[str, int] = {}
        self._goto: list[dict[int, int]] = [{}]
        self._fail: list[int] = [0]
        self._out: list[int] = [-1]  # id of the key ending at this node, or -1
        self._out_link: list[int] = [0]  # nearest proper suffix node that ends a key (0: none)
        self._keys: list[tuple[int, ...]] = []
        self._words: list[list[str]] = []
        self._built = True
        self.skipped: list[str] = []  # hotwords shorter than min_phonemes or without phonemes

    # ---------------------------------------------------------------------------------- building
    @classmethod
    def from_phonemes(cls, entries: dict[str, Sequence[str]], **kwargs) -> "HotwordIndex":
        index = cls(**kwargs)
        for word, phonemes in entries.items():
            index.add(word, phonemes)
        return index.build()

    @classmethod
    def from_hotwords(cls, hotwords: Iterable[str], phonemize, **kwargs) -> "HotwordIndex":
        """`phonemize(name) -> phonemes` (the model's phonemizer) spells each hotword; one it cannot spell (a
        character without a reading: a ValueError) is skipped and listed in `skipped`, as one too short to match."""
        index = cls(**kwargs)
        for word in dict.fromkeys(w.strip() for w in hotwords):
            if not word:
                continue
            try:
                phonemes = phonemize(word)
            except ValueError:
                index.skipped.append(word)
                continue
            index.add(word, phonemes)
        return index.build()

    def _normalise(self, phonemes: Iterable[str]) -> list[str]:
        return [_strip_tone(p) if self.ignore_tones else p for p in phonemes]

    def add(self, word: str, phonemes: Sequence[str]) -> None:
        seq = self._normalise(phonemes)
        if len(seq) < self.min_phonemes:
            self.skipped.append(word)
            return
        node = 0
        for p in seq:
            sym = self._symbols.setdefault(p, len(self._symbols))
            nxt = self._goto[node].get(sym)
            if nxt is None:
                nxt = len(self._goto)
                self._goto[node][sym] = nxt
                self._goto.append({})
                self._fail.append(0)
                self._out.append(-1)
                self._out_link.append(0)
            node = nxt
        if self._out[node] < 0:
            self._out[node] = len(self._keys)
            self._keys.append(tuple(self._symbols[p] for p in seq))
            self._words.append([])
        if word not in self._words[self._out[node]]:
            self._words[self._out[node]].append(word)
        self._built = False

    def build(self) -> "HotwordIndex":
        """Failure and output links, breadth first."""
        queue = deque()
        for child in self._goto[0].values():
            self._fail[child] = 0
            self._out_link[child] = 0
            queue.append(child)
        while queue:
            node = queue.popleft()
            for sym, child in self._goto[node].items():
                f = self._fail[node]
                while f and sym not in self._goto[f]:
                    f = self._fail[f]
                target = self._goto[f].get(sym, 0)
                self._fail[child] = target if target != child else 0
                fc = self._fail[child]
                self._out_link[child] = fc if self._out[fc] >= 0 else self._out_link[fc]
                queue.append(child)
        self._pieces, self._piece_refs = None, []
        if self.max_edits:
            self._pieces = HotwordIndex(min_phonemes=1)
            for key_id, key in enumerate(self._keys):
                edits = self.allowed_edits(len(key))
                cuts = [round(k * len(key) / (edits + 1)) for k in range(edits + 2)] if edits else []
                for a, b in zip(cuts, cuts[1:]):
                    self._pieces.add(str(len(self._piece_refs)), [str(sym) for sym in key[a:b]])
                    self._piece_refs.append((key_id, a))
            self._pieces.build()
        self._built = True
        return self

    def allowed_edits(self, n_phonemes: int) -> int:
        """Edits tolerated in a hotword of `n_phonemes` phonemes: one per `phonemes_per_edit`, at most `max_edits`,
        none below FUZZY_MIN_PHONEMES."""
        if n_phonemes < FUZZY_MIN_PHONEMES:
            return 0
        return min(self.max_edits, n_phonemes // self.phonemes_per_edit)

    def __len__(self) -> int:
        return sum(len(w) for w in self._words)

    # ---------------------------------------------------------------------------------- querying
    def matches(self, phonemes: Sequence[str]) -> list[HotwordMatch]:
        """Every occurrence of a stored sequence in `phonemes` (overlaps included), in order of end; with
        `max_edits`, also the best occurrence within `allowed_edits` of each place a hotword was heard."""
        if not self._built:
            self.build()
        found: list[HotwordMatch] = []
        exact: set[tuple[int, int, int]] = set()  # (key id, start, end)
        syms = [self._symbols.get(p, -1) for p in self._normalise(phonemes)]
        node = 0
        for i, sym in enumerate(syms):
            if sym < 0:
                node = 0
                continue
            while node and sym not in self._goto[node]:
                node = self._fail[node]
            node = self._goto[node].get(sym, 0)
            hit = node if self._out[node] >= 0 else self._out_link[node]
            while hit:
                key = self._out[hit]
                n = len(self._keys[key])
                found.append(HotwordMatch(i + 1 - n, i + 1, tuple(self._words[key])))
                exact.add((key, i + 1 - n, i + 1))
                hit = self._out_link[hit]
        if self._pieces is not None:
            found += self._approximate(syms, exact)
            found.sort(key=lambda m: m.end)  # stable: exact matches ending together keep longest first
        return found

    def _approximate(self, syms: list[int], exact: set[tuple[int, int, int]]) -> list[HotwordMatch]:
        """Matches with 1..allowed_edits edits: around each exact occurrence of a piece the whole key is aligned
        (once per key and window; keys whose symbols the window lacks too many of are skipped without aligning).
        Of overlapping matches of one key the best is kept (fewest edits, then closest to its length), and none
        that overlaps an exact match of it."""
        found: dict[tuple[int, int, int], int] = {}
        tried: set[tuple[int, int]] = set()
        for piece in self._pieces.matches([str(sym) for sym in syms]):
            for ref in piece.hotwords:
                key_id, offset = self._piece_refs[int(ref)]
                key = self._keys[key_id]
                edits = self.allowed_edits(len(key))
                origin = piece.start - offset  # where the key starts if this piece is where it should be
                if (key_id, origin) in tried:  # (not the clipped window start: near the start of the
                    continue  # hypothesis different origins share it, and all but the first went unchecked)
                tried.add((key_id, origin))
                lo = max(0, origin - edits)
                window = syms[lo : min(len(syms), origin + len(key) + edits)]
                # every key symbol the window lacks costs an edit: a cheap bound for names sharing a piece
                if (Counter(key) - Counter(window)).total() > edits:
                    continue
                cost, a, b = _best_alignment(key, window)
                if 0 < cost <= edits:
                    found[(key_id, lo + a, lo + b)] = cost
        taken: dict[int, list[tuple[int, int]]] = {}
        for key_id, a, b in exact:
            taken.setdefault(key_id, []).append((a, b))
        kept: list[HotwordMatch] = []
        for (key_id, a, b), cost in sorted(
            found.items(),
            key=lambda kv: (kv[1], abs(kv[0][2] - kv[0][1] - len(self._keys[kv[0][0]])), kv[0][1]),
        ):
            spans = taken.setdefault(key_id, [])
            if not any(a < end and start < b for start, end in spans):
                spans.append((a, b))
                kept.append(HotwordMatch(a, b, tuple(self._words[key_id]), cost))
        return kept

    def search(self, phonemes: Sequence[str]) -> list[HotwordMatch]:
        """Non-overlapping matches, longest first (an edit counts as two phonemes less; ties: fewer edits, then
        earliest), returned in hypothesis order."""
        chosen: list[HotwordMatch] = []
        taken: set[int] = set()
        order = sorted(
            self.matches(phonemes), key=lambda m: (-(m.end - m.start - 2 * m.edits), m.edits, m.start)
        )
        for m in order:
            span = set(range(m.start, m.end))
            if span & taken:
                continue
            taken |= span
            chosen.append(m)
        return sorted(chosen, key=lambda m: m.start)

    def retrieve(
        self,
        phonemes: Sequence[str] | str,
        max_hotwords: int | None = None,
        keep: Callable[[HotwordMatch, str], bool] | None = None,
    ) -> list[str]:
        """Hotwords for the context of a clip whose greedy CTC hypothesis is `phonemes` (a list or a
        space-separated string), in hypothesis order, without repeats, at most `max_hotwords`; with `keep`, only
        the hotwords of a match it keeps."""
        if isinstance(phonemes, str):
            phonemes = phonemes.split()
        out: list[str] = []
        for m in self.search(phonemes):
            out.extend(w for w in m.hotwords if w not in out and (keep is None or keep(m, w)))
        return out[:max_hotwords] if max_hotwords is not None else out


# ---- the CTC head as a scorer of text ---------------------------------------------------------------------------
NEG = -1e30  # log(0) that stays finite under subtraction
# Log-probabilities are clamped here (an emission less likely than e^-50 counts as e^-50): cumulative sums over
# the frames stay small enough for float32 (50 x 750 frames of a 30 s clip: steps of 0.004 at worst), and padded
# frames harmless.
FLOOR = -50.0
CUTOFF_CHECKS = (3, 5, 8, 12, 17, 23, 30, 40, 52, 66)  # after so many labels, `extend` looks for rows to drop
# a row is dropped only this far below the floor (float32 sums can rise by steps of 0.004)
CUTOFF_MARGIN = 0.01
WILDCARD = -2  # target of a word the phonemizer cannot spell (its neutral rule): any labels over any frames
_AFTER_WILDCARD = -3  # `last` after a wildcard: no repeat rule for the next label
LOGSUMEXP_OWN = 2048  # from so many elements on `_logsumexp` sums itself (below: one call to torch)


def _logsumexp(x: torch.Tensor) -> torch.Tensor:
    """(n,) `torch.logsumexp(x, 1)` of an (n, T) tensor of finite values, several times faster on large tensors
    of prefix scores: most of their terms lie more than 87 below their row's largest (NEG frames, unlikely
    paths), and the CPU's vectorised exp takes a slow path for every block that holds one (in float32 e^-88 is a
    denormal, then 0). Those terms count as e^-87 here (float32; e^-708 in float64): together they add at most
    T x e^-87 to a sum whose largest term is 1, far below half its last bit, so the result is torch's to the
    bit (a test compares the two on a search's own tensors). Small tensors go to torch, whose one call costs
    less than these seven."""
    if x.numel() < LOGSUMEXP_OWN:
        return torch.logsumexp(x, 1)
    top = x.amax(1, keepdim=True)
    floor = -87.0 if x.dtype == torch.float32 else -708.0
    return torch.sub(x, top).clamp_(min=floor).exp_().sum(1).log_().add_(top[:, 0])


class CTCTargets:
    """A transcript as CTC target ids per unit (`split_units`: an English word, a Hanzi, a digit string).

    A phoneme vocabulary spells units with the model's phonemizer: an English word alone (`Phonemizer.word`; a
    word still being written, `partial=True`, by its letter rules unless it is already a lexicon word), a run of
    Hanzi together (polyphones read in context), digits as Mandarin numerals when the transcript holds Hanzi. A
    word the phonemizer cannot spell (its neutral out-of-vocabulary rule) becomes one WILDCARD target. A
    character vocabulary (one that holds the word separator `|`) spells letters and Hanzi, with `|` before a unit
    when either it or the one before is not a Hanzi. Spellings are cached."""

    def __init__(self, vocab: Sequence[str], phonemizer=None):
        if not vocab:
            raise ValueError("the CTC head's vocabulary is empty: this model has no CTC head to decode with")
        self.ids = {s: i for i, s in enumerate(vocab)}
        self.characters = WORD_SEPARATOR in self.ids
        self.separator = self.ids.get(WORD_SEPARATOR)
        if not self.characters and phonemizer is None:
            raise ValueError(
                "decoding with the phoneme CTC head needs the model's phonemizer (phonemizer.json in the model "
                "folder, written by `entropy-asr init-model` and every training stage)"
            )
        self.phonemizer = phonemizer
        self._word = functools.lru_cache(maxsize=200_000)(self._word)
        self._hanzi_run = functools.lru_cache(maxsize=200_000)(self._hanzi_run)
        self._units = functools.lru_cache(maxsize=20_000)(units_with_spans)
        self._reading = functools.lru_cache(maxsize=20_000)(self._encode)  # one Hanzi's phonemes
        self.token_table: dict[str, torch.Tensor] = {}  # the same as tensors by token id (`_token_table`)
        self.token_labels: dict[int, tuple | None] = {}  # `JointSearch._unspelled`'s, by token id

    def _encode(self, symbols: Sequence[str]) -> tuple[int, ...]:
        return tuple(self.ids[s] for s in symbols if s in self.ids)

    def _word(self, word: str, mandarin_digits: bool, partial: bool) -> tuple[int, ...]:
        if word.isdigit() and mandarin_digits:
            return self._encode(p for p, _ in self.phonemizer.phonemize(word, language="zh"))
        phonemes = self.phonemizer.word(word, partial=partial)
        return (WILDCARD,) if phonemes is None else self._encode(phonemes)

    def _hanzi_run(self, run: str) -> tuple[tuple[int, ...], ...] | None:
        spelled = self.phonemizer.hanzi_run(run)
        return None if spelled is None else tuple(map(self._reading, spelled))

    def _piece_word(self, kind: tuple) -> tuple[int, ...] | None:
        """A word piece's labels as the word it begins, written so far; None for one not all letters or a word
        of the neutral rule."""
        spelled = self._word(kind[2], False, True) if kind[2].isalpha() else None
        return spelled if spelled and spelled != (WILDCARD,) else None

    def onsets(self, kind: tuple) -> tuple[int, ...] | None:
        """The labels a new unit begun by a piece of `kind` (see `JointSearch._piece_kind`) can start with: an
        English word's first phoneme as written so far, the first phoneme of any reading of a Hanzi; None where
        that is not known without the text around it (digits, a word of the neutral rule, characters)."""
        if self.characters:
            return None
        if kind[0] == "word":
            spelled = self._piece_word(kind)
            return None if spelled is None else spelled[:1]
        symbols = self.phonemizer.hanzi_onsets(kind[1][0])
        if not symbols or any(s not in self.ids for s in symbols):
            return None
        return tuple(sorted(self.ids[s] for s in symbols))

    def unit_labels(self, kind: tuple) -> tuple[tuple[int, ...], bool] | None:
        """The labels of the unit a piece of `kind` begins, read alone (an English word's phonemes as written so
        far, a Hanzi run's reading), and whether Hanzi before it leave them so: always for a word; for Hanzi
        when each character has one reading (a run is read together, and a phrase across the join can read a
        polyphone otherwise). None where only spelling the text tells: anything but letters or Hanzi, a word of
        the neutral rule, a character without a reading or one that reads as nothing."""
        if self.characters:
            return None
        if kind[0] == "word":
            spelled = self._piece_word(kind)
            return None if spelled is None else (spelled, True)
        run = self._hanzi_run(kind[1])
        if run is None or not all(run):
            return None
        return _flat(run), all(len(self.phonemizer.hanzi_readings(char)) == 1 for char in kind[1])

    def heard(self, unit_targets: Sequence[int]) -> bool:
        """Whether a unit's targets give the CTC head anything to hear (a character vocabulary's word separator
        alone does not; a word of the neutral rule, WILDCARD, does)."""
        if self.separator is None:
            return bool(unit_targets)
        return any(t != self.separator for t in unit_targets)

    def word(self, word: str, mandarin_digits: bool, partial: bool) -> tuple[int, ...]:
        """The target ids of one English word or digit string (`partial`: still being written)."""
        return self._word(word, mandarin_digits, partial)

    def hanzi(self, run: Sequence[str]) -> tuple[tuple[int, ...], ...] | None:
        """The target ids of each Hanzi of a run read together; None when one has no reading."""
        return self._hanzi_run("".join(run))

    def targets(self, text: str, partial: bool = False) -> tuple[list[str], list[tuple[int, ...]]] | None:
        """(units, target ids per unit) of `text`, or None when it cannot be spelled (a Hanzi without a reading).
        `partial`: the last unit is a word still being written."""
        spans = self._units(text)
        units = [unit for unit, _, _ in spans]
        hanzi = [is_hanzi(u) for u in units]
        if self.characters:
            out = []
            for i, unit in enumerate(units):
                separator = (self.ids[WORD_SEPARATOR],) if i and not (hanzi[i] and hanzi[i - 1]) else ()
                out.append(separator + tuple(self.ids[c] for c in unit if c in self.ids))
            return units, out
        out, i, mandarin = [], 0, any(hanzi)
        while i < len(units):
            if hanzi[i]:
                j = i + 1  # a run of Hanzi adjacent in the text is read together (polyphones in context)
                while j < len(units) and hanzi[j] and spans[j][1] == spans[j - 1][2]:
                    j += 1
                run = self._hanzi_run("".join(units[i:j]))
                if run is None:
                    return None
                out.extend(run)
                i = j
            else:
                out.append(self._word(units[i], mandarin, partial and i == len(units) - 1))
                i += 1
        return units, out


@dataclass
class CTCStates:
    """CTC prefix states of M hypotheses (rows), over T frames: `emitted`, the log-probability that exactly the
    prefix has been emitted by frame t (its paths over frames 0..t); `entry`: that its last label was first
    emitted at frame t; the last label (-1: nothing emitted yet); the prefix score `psi` = log P(the CTC output
    starts with the prefix) = logsumexp(entry); and the clip of each row. Whether the prefix by frame t ends in
    blank is `emitted` by t-1 times frame t's blank, so no state keeps it."""

    emitted: torch.Tensor  # (M, T) float32 (float64 when the scorer is asked for it)
    entry: torch.Tensor  # (M, T)
    last: torch.Tensor  # (M,) long
    psi: torch.Tensor  # (M,) float64
    clip: torch.Tensor  # (M,) long

    def __len__(self) -> int:
        return self.emitted.shape[0]

    def columns(self) -> tuple[torch.Tensor, ...]:
        """Its fields' values in order (cheaper than `dataclasses.fields` on the search's hot path)."""
        return (self.emitted, self.entry, self.last, self.psi, self.clip)

    def take(self, rows) -> "CTCStates":
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.emitted.device)
        return CTCStates(*[column[rows] for column in self.columns()])

    @staticmethod
    def cat(parts: Sequence["CTCStates"]) -> "CTCStates":
        return CTCStates(*map(torch.cat, zip(*(p.columns() for p in parts))))


@dataclass
class Cutoff:
    """What lets `CTCPrefixScorer.extend` stop extending rows that cannot matter. Row i ranks `offset[i] + weight *
    its prefix score` and belongs to group `group[i]` (a clip), where a beam of `beam` is being filled. Once
    `beam` finished rows that `counts` ranks at least some value in a group (or `floor[group]`, known before),
    the group's beam ends no lower (nor lower than `margin` below the best such row), and a `prunable` row
    whose rank with its prefix score so far (which only falls as labels are added) is below it cannot enter:
    its prefix score is returned as -inf, and the call stops once every row still being extended is such a
    row."""

    offset: torch.Tensor  # (M,) float64
    weight: float
    group: torch.Tensor  # (M,) long, in [0, G)
    floor: torch.Tensor  # (G,) float64
    counts: torch.Tensor  # (M,) bool
    prunable: torch.Tensor  # (M,) bool
    beam: int
    margin: float = math.inf  # nor a row more than this below its group's best finished row that counts

    def take(self, rows: torch.Tensor) -> "Cutoff":
        return dataclasses.replace(
            self,
            offset=self.offset[rows],
            group=self.group[rows],
            counts=self.counts[rows],
            prunable=self.prunable[rows],
        )


class CTCPrefixScorer:
    """Prefix scores of target sequences under the CTC log-probabilities of a batch of clips (B, T, V), for many
    hypotheses at once (the prefix score of joint CTC / attention decoding, Watanabe et al. 2017). Frames past
    a clip's length are certain blanks where no label is emitted, so they change no score: a clip decodes alike
    alone and in a batch. One extension step per target position, each a
    few tensor operations over all rows and frames (the recursion over frames is a cumulative sum and a
    log-cumulative-sum-exp).

    WILDCARD (a word the phonemizer cannot spell) stands for any labels over any frames, each frame it spans
    scored as its most likely label (a filler, as keyword spotters score what lies outside their keywords): the
    prefix followed by it has, by frame t, the probability sum over t' <= t of P(the prefix's last label first
    emitted at t') x the best labels of frames t'+1..t, and as prefix score its prefix's own. It neither costs nor
    gains a word much against hearing its frames well; paths can still split between it and the next label in
    more than one way, so scores after a wildcard are a little above probabilities."""

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, blank: int, dtype=torch.float32):
        lp = log_probs.to(dtype).clamp(min=FLOOR)  # (B, T, V)
        self.lengths = lengths.to(lp.device).long()
        self.valid = torch.arange(lp.shape[1], device=lp.device)[None, :] < self.lengths[:, None]  # (B, T)
        self.padded = not bool(self.valid.all())  # some clip is shorter than the frames
        lp = lp.masked_fill(~self.valid[..., None], FLOOR)
        lp[..., blank] = lp[..., blank].masked_fill(~self.valid, 0.0)
        self.log_probs, self.blank, self.T = lp, blank, lp.shape[1]
        self.label_rows = lp.transpose(1, 2).contiguous()  # (B, V, T): one label's frames, contiguous
        self.blank_cum = torch.cumsum(lp[..., blank], 1)  # (B, T): every frame up to t blank
        self.filler_cum = torch.cumsum(lp.amax(-1), 1)  # (B, T): every frame up to t its best label
        self.best_label = lp.index_fill(-1, torch.tensor([blank], device=lp.device), FLOOR).amax(-1)  # (B, T)

    def initial(self, clips: Sequence[int]) -> CTCStates:
        clip = torch.as_tensor(list(clips), dtype=torch.long, device=self.log_probs.device)
        m = clip.numel()
        return CTCStates(
            self.blank_cum[clip].clone(),
            torch.full((m, self.T), NEG, dtype=self.log_probs.dtype, device=clip.device),
            torch.full((m,), -1, dtype=torch.long, device=clip.device),
            torch.zeros(m, dtype=self.log_probs.dtype, device=clip.device),
            clip,
        )

    def final(self, states: CTCStates) -> torch.Tensor:
        """(M,) log P(the audio | exactly these targets), at each row's clip's last frame."""
        last = (self.lengths[states.clip] - 1).clamp(min=0)[:, None]
        return states.emitted.gather(1, last)[:, 0]

    def _entries(
        self, emitted, prev, label, clip, invalid, out=None, first=True, wildcards=True, repeat=None
    ):
        """(n, T) log P(the prefix (`emitted` by frame t, last label `prev`) then `label` first emitted at frame
        t), and (n, T) the label's log-probabilities y. `repeat` (n,) bool: the rows whose label is their prefix's
        last (it must follow a blank: the prefix by frame t-1 then ends in blank, `emitted` by t-2 times a blank
        at t-1); None: no row's is. `invalid`: the rows' frames past their clip (None: no row has any). `out`:
        where to write the entries; `first=False`: no row is an empty prefix (the only kind that can start at
        frame 0), and `out`'s first frame already says so; `wildcards=False`: no label is WILDCARD."""
        y = self.label_rows[clip, label.clamp(min=0) if wildcards else label]  # (n, T): each row's label
        before = emitted[:, :-1]  # the prefix by frame t-1, as the label at t may follow it
        if repeat is not None:
            ends_in_blank = torch.full_like(before, NEG)
            torch.add(emitted[:, :-2], self.label_rows[clip, self.blank, 1:-1], out=ends_in_blank[:, 1:])
            before = torch.where(repeat[:, None], ends_in_blank, before)
        entry = torch.empty_like(emitted) if out is None else out
        torch.add(before, y[:, 1:], out=entry[:, 1:])
        if first:
            entry[:, 0] = torch.where(prev == -1, y[:, 0], NEG)
        if invalid is not None:
            entry.masked_fill_(invalid, NEG)  # nothing past the clip's end
        return entry, y

    def peek(self, states: CTCStates, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(n,) the prefix score of state row `rows[i]` extended by the one label `labels[i]` (no wildcard): an
        upper bound of the score of every longer prefix that begins so, found without extending anything."""
        clip, last = states.clip[rows], states.last[rows]
        repeat = labels == last
        repeat = repeat if bool(repeat.any()) else None
        invalid = ~self.valid[clip] if self.padded else None
        entry, _ = self._entries(
            states.emitted[rows], last, labels, clip, invalid, wildcards=False, repeat=repeat
        )
        return _logsumexp(entry)

    def peek_any(self, states: CTCStates, rows: torch.Tensor) -> torch.Tensor:
        """(n,) a bound of the prefix score of state row `rows[i]` extended by any one label (each frame's best
        non-blank label, no repeat rule). After a WILDCARD a prefix can score higher than the one before it: this,
        not the prefix's own score, bounds what follows it."""
        emitted, last, clip = states.emitted[rows], states.last[rows], states.clip[rows]
        y = self.best_label[clip]
        first = torch.where((last == -1)[:, None], y[:, :1], NEG)
        entry = torch.cat([first, emitted[:, :-1] + y[:, 1:]], 1).masked_fill(~self.valid[clip], NEG)
        return _logsumexp(entry)

    def extend(
        self,
        states: CTCStates,
        targets: Sequence[Sequence[int]],
        keep_at: Sequence[int] | None = None,
        cutoff: Cutoff | None = None,
        rows: Sequence[int] | None = None,
        defer: bool = False,
    ) -> tuple[CTCStates, CTCStates | None]:
        """Each row extended by its targets (possibly none); `rows`: the state rows to extend, one per target
        sequence (default: every row, in order). With `keep_at`, also the states after each row's
        first `keep_at[i]` targets (the second value). Rows are worked longest first, so that step j computes
        only the rows that have a j-th target. With a `cutoff` (and no WILDCARD), rows it rules out get the
        prefix score -inf (their other values are left unfinished), and the work can end before the longest
        row's last target. With `defer` (no WILDCARD then), a row's last target gets its entries and prefix score
        but not `emitted` (half its work, and most extensions are only ranked): `finish` completes the rows that
        go on (a state kept after all of a row's targets is left so too: it is the row's extended state).

        A label c after a prefix emitted by frame t with log-probability e[t] (see `_entries` for one that
        repeats the prefix's last label): entry[t] = e[t-1] + y_c[t]; the new prefix by frame t ending in c,
        n[t] = y_c[t] + logaddexp(n[t-1], e[t-1]) = C[t] + logcumsumexp(entry - C)[t] with C the cumulative sum of
        y_c; and emitted by frame t, its last c at some s <= t then blanks: e'[t] = B[t] + logcumsumexp(n - B)[t]
        with B the cumulative sum of blanks. Two scans over the frames per label."""
        lengths = [len(t) for t in targets]
        width = max(lengths, default=0)
        if width == 0 or len(states) == 0:
            states = states if rows is None else states.take(list(rows))
            return states, (states if keep_at is not None else None)
        device = states.emitted.device
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        inverse = order_rows = None  # rows given longest first (the search's way) need no reordering
        if any(i != row for row, i in enumerate(order)):
            inverse = torch.empty(len(order), dtype=torch.long, device=device)
            order_rows = torch.tensor(order, device=device)
            inverse[order_rows] = torch.arange(len(order), device=device)
        sources = order if rows is None else [rows[i] for i in order]
        work = states.take(sources)  # a copy, written in place below
        emitted, entry, last, psi, clip = work.columns()
        sorted_lengths = torch.tensor([lengths[i] for i in order], device=device)
        padded = torch.zeros(len(order), width, dtype=torch.long, device=device)
        flat = [t for i in order for t in targets[i]]  # one tensor from a flat list: far cheaper than nested
        # (M, width): whether a row has a j-th target
        has = torch.arange(width, device=device)[None, :] < sorted_lengths[:, None]
        padded[has] = torch.tensor(flat, dtype=torch.long, device=device)
        # which rows' j-th label repeats the label before it (one look for all steps)
        repeats = (padded == torch.cat([last[:, None], padded[:, :-1]], 1)) & has
        repeat_at = repeats.any(0).tolist()
        at_least = [0] * (width + 2)  # rows with more than j targets, for each j
        for n in lengths:
            at_least[n] += 1
        active = list(itertools.accumulate(reversed(at_least)))[::-1][1 : width + 1]
        kept = keep_rows = None
        if keep_at is not None:  # the rows to copy after each target position
            keep_rows = [[] for _ in range(width)]
            for row, i in enumerate(order):
                if keep_at[i]:
                    keep_rows[keep_at[i] - 1].append(row)
            kept = work.take(range(len(order)))  # a copy: rows kept after 0 targets stay as they were
        blank_cum = self.blank_cum[clip]  # (M, T)
        invalid = ~self.valid[clip] if self.padded else None  # (M, T): frames past each row's clip
        if invalid is not None and not bool(invalid.any()):
            invalid = None  # nothing to mask
        scan = torch.empty_like(emitted)  # the scans' inputs and outputs
        wildcards = WILDCARD in flat
        if defer and wildcards:
            raise ValueError("extend: `defer` with WILDCARD targets (whose states are not a scan's)")
        dead = None  # the rows the cutoff ruled out
        scored = active[0]  # from this row on prefix scores are final (rows without targets keep theirs)
        checks = set() if cutoff is None or wildcards else set(CUTOFF_CHECKS)
        if checks:
            if order_rows is not None:
                cutoff = cutoff.take(order_rows)
            dead = torch.zeros(len(order), dtype=torch.bool, device=device)
        for j in range(width):
            n = active[j]
            c, prev, em, e = padded[:n, j], last[:n], emitted[:n], entry[:n]
            wild = (c == WILDCARD) if wildcards else None
            if wild is not None and not bool(wild.any()):
                wild = None
            before = None if wild is None else (em.clone(), e.clone())  # what a wildcard builds on
            # after a label no row is an empty prefix (a wildcard keeps it one); only an empty one starts at
            # frame 0, so without wildcards the first frame is written at the first two labels only
            first = j == 0 or wildcards
            if j == 1 and not first:
                e[:, 0] = NEG
            rows_invalid = None if invalid is None else invalid[:n]
            repeat = repeats[:n, j] if repeat_at[j] else None
            _, y = self._entries(em, prev, c, clip[:n], rows_invalid, e, first, wildcards, repeat)
            going_on = active[j + 1] if defer and j + 1 < width else 0 if defer else n
            if going_on:
                self._emitted(e[:going_on], y[:going_on], blank_cum[:going_on], em[:going_on], scan)
            if wild is None:
                last[:n] = c
                if wildcards:
                    psi[:n] = _logsumexp(e)
            else:  # the prefix by t', then filler frames
                old_emitted, old_entry = before
                filler = self.filler_cum[clip[:n]]
                free = torch.where(
                    (prev == -1)[:, None], filler, filler + torch.logcumsumexp(old_entry - filler, 1)
                )
                again = (prev == _AFTER_WILDCARD)[:, None]  # two in a row are one
                w = wild[:, None]
                em.copy_(torch.where(w, torch.where(again, old_emitted, free), em))
                psi[:n] = torch.where(wild, psi[:n], _logsumexp(e))
                e.copy_(torch.where(w, torch.where(again, old_entry, NEG), e))
                last[:n] = torch.where(wild, torch.where(prev == -1, -1, _AFTER_WILDCARD), c)
            if keep_rows is not None and keep_rows[j]:
                here = torch.tensor(keep_rows[j], device=device)
                kept.emitted[here], kept.entry[here] = emitted[here], entry[here]
                kept.last[here], kept.psi[here] = last[here], psi[here]
            if j + 1 in checks and j + 1 < width:
                running = active[j + 1]
                if running < scored:  # the rows finished since the last check: their prefix scores
                    psi[running:scored] = _logsumexp(entry[running:scored])
                    scored = running
                self._rule_out(cutoff, entry, psi, running, dead)
                if bool(dead[:running].all()):
                    break
        if not wildcards:  # psi = logsumexp(entry) of every row with a target not scored yet
            psi[:scored] = _logsumexp(entry[:scored])
            if keep_rows is not None:
                some = torch.tensor(
                    [row for rows in keep_rows for row in rows], dtype=torch.long, device=device
                )
                kept.psi[some] = _logsumexp(kept.entry[some])
        if dead is not None:
            psi[dead] = -math.inf
        out = CTCStates(emitted, entry, last, psi, clip)
        if inverse is None:
            return out, kept
        return out.take(inverse), (None if kept is None else kept.take(inverse))

    @staticmethod
    def _emitted(entry, y, blank_cum, out, scan) -> None:
        """Writes to `out` (n, T) `emitted` of prefixes whose last label (log-probabilities `y`) has `entry`;
        `scan`: room for (n, T) at least."""
        cum = torch.cumsum(y, 1)
        s = scan[: len(entry)]
        torch.sub(entry, cum, out=s)
        torch.logcumsumexp(s, 1, out=s)
        s += cum  # the prefix by frame t, ending in the label
        s -= blank_cum
        torch.logcumsumexp(s, 1, out=out)
        out += blank_cum

    def finish(self, states: CTCStates, rows: Sequence[int]) -> None:
        """Completes in place `emitted` of the rows that `extend(defer=True)` left unfinished (from their entries
        and last label: the values `extend` would have written)."""
        if not rows:
            return
        index = torch.as_tensor(rows, dtype=torch.long, device=states.emitted.device)
        clip = states.clip[index]
        y = self.label_rows[clip, states.last[index]]
        out = torch.empty_like(y)
        self._emitted(states.entry[index], y, self.blank_cum[clip], out, torch.empty_like(y))
        states.emitted[index] = out

    @staticmethod
    def _rule_out(cutoff: Cutoff, entry, psi, running: int, dead: torch.Tensor) -> None:
        """Marks in `dead` `extend`'s rows (its order, `cutoff` taken in it) that `cutoff` rules out once the
        first `running` are still being extended (the rest are finished: their prefix scores `psi` are final)."""
        finished, margin = len(psi) - running, math.isfinite(cutoff.margin)
        if finished < (1 if margin else cutoff.beam) and bool(torch.isinf(cutoff.floor).all()):
            return  # no floor yet
        now = torch.cat([_logsumexp(entry[:running]), psi[running:]])
        rank = cutoff.offset + cutoff.weight * now.double()
        floor = cutoff.floor
        if finished >= cutoff.beam or (margin and finished):  # from each group's finished ranks that count
            counted = torch.where(cutoff.counts, rank, -math.inf)
            counted[:running] = -math.inf
            table = counted.new_full((len(floor), len(rank)), -math.inf)
            table[cutoff.group, torch.arange(len(rank), device=rank.device)] = counted
            if finished >= cutoff.beam:  # the beam-th best
                floor = torch.maximum(floor, table.topk(cutoff.beam, 1).values[:, -1])
            if margin:  # the best, less the margin
                floor = torch.maximum(floor, table.amax(1) - cutoff.margin)
        below = rank[:running] < floor[cutoff.group[:running]] - CUTOFF_MARGIN
        dead[:running] |= cutoff.prunable[:running] & below


# ---- LLM steps for many hypotheses per clip ---------------------------------------------------------------------
class _BeamLM:
    """The LLM's decoding steps for `slots` hypotheses per clip. Llama-family models (what `_LeanDecoder` supports)
    hold, per slot, one key/value buffer per layer: the clip's prompt, copied in once, then the slot's own tokens;
    as the beam changes a slot's own tokens are copied from its parent slot (the prompt part never moves), and a
    step is one `scaled_dot_product_attention` per layer over the prompt and the slot's tokens. Other models run
    their own forward over a cache that repeats the prompt per slot.

    `prompt_kv`: per layer (keys, values) (B, H_kv, P, d) of the B clips' prompts (left padded); `prompt_mask`
    (B, P): their real positions; `next_position` (B,): the position of each clip's first new token."""

    def __init__(self, lm, prompt_kv, prompt_mask, next_position, slots: int, capacity: int):
        self.lm, self.slots, self.length = lm, slots, 0
        self.prompt_length = prompt_mask.shape[1]
        self.next_position = next_position
        self.lean = _LeanDecoder.supports(lm)
        rows_mask = prompt_mask.bool().repeat_interleave(slots, 0)  # (B * S, P)
        if self.lean:
            self.rope = sys.modules[type(lm.layers[0].self_attn).__module__].apply_rotary_pos_emb
            p = self.prompt_length
            # every layer's keys and values in one buffer (layers, 2, rows, H_kv, positions, d): a step moves the
            # slots' own tokens from their parents in one copy
            first = prompt_kv[0][0]
            self.kv = first.new_empty(
                len(prompt_kv), 2, first.shape[0] * slots, first.shape[1], p + capacity, first.shape[3]
            )
            for layer, pair in zip(self.kv, prompt_kv):
                for buf, src in zip(layer, pair):
                    buf[:, :, :p] = src.repeat_interleave(slots, 0)
            # (B * S, 1, 1, P + capacity) boolean key mask; None when no prompt is padded (the unmasked SDPA path)
            self.mask = None
            if not bool(rows_mask.all()):
                self.mask = rows_mask.new_ones(rows_mask.shape[0], 1, 1, p + capacity)
                self.mask[:, 0, 0, :p] = rows_mask
        else:
            self.cache = DynamicCache(config=lm.config)
            for i, (keys, values) in enumerate(prompt_kv):
                self.cache.update(keys.repeat_interleave(slots, 0), values.repeat_interleave(slots, 0), i)
            self.mask = rows_mask.long()

    @property
    def clips(self) -> int:
        return self.next_position.shape[0]

    def keep_clips(self, keep: torch.Tensor) -> None:
        """Drop the clips not in `keep` (indices into the current clips, ascending)."""
        rows = (keep[:, None] * self.slots + torch.arange(self.slots, device=keep.device)).reshape(-1)
        self.next_position = self.next_position[keep]
        if self.mask is not None:
            self.mask = self.mask[rows]
        if self.lean:  # in place, the filled positions only: each kept clip's slots move down to their place
            filled, s = self.prompt_length + self.length, self.slots
            for new, old in enumerate(keep.tolist()):  # in order: no block is written before it has moved
                if new != old:
                    source = self.kv[:, :, old * s : (old + 1) * s, :, :filled]
                    self.kv[:, :, new * s : (new + 1) * s, :, :filled] = source
            self.kv = self.kv[:, :, : len(rows)]
        else:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[rows], layer.values[rows]

    def step(self, embeds: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Hidden states (clips * slots, E) after one token per slot (`embeds` (clips * slots, E)); `parents`
        (clips * slots,): the slot (row) whose earlier tokens each slot continues."""
        n = self.length
        positions = (self.next_position.repeat_interleave(self.slots) + n)[:, None]  # (N, 1)
        if not self.lean:
            if n:
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[parents], layer.values[parents]
                self.mask = self.mask[parents]
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], 1)
            out = self.lm(
                inputs_embeds=embeds[:, None],
                attention_mask=self.mask,
                position_ids=positions,
                cache=self.cache,
                use_cache=True,
            )
            self.length += 1
            return out.last_hidden_state[:, -1]
        lm, norm, p = self.lm, _LeanDecoder._norm, self.prompt_length
        at = p + n  # this token's place in the buffers
        if at == self.kv.shape[4]:  # full: room for as many own tokens again
            self.kv = torch.cat([self.kv, torch.empty_like(self.kv[..., p:, :])], 4)
            if self.mask is not None:
                self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask[..., p:].shape)], -1)
        mask = None if self.mask is None else self.mask[..., : at + 1]
        hidden = embeds[:, None]  # (N, 1, E)
        cos, sin = lm.rotary_emb(hidden, positions)
        if n:  # each slot continues its parent's tokens
            self.kv[:, :, :, :, p:at] = self.kv[:, :, parents, :, p:at]
        for layer, (keys, values) in zip(lm.layers, self.kv):
            q, k, v = _LeanDecoder.project(layer, norm(layer.input_layernorm, hidden), cos, sin, self.rope)
            # q: (N, H, 1, d); k, v: (N, H_kv, 1, d)
            keys[:, :, at], values[:, :, at] = k[:, :, 0], v[:, :, 0]
            out = F.scaled_dot_product_attention(
                q,
                keys[:, :, : at + 1],
                values[:, :, : at + 1],
                attn_mask=mask,
                scale=layer.self_attn.scaling,
                enable_gqa=True,
            )
            hidden = _LeanDecoder.finish(layer, hidden, out.transpose(1, 2).reshape(hidden.shape[0], 1, -1))
        self.length = n + 1
        return norm(lm.norm, hidden)[:, 0]


# ---- joint CTC / LLM beam search ------------------------------------------------------------------------------
_TOKEN_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _token_caches(tokenizer) -> dict:
    """Per tokenizer: token -> the text it adds, whether the CTC head hears it, how it extends a transcript."""
    caches = _TOKEN_CACHES.get(tokenizer)
    if caches is None:
        caches = _TOKEN_CACHES[tokenizer] = {"pieces": {}, "heard": {}, "kinds": {}, "tails": {}}
    return caches


def _anchor(tokenizer) -> list[int]:
    caches = _token_caches(tokenizer)
    if "anchor" not in caches:
        caches["anchor"] = tokenizer("a", add_special_tokens=False)["input_ids"]
    return caches["anchor"]


REPLACEMENT = "\ufffd"  # what a byte-level token that ends inside a character decodes to
_WORD_PIECE = re.compile(r"( ?)([A-Za-z0-9]+)")  # a token that starts or continues one word
_HANZI_PIECE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff]+")  # Hanzi that normalisation leaves as they are
FIRST_CHUNK = 8  # per hypothesis of the beam: extensions scored per clip in a step's first round
MAX_ONSETS = 4  # a Hanzi whose readings begin with more phonemes than this is not read ahead
MAX_STALLED = 3  # tokens in a row that add nothing the CTC head scores: the bytes of one 4-byte character
STOP_SLACK_UNITS = 2  # the stop assumes a live hypothesis gains at most this many more units' bonus
MAX_TAILS = 100_000  # decoded byte-token tails kept per tokenizer (`JointSearch._decode_after`)


def _flat(units) -> tuple[int, ...]:
    """The target ids of consecutive units, as one sequence."""
    return tuple(itertools.chain.from_iterable(units))


@dataclass
class _Extension:
    """A hypothesis extended by one token, as it is scored: `targets` extend its committed CTC state (`from_start`:
    the initial state), the first `len(new)` of them being the units it completes."""

    clip: int
    hyp: "_Hyp"
    token: int
    lm: float
    text: str
    spoken: tuple
    stalled: int
    units: int = 0
    new: tuple = ()
    targets: tuple = ()
    from_start: bool = False
    unit_targets: tuple = ()
    source: int = 0  # the row of the state `targets` extend
    keep: int = 0  # after this many of them: the state with the units it completes
    rest: tuple = ()  # the targets of the unit being written
    unspelled: bool = False  # scored from its token's labels alone (`JointSearch._unspelled`)


@dataclass
class _Hyp:
    tokens: list[int]
    lm: float  # the LLM's log-probability of the tokens
    psi: float  # CTC prefix score of the committed units
    units: int  # units committed to the CTC state
    committed: tuple[int, ...]  # their target ids
    score: float  # ranking score
    text: str  # the transcript so far, without a character whose bytes are still to come
    spoken: tuple  # (units, whether it ends in a space, whether it ends inside a character)
    stalled: int = 0  # tokens in a row that added nothing to it
    row: int = 0  # its row in the step's CTC states
    slot: int = 0  # its LLM slot
    unit_targets: tuple = ()  # the target ids of each unit of `spoken` (the last one as written so far)
    rest: tuple = ()  # the targets of the unit being written, which it was ranked with after the committed ones
    ranked_row: int = 0  # the CTC state after them, its row in the step's CTC states
    unspelled: tuple | None = None  # (parent, targets, keep, source) while not spelled (`_spell_kept`)
    # inside a character: the tokens since the last hypothesis before it that ended with a whole character, and
    # that one's text (`before_open`)
    open_tokens: tuple[int, ...] = ()
    open_text: str = ""

    @property
    def before_open(self) -> str:
        """The text before the character it is inside (`JointSearch._decode_after`): its own when it is in none."""
        return self.open_text if self.open_tokens else self.text

    @property
    def units_written(self) -> int:
        return len(self.spoken[0])

    @property
    def pending(self) -> bool:
        return bool(self.spoken[2])

    @functools.cached_property
    def mandarin(self) -> bool:
        """Whether it holds a Hanzi (its digits are then read as Mandarin numerals)."""
        return any(map(is_hanzi, self.spoken[0]))

    @functools.cached_property
    def hanzi_tail(self) -> int:
        """Where the run of Hanzi that ends its units begins (the number of units when it ends in none)."""
        units = self.spoken[0]
        start = len(units)
        while start > 0 and is_hanzi(units[start - 1]):
            start -= 1
        return start


class JointSearch:
    """Joint CTC / LLM beam search over a batch of clips: the LLM proposes each hypothesis's `ctc_candidates`
    most likely next tokens; an extension is ranked by `(1 - ctc_weight) * LLM log-probability + ctc_weight *
    CTC prefix log-probability + unit_bonus * units written`. The CTC part is the probability under the CTC head
    that the transcript so far is how the audio begins; the unit bonus (per word, Hanzi or digit string)
    offsets both log-probabilities falling with every token, which otherwise lets short hypotheses the LLM likes
    crowd out longer ones the audio supports. A finished hypothesis is scored with the full CTC probability of
    its transcript, so one that drops or adds words loses however likely the LLM finds it.

    The CTC head hears phonemes (or characters), not the LLM's tokens: a transcript is spelled unit by unit
    (`CTCTargets`), and a unit enters the CTC state once it is complete (a Hanzi at once, a word when the next one
    starts or the transcript ends); the word still being written ranks its hypothesis with the targets of its
    letters so far. A token that would put something the CTC head cannot score into the transcript
    (punctuation, symbols, another script) is not taken, so transcripts come out unpunctuated (scoring normalises
    them anyway). At most half of the beam may end inside a character whose last bytes are still to come.

    All clips and their hypotheses advance together: one LLM step for every hypothesis of every clip
    (`_BeamLM`), one batched CTC extension for every extension scored (`CTCPrefixScorer`). A prefix's CTC
    probability only falls as it grows, so an extension's score is bounded by its LLM part and its hypothesis's
    CTC score; for a token that begins a word or Hanzi, by the CTC score of the hypothesis followed by the first
    phoneme that unit can start with, read for all proposals at once before any is spelled (`_bounds`).
    Extensions are scored best bound first, a chunk at a time, until the beam is full of hypotheses no
    remaining bound can beat: the bounds only skip work, never change the result. A token whose labels the
    lookahead knows (one that begins a unit, or goes on the word being written) is scored from them
    (`_unspelled`), its text spelled only if the beam keeps it; and a round's CTC extension stops once every
    row still being extended ranks below its clip's beam (`Cutoff`); the scans of an extension's last label wait
    until it is known to go on (`extend`'s `defer`)."""

    lookahead = True  # bound extensions by reading a label ahead (False: by the committed score; same result)
    decode_tails = True  # byte tokens decoded after the last whole character (False: whole; same result)
    prune_children = True  # hypotheses made only of extensions `_select` could keep (False: all; same result)
    margin_floors = True  # skip what falls below `beam_margin` early (False: in `_select` only; same result)
    defer_scans = True  # a last label's scans only for what goes on (False: for every extension; same result)

    def __init__(self, model, tokenizer, targets: CTCTargets, options: DecodingOptions):
        self.model, self.tokenizer, self.targets, self.options = model, tokenizer, targets, options
        self.weight, self.bonus = options.ctc_weight, options.unit_bonus
        self.scored = 0  # extensions scored (how much work the search did)
        self.beam, self.candidates = options.beam_size, options.ctc_candidates
        self.margin = math.inf if options.beam_margin is None else options.beam_margin
        eos = model.generation_config.eos_token_id
        self.eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.eos = self.eos_ids[0]
        if self.eos is None:
            raise ValueError("the model's generation config has no eos_token_id")
        caches = _token_caches(tokenizer)
        self._pieces, self._unspoken = caches["pieces"], caches["heard"]
        self._kinds, self._tails = caches["kinds"], caches["tails"]
        self._spelled: dict[tuple, tuple | None] = {}  # `CTCTargets.targets` of this search's texts

    # ---- text of a hypothesis -----------------------------------------------------------------------------
    def _piece(self, token: int) -> str | None:
        """The text `token` adds after whole characters (None: part of a character's bytes)."""
        piece = self._pieces.get(token, ...)
        if piece is ...:
            piece = self._after_anchor([token])
            piece = None if piece is None or REPLACEMENT in piece else piece
            self._pieces[token] = piece
        return piece

    def _after_anchor(self, tokens: list[int]) -> str | None:
        """The text `tokens` add after a plain letter (so a leading space is kept), as the tokenizer decodes them;
        None where the letter does not come back first."""
        ids = _anchor(self.tokenizer)
        anchor = self.tokenizer.decode(ids, skip_special_tokens=True)
        text = self.tokenizer.decode(ids + tokens, skip_special_tokens=True)
        return text[len(anchor) :] if text.startswith(anchor) else None

    def _decode_after(self, hyp: _Hyp, token: int) -> str:
        """The text of `hyp` followed by `token`, a token that is not whole characters, as the tokenizer decodes
        the whole: the text before its open character (`_Hyp.before_open`) and the tokens since, decoded after a
        plain letter (a byte-level text splits into independent parts at every character boundary; the same tails
        recur across hypotheses and steps, so they are cached). At the transcript's start the tokenizer decodes
        the tokens themselves (it may drop a leading space there)."""
        before = hyp.before_open
        if self.decode_tails and before:
            tail = (*hyp.open_tokens, token)
            added = self._tails.get(tail, ...)
            if added is ...:
                added = self._after_anchor(list(tail))
                if len(self._tails) >= MAX_TAILS:
                    self._tails.clear()
                self._tails[tail] = added
            if added is not None:
                return before + added
        return self.tokenizer.decode(hyp.tokens + [token], skip_special_tokens=True)

    def _most_units(self, token: int) -> int:
        """The most units `token` can add to a transcript: its own, and one more it completes."""
        return len(split_units(self.tokenizer.decode([token]))) + 1

    def _piece_kind(self, token: int, piece: str) -> tuple | None:
        """How a whole-character token's text extends a transcript, when the spelling can follow it unit by unit:
        ("word", leading space, letters) or ("hanzi", characters); None for anything else (cached)."""
        kind = self._kinds.get(token, ...)
        if kind is ...:
            word = _WORD_PIECE.fullmatch(piece)
            if word is not None and piece.isascii():
                kind = ("word", bool(word.group(1)), word.group(2).lower())
            elif _HANZI_PIECE.fullmatch(piece):
                kind = ("hanzi", piece)
            else:
                kind = None
            self._kinds[token] = kind
        return kind

    def _spell_after(self, hyp: _Hyp, kind: tuple):
        """`_split` of `hyp` extended by a piece of `kind`, from the hypothesis's own units and targets (what
        spelling the whole text again gives, at a fraction of the cost); None where that is not simple."""
        units, targets = hyp.spoken[0], hyp.unit_targets
        if len(targets) != len(units) or self.targets.characters:
            return None
        spaced = hyp.spoken[1]
        open_word = bool(units) and not spaced and not is_hanzi(units[-1])
        if open_word and not hyp.text.lower().endswith(units[-1]):
            return (
                None  # the text ends in something the unit leaves out (an apostrophe): the whole text decides
            )
        mandarin = hyp.mandarin or kind[0] == "hanzi"
        if open_word and units[-1].isdigit() and mandarin:
            return None  # digits read as Mandarin: the whole text decides
        word = self.targets.word
        if kind[0] == "word":
            _, space, letters = kind
            if (letters.isdigit() or (open_word and not space and units[-1].isdigit())) and mandarin:
                return None
            if open_word and not space:  # the word being written goes on
                new_units = units[:-1] + (units[-1] + letters,)
                new_targets = targets[:-1] + (word(units[-1] + letters, mandarin, True),)
            else:
                if open_word:  # a space ends it: read whole
                    targets = targets[:-1] + (word(units[-1], mandarin, False),)
                new_units, new_targets = units + (letters,), targets + (word(letters, mandarin, True),)
            return len(new_units) - 1, new_targets, new_units
        chars = kind[1]
        if open_word:
            targets = targets[:-1] + (word(units[-1], mandarin, False),)
        # the Hanzi already written right before these are read with them
        run_start = len(units) if spaced else hyp.hanzi_tail
        run = self.targets.hanzi(units[run_start:] + tuple(chars))
        if run is None:
            return None
        new_units = units + tuple(chars)
        return len(new_units), targets[:run_start] + run, new_units

    def _spell(self, hyp: _Hyp, token: int):
        """(text, units complete, targets per unit, spoken) of `hyp` extended by `token` (EOS: as it stands,
        complete), or None for an extension that cannot be part of a transcript."""
        end = token == self.eos
        if end:
            if hyp.pending:
                return None
            body, inside = hyp.text, False
        else:
            piece = self._piece(token)
            if hyp.pending and piece is not None:  # only the bytes that finish its character can follow
                return None
            if piece is not None:
                heard = self._unspoken.get(token)
                if heard is None:  # whether the CTC head can hear all of it
                    heard = self._unspoken[token] = not unspoken(piece)
                if not heard:
                    return None
                body, inside = hyp.text + piece, False
                kind = self._piece_kind(token, piece)
            else:
                text = self._decode_after(hyp, token)
                inside = text.endswith(REPLACEMENT)
                body = text[:-1] if inside else text
                if REPLACEMENT in body or unspoken(body):
                    return None
                added = body[len(hyp.text) :] if body.startswith(hyp.text) else ""
                kind = ("hanzi", added) if _HANZI_PIECE.fullmatch(added) else None  # bytes that finish Hanzi
            fast = None if kind is None else self._spell_after(hyp, kind)
            if fast is not None:
                complete, targets, units = fast
                return body, complete, list(targets), (units, False, inside)
        open_word = not end and not body[-1:].isspace()
        key = (body, open_word)  # the bytes of a character, one token at a time, leave the text as it was
        if key not in self._spelled:
            self._spelled[key] = self.targets.targets(body, partial=open_word)
        spelled = self._spelled[key]
        if spelled is None:
            return None
        units, targets = spelled
        complete = len(units)
        if open_word and units and not is_hanzi(units[-1]):  # a word or number may go on in the next token
            complete -= 1
        return body, complete, targets, (tuple(units), body[-1:].isspace(), inside)

    def _rank(self, lm: float, ctc: float, units: int) -> float:
        return (1.0 - self.weight) * lm + self.weight * ctc + self.bonus * units

    def _reference(self, hyps: Iterable[_Hyp]) -> float:
        """What `beam_margin` measures from: the best score of hypotheses that end with a whole character."""
        return max((h.score for h in hyps if not h.pending), default=-math.inf)

    def _select(self, ranked: list[_Hyp]) -> list[_Hyp]:
        """The beam from hypotheses best first: at most `beam_size`, none more than `beam_margin` below the best
        that ends with a whole character; at most half of it may end inside a character (those are ranked
        without the character they will be, so they would crowd out the rest)."""
        beam, open_chars = [], 0
        lowest = self._reference(ranked) - self.margin
        for hyp in ranked:
            if len(beam) == self.beam or hyp.score < lowest:
                break
            if hyp.pending and open_chars >= self.beam // 2:  # none with a beam of one
                continue
            open_chars += hyp.pending
            beam.append(hyp)
        return beam

    # ---- reading one label ahead -------------------------------------------------------------------------
    def _token_info(self, token: int) -> tuple[int, bool, bool, int, tuple[int, ...]]:
        """What the search knows of a token before spelling it (`_token_table` keeps it): the most units it can add (`_most_units`),
        whether it is whole characters, and for a letters-only word piece or Hanzi: whether it begins a unit
        after any text (a spaced word or Hanzi does), the units it writes when it begins one, and the labels
        the first can start with (`MAX_ONSETS`, padded with -1; none for other tokens)."""
        piece = None if token == self.eos else self._piece(token)
        kind = None if piece is None else self._piece_kind(token, piece)
        labels = None if kind is None else self.targets.onsets(kind)
        most = self._most_units(token)
        if labels is None or len(labels) > MAX_ONSETS:
            return (most, piece is not None, False, 0, (-1,) * MAX_ONSETS)
        labels += (-1,) * (MAX_ONSETS - len(labels))
        begins, adds = (True, len(kind[1])) if kind[0] == "hanzi" else (kind[1], 1)
        return (most, True, begins, adds, labels)

    def _token_table(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """`_token_info` of every token as tensors indexed by token id, filled for `tokens` (held by the targets)."""
        table = self.targets.token_table
        size = int(tokens.max()) + 1
        if not table or table["known"].numel() < size:
            old, size = table, max(size, 2 * (table["known"].numel() if table else 0))
            table = {
                "known": torch.zeros(size, dtype=torch.bool),
                "most": torch.zeros(size, dtype=torch.float64),
                "whole": torch.zeros(size, dtype=torch.bool),
                "begins": torch.zeros(size, dtype=torch.bool),
                "adds": torch.zeros(size, dtype=torch.float64),
                "labels": torch.full((size, MAX_ONSETS), -1, dtype=torch.long),
            }
            for name, values in (old or {}).items():
                table[name][: len(values)] = values
            self.targets.token_table = table
        unknown = ~table["known"][tokens]
        new = tokens[unknown].unique().tolist() if bool(unknown.any()) else []  # (most calls: none)
        if new:
            index = torch.tensor(new)
            most, whole, begins, adds, labels = zip(*map(self._token_info, new))
            table["most"][index] = torch.tensor(most, dtype=torch.float64)
            table["whole"][index], table["begins"][index] = torch.tensor(whole), torch.tensor(begins)
            table["adds"][index] = torch.tensor(adds, dtype=torch.float64)
            table["labels"][index] = torch.tensor(labels, dtype=torch.long)
            table["known"][index] = True
        return table

    def _reads_ahead(self, hyp: _Hyp) -> int:
        """Which of `hyp`'s extensions are known to begin a unit right after the targets it was ranked with: 2
        every letters-only word piece and Hanzi, 1 spaced ones and Hanzi (the word being written, read whole,
        gives the targets it was ranked with; an unspaced piece continues it), 0 none without spelling."""
        units = hyp.spoken[0]
        if hyp.pending or self.targets.characters or len(hyp.unit_targets) != len(units):
            return 0
        if not units or hyp.spoken[1] or is_hanzi(units[-1]):
            return 2 if not hyp.rest and hyp.units == len(units) else 0
        word = units[-1]
        if hyp.units != len(units) - 1 or not word.isalpha() or not hyp.text.lower().endswith(word):
            return 0
        return 1 if self.targets.word(word, False, False) == hyp.rest else 0

    def _bounds(self, scorer: CTCPrefixScorer, states: CTCStates, rows: list[_Hyp], tokens: torch.Tensor):
        """Bounds of what each row's hypothesis reaches with each of its proposed tokens (R, K): the CTC prefix
        score and the units written (float64; -inf: the token cannot follow). By default its committed units'
        score and the most units a token can add. For a token known to begin a unit: the score of the targets
        it was ranked with followed by the first label that unit can have (`CTCPrefixScorer.peek`, one tensor
        operation for all), and the units it writes; for one known to continue the word being written, no unit
        more. The first labels a token adds decide most of how far the audio lets it fall."""
        width = tokens.shape[1]
        table = self._token_table(tokens)
        per_row = torch.tensor(
            [(h.units_written, h.psi, h.pending, self._reads_ahead(h)) for h in rows], dtype=torch.float64
        )
        written = per_row[:, :1]
        units = written + table["most"][tokens]
        bounds = per_row[:, 1:2].repeat(1, width)
        after_wildcard = [r for r, h in enumerate(rows) if h.committed[-1:] == (WILDCARD,)]
        if after_wildcard:  # the next label may score above the prefix (`CTCPrefixScorer.peek_any`)
            state_rows = torch.tensor([rows[r].row for r in after_wildcard], device=states.emitted.device)
            rise = scorer.peek_any(states, state_rows).double().cpu()[:, None]
            index = torch.tensor(after_wildcard)
            bounds[index] = torch.maximum(bounds[index], rise)
        pending = per_row[:, 2:3].bool()
        # a hypothesis inside a character: only the bytes that finish it can follow (see `_spell`)
        bounds[pending & (table["whole"][tokens] | (tokens == self.eos))] = -math.inf
        if not self.lookahead:
            return bounds, units, torch.zeros(tokens.shape, dtype=torch.long)
        first = table["labels"][tokens]  # (R, K, MAX_ONSETS)
        mode = per_row[:, 3:].long()
        known, begin = first[..., 0] >= 0, table["begins"][tokens]
        goes_on = known & (mode == 1) & ~begin  # it continues the word being written
        units = torch.where(goes_on, written, units)
        ahead = known & ((mode == 2) | ((mode == 1) & begin))
        reads = ahead.long() + 2 * goes_on.long()  # how `_unspelled` can score it
        if not bool(ahead.any()):
            return bounds, units, reads
        units = torch.where(ahead, written + table["adds"][tokens], units)
        r, k = ahead.nonzero(as_tuple=True)
        state_rows = torch.tensor([h.ranked_row for h in rows])[r][:, None].expand(-1, MAX_ONSETS)
        wanted = first[r, k]  # (n, L)
        valid = wanted >= 0
        span = int(wanted.max()) + 1
        pairs, which = torch.unique(state_rows[valid] * span + wanted[valid], return_inverse=True)
        device = states.emitted.device
        peeked = scorer.peek(states, (pairs // span).to(device), (pairs % span).to(device)).double().cpu()
        best = torch.full(wanted.shape, -math.inf, dtype=torch.float64)
        best[valid] = peeked[which]
        bounds[r, k] = torch.minimum(best.amax(1), bounds[r, k])
        return bounds, units, reads

    # ---- scoring a step's extensions ----------------------------------------------------------------------
    def _extension(self, clip: int, hyp: _Hyp, token: int, lm: float) -> _Extension | None:
        """`hyp` extended by `token` as the CTC head will score it, or None for one that cannot be taken."""
        spelled = self._spell(hyp, token)
        if spelled is None:
            return None
        text, complete, targets, spoken = spelled
        stalled = 0 if spoken != hyp.spoken else hyp.stalled + 1
        if token != self.eos and stalled > MAX_STALLED:
            return None
        if not all(map(self.targets.heard, targets[hyp.units :])):
            return None  # a unit the CTC head has no symbol for: nothing would check it
        ext = _Extension(clip, hyp, token, lm, text, spoken, stalled, unit_targets=tuple(targets))
        if token == self.eos:
            # the whole transcript spelled again (a later Hanzi can change an earlier one's reading): from the
            # state it was ranked with, or the committed one, when their targets still begin it
            whole, n = _flat(targets), len(hyp.committed)
            if whole[:n] == hyp.committed:
                if whole[n : n + len(hyp.rest)] == hyp.rest:
                    ext.targets, ext.source = whole[n + len(hyp.rest) :], hyp.ranked_row
                else:
                    ext.targets, ext.source = whole[n:], hyp.row
            else:
                ext.targets, ext.from_start = whole, True
            return ext
        units = max(complete, hyp.units)  # a unit once complete stays in the state
        ext.units, ext.new = units, _flat(targets[hyp.units : units])
        ext.rest = _flat(targets[units:])  # the unit being written only ranks the hypothesis
        # most tokens add to what the hypothesis was ranked with: extend that state by what they add
        added, done = ext.new + ext.rest, len(hyp.rest)
        if len(ext.new) >= done and added[:done] == hyp.rest:
            ext.targets, ext.keep, ext.source = added[done:], len(ext.new) - done, hyp.ranked_row
        else:
            ext.targets, ext.keep, ext.source = added, len(ext.new), hyp.row
        return ext

    def _unspelled(self, clip: int, hyp: _Hyp, token: int, lm: float, how: int) -> _Extension | None:
        """`hyp` extended by `token` as `_extension` would give it, without spelling the text, where `_bounds`
        found what the token adds right after the targets `hyp` was ranked with (`how`): 1, it begins a unit
        whose labels are the token's own (`CTCTargets.unit_labels`: a word piece, or Hanzi after anything but a
        Hanzi or when each of its characters has one reading); 2, a word piece that goes on the word being
        written, whose labels are the longer word's. Most extensions are never kept, so their text is spelled
        only when one is (`_spell_kept`). None: spell it now."""
        cache = self.targets.token_labels
        known = cache.get(token, ...)
        if known is ...:
            piece = self._piece(token)
            kind = None if piece is None else self._piece_kind(token, piece)
            labels = None if kind is None else self.targets.unit_labels(kind)
            known = cache[token] = None if labels is None else (*labels, kind)
        if known is None:
            return None
        labels, fixed, kind = known
        units = hyp.spoken[0]
        if (
            how == 2
        ):  # the word being written, longer: from the state before it (the ranked one read it whole)
            labels = self.targets.word(units[-1] + kind[2], False, True)
            if WILDCARD in labels:
                return None
            added, source, keep = 0, hyp.row, 0
        elif kind[0] == "hanzi":
            if not fixed and units and not hyp.spoken[1] and is_hanzi(units[-1]):
                return None  # the run it goes on can read it otherwise
            added, source, keep = len(kind[1]), hyp.ranked_row, len(labels)
        else:
            added, source, keep = 1, hyp.ranked_row, 0
        ext = _Extension(clip, hyp, token, lm, "", ((None,) * (len(units) + added), False, False), 0)
        ext.targets, ext.source, ext.keep, ext.unspelled = labels, source, keep, True
        return ext

    def _spell_kept(self, hyp: _Hyp) -> bool:
        """Fills in what `_unspelled` left out of a hypothesis the beam keeps, from spelling it (its score and
        CTC states are those of the targets the spelling gives: checked). False: it cannot be spelled after all."""
        parent, targets, keep, source = hyp.unspelled
        ext = self._extension(0, parent, hyp.tokens[-1], hyp.lm)
        if ext is None or (ext.targets, ext.keep, ext.source) != (targets, keep, source):
            logger.warning_once(
                f"joint search: the labels of {self._piece(hyp.tokens[-1])!r} after {parent.text!r} are not "
                "what spelling it gives; a transcript may differ from one spelled throughout"
            )
        if ext is None:
            return False
        hyp.units, hyp.committed, hyp.text, hyp.spoken = (
            ext.units,
            parent.committed + ext.new,
            ext.text,
            ext.spoken,
        )
        hyp.stalled, hyp.unit_targets, hyp.rest, hyp.unspelled = ext.stalled, ext.unit_targets, ext.rest, None
        return True

    def _score(
        self, scorer: CTCPrefixScorer, states: CTCStates, proposals: dict, chunk: int, prune: bool = True
    ):
        """Scores each clip's proposals ((hyp, token, lm) best bound first, and their bounds), a chunk per clip per
        round (`chunk` first, twice the last after), until its beam is full of hypotheses no remaining bound can
        beat; finished ones go to `self.finished`. Returns each clip's live extensions (`prune`: only those
        `_select` could keep) and their committed CTC states (`_Hyp.row`)."""
        live: dict[int, list[_Hyp]] = {c: [] for c in proposals}
        pointer = dict.fromkeys(proposals, 0)
        size = dict.fromkeys(proposals, chunk)
        kept: list[CTCStates] = []
        count = 0
        groups = {c: g for g, c in enumerate(proposals)}
        floors = dict.fromkeys(proposals, -math.inf)  # each clip's floor when its round began
        while True:
            batch: list[_Extension] = []
            taken = False  # a chunk was taken (all of it may have been refused)
            for c, (items, bounds) in proposals.items():
                start = pointer[c]
                if start >= len(items):
                    continue
                floor = -math.inf  # what an extension must be able to beat to be scored
                if len(live[c]) >= self.beam:
                    live[c] = self._select(sorted(live[c], key=lambda h: -h.score))
                    if len(live[c]) == self.beam:
                        floor = live[c][-1].score
                if self.margin_floors and self.margin < math.inf and live[c]:  # ties with the margin are kept
                    floor = max(floor, math.nextafter(self._reference(live[c]) - self.margin, -math.inf))
                if floor >= bounds[start]:
                    pointer[c] = len(items)
                    continue
                end = min(start + size[c], len(items))
                while end > start + 1 and bounds[end - 1] <= floor:  # best bound first: the rest cannot win
                    end -= 1
                pointer[c], size[c], taken = end, 2 * size[c], True
                floors[c] = floor
                self.scored += end - start
                for hyp, token, lm, how in items[start:end]:
                    ext = (how and self._unspelled(c, hyp, token, lm, how)) or self._extension(
                        c, hyp, token, lm
                    )
                    if ext is not None:
                        batch.append(ext)
            if not taken:
                break
            again = [e for e in batch if e.from_start]
            onward = [e for e in batch if not e.from_start]
            deferring = self.defer_scans and not any(WILDCARD in e.targets for e in onward)
            # `extend` works its rows longest first: given so, its states need no reordering; `at[i]`: the row
            # of onward[i]
            by_length = sorted(range(len(onward)), key=lambda i: -len(onward[i].targets))
            at = [0] * len(onward)
            for row, i in enumerate(by_length):
                at[i] = row
            longest_first = [onward[i] for i in by_length]
            ranked, committed = scorer.extend(
                states,
                [e.targets for e in longest_first],
                [e.keep for e in longest_first],
                self._cutoff(longest_first, groups, floors, states.emitted.device),
                [e.source for e in longest_first],
                defer=deferring,
            )
            psi, committed_psi = ranked.psi.tolist(), committed.psi.tolist()
            psi, committed_psi = [psi[row] for row in at], [committed_psi[row] for row in at]
            scores = [self._rank(e.lm, psi[i], len(e.spoken[0])) for i, e in enumerate(onward)]
            lowest = self._could_enter(onward, scores, live, prune)
            goes_on = [
                e.token == self.eos or scores[i] >= lowest[e.clip][e.spoken[2]] for i, e in enumerate(onward)
            ]  # it ends a transcript, or makes a hypothesis
            if deferring:  # what `extend` left out of those with targets
                scorer.finish(ranked, [at[i] for i, e in enumerate(onward) if goes_on[i] and e.targets])
            finals = scorer.final(ranked).tolist()
            finals = [finals[row] for row in at]
            if again:
                whole, _ = scorer.extend(scorer.initial([e.clip for e in again]), [e.targets for e in again])
                for e, final in zip(again, scorer.final(whole).tolist()):
                    self.finished[e.clip].append((self._rank(e.lm, final, len(e.spoken[0])), e.hyp.tokens))
            rows = []
            for i, e in enumerate(onward):
                units_written = len(e.spoken[0])
                if e.token == self.eos:
                    self.finished[e.clip].append((self._rank(e.lm, finals[i], units_written), e.hyp.tokens))
                    continue
                if not goes_on[i]:
                    continue  # `_select` could not keep it: no hypothesis, no CTC state
                child = _Hyp(
                    e.hyp.tokens + [e.token],
                    e.lm,
                    committed_psi[i],
                    e.units,
                    e.hyp.committed + e.new,
                    scores[i],
                    e.text,
                    e.spoken,
                    e.stalled,
                    row=count + 2 * len(rows),
                    slot=e.hyp.slot,
                    unit_targets=e.unit_targets,
                    rest=e.rest,
                    ranked_row=count + 2 * len(rows) + 1,
                    unspelled=(e.hyp, e.targets, e.keep, e.source) if e.unspelled else None,
                )
                if e.spoken[2]:  # inside a character: its bytes so far
                    child.open_text, child.open_tokens = e.hyp.before_open, (*e.hyp.open_tokens, e.token)
                live[e.clip].append(child)
                rows.append(i)
            if rows:  # each child's committed state (its ranked one where the two are the same), then its ranked one
                ranked_at = len(onward)
                pairs = [
                    r
                    for i in rows
                    for r in (
                        ranked_at + at[i] if onward[i].keep == len(onward[i].targets) else at[i],
                        ranked_at + at[i],
                    )
                ]
                kept.append(CTCStates.cat([committed, ranked]).take(pairs))
                count += 2 * len(rows)
        return live, (CTCStates.cat(kept) if kept else None)

    def _could_enter(
        self, extensions: list[_Extension], scores: list[float], live: dict, prune: bool
    ) -> dict:
        """Per clip, the lowest score with which a round's extension (`scores`) could still be in `_select`'s beam
        of the clip's live hypotheses and the round's: (ending with a whole character, inside one). `_select`
        keeps no more than `beam_size` of the first kind and `beam_size // 2` of the second, each best first,
        and a hypothesis only falls as others are added. -inf: any could (ties are kept); +inf: none."""
        kinds = {
            c: ([h.score for h in hyps if not h.pending], [h.score for h in hyps if h.pending])
            for c, hyps in live.items()
        }
        for e, score in zip(extensions, scores):
            if e.token != self.eos:
                kinds[e.clip][bool(e.spoken[2])].append(score)
        out = {}
        for c, (whole, inside) in kinds.items():
            limits = []
            for values, room in ((whole, self.beam), (inside, self.beam // 2)):
                if not (prune and self.prune_children) or len(values) < room:
                    limits.append(-math.inf)
                else:
                    limits.append(heapq.nlargest(room, values)[-1] if room else math.inf)
            out[c] = tuple(limits)
        return out

    def _cutoff(self, extensions: list[_Extension], groups: dict, floors: dict, device) -> Cutoff:
        """The `Cutoff` of a round's extensions: each ranks as `_rank` ranks it, in its clip's beam; one that ends
        a transcript is never dropped and, like one that ends inside a character, sets no floor."""
        live = [e.token != self.eos for e in extensions]
        offset = [self._rank(e.lm, 0.0, len(e.spoken[0])) for e in extensions]  # then + weight * prefix score
        counts = [ok and not e.spoken[2] for ok, e in zip(live, extensions)]
        return Cutoff(
            offset=torch.tensor(offset, dtype=torch.float64, device=device),
            weight=self.weight,
            group=torch.tensor([groups[e.clip] for e in extensions], dtype=torch.long, device=device),
            floor=torch.tensor(list(floors.values()), dtype=torch.float64, device=device),
            counts=torch.tensor(counts, dtype=torch.bool, device=device),
            prunable=torch.tensor(live, dtype=torch.bool, device=device),
            beam=self.beam,
            margin=self.margin if self.margin_floors else math.inf,
        )

    def _force(self, scorer: CTCPrefixScorer, states: CTCStates, beams: dict, active: list[int], prefixes):
        """Replaces each active clip's empty hypothesis in `beams` by the one `prefixes[clip]` spells, token by
        token as the search itself extends hypotheses (`_score`, with the LLM's part 0: the same for every
        hypothesis that follows). Returns their CTC states, two rows per hypothesis (committed, ranked) in
        `active` order, and the clips whose prefix cannot be spelled (left out of the states)."""
        unspelled: set[int] = set()
        at = 0
        while True:
            proposals = {
                c: ([(beams[c][0], prefixes[c][at], 0.0, 0)], [math.inf])
                for c in active
                if c not in unspelled and at < len(prefixes[c])
            }
            if not proposals:
                break
            # every extension kept: the prefix's hypothesis even where a search's beam would not hold it
            live, grown = self._score(scorer, states, proposals, 1, prune=False)
            offset = len(states)
            if grown is not None:
                states = CTCStates.cat([states, grown])
            for c in proposals:
                if not live[c]:
                    unspelled.add(c)
                    continue
                child = live[c][0]
                child.row, child.ranked_row = child.row + offset, child.ranked_row + offset
                beams[c] = [child]
            at += 1
        ordered = [beams[c][0] for c in active if c not in unspelled]
        states = states.take([r for h in ordered for r in (h.row, h.ranked_row)])
        for i, h in enumerate(ordered):
            h.row, h.ranked_row = 2 * i, 2 * i + 1
        return states, sorted(unspelled)

    # ---- the search -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(
        self,
        hidden: torch.Tensor,
        prompt_kv,
        prompt_mask: torch.Tensor,
        ctc_log_probs: torch.Tensor,
        ctc_lengths: torch.Tensor,
        bounds: list[int],
        heard: list[bool],
        no_speech_threshold: float | None,
        hotwords: list[list[str]],
        prefixes: list[list[int]] | None = None,
    ) -> list[list[int] | None]:
        """Token ids (without EOS) per clip. `hidden` (B, E): the LLM's last hidden state after each prompt;
        `prompt_kv`/`prompt_mask`: the prompts' keys and values (see `_BeamLM`); `ctc_log_probs` (B, T, V) and
        `ctc_lengths`: the CTC head's; `bounds`: new tokens allowed per clip; `heard`: False for a clip the
        speech-confidence gate empties; `hotwords`: per clip, the names whose tokens get the hotword bonus.
        `prefixes`: per clip, tokens its transcript begins with, already at the end of its prompt (`hidden` and
        `prompt_kv` include them): the clip's search starts from the hypothesis they spell, its CTC state extended
        by them, and its result begins with them; None for a clip whose prefix cannot be spelled (`_force`).
        The no-speech gate is not applied with prefixes."""
        model, device = self.model, hidden.device
        n_clips = hidden.shape[0]
        scorer = CTCPrefixScorer(ctc_log_probs, ctc_lengths, model.config.ctc_blank_id)
        generation_suppress = list(model.generation_config.suppress_tokens or [])
        special = set(self.tokenizer.all_special_ids) - {self.eos}  # nothing the CTC head could score
        suppress = sorted(special | set(generation_suppress))
        bias = None
        if self.options.hotword_bonus > 0 and any(hotwords):
            bias = HotwordBias(self.tokenizer, [[]], self.options.hotword_bonus, 0)
        self.finished: dict[int, list] = {c: [] for c in range(n_clips)}
        results: dict[int, list[int]] = {c: [] for c in range(n_clips) if not heard[c]}
        active = [c for c in range(n_clips) if heard[c]]
        beams = {
            c: [_Hyp([], 0.0, 0.0, 0, (), 0.0, "", ((), False, False), row=i, ranked_row=i)]
            for i, c in enumerate(active)
        }
        states = scorer.initial(active)
        if prefixes is not None:
            states, unspelled = self._force(scorer, states, beams, active, prefixes)
            for c in unspelled:
                results[c] = None
                beams.pop(c)
            active = [c for c in active if c not in unspelled]
            no_speech_threshold = None
        rows_hidden = hidden[active]
        lm_steps: _BeamLM | None = None
        step_clips = list(range(n_clips))  # the clips the LLM stepper holds, in order
        embed = model.get_input_embeddings()
        chunk = FIRST_CHUNK * self.beam  # extensions scored per clip in the first round, then twice as many
        step = 0
        while active:
            logits = model.lm_head(rows_hidden).float()  # (R, V): the live hypotheses of the active clips
            if generation_suppress:
                logits[:, generation_suppress] = float("-inf")
            if step == 0 and no_speech_threshold is not None:  # the gate sees what generate's sees
                ended = logits.softmax(-1)[:, self.eos_ids].sum(-1) >= no_speech_threshold
                for c, gone in zip(list(active), ended.tolist()):
                    if gone:
                        results[c] = []
                        beams.pop(c)
                keep = [i for i, gone in enumerate(ended.tolist()) if not gone]
                active = [active[i] for i in keep]
                logits, states = logits[keep], states.take(keep)
                for i, c in enumerate(active):
                    beams[c][0].row = beams[c][0].ranked_row = i
                if not active:
                    break
            logits[:, suppress] = float("-inf")
            log_p = logits.log_softmax(-1)
            rows = [h for c in active for h in beams[c]]
            if bias is not None:  # then normalised again: the LLM's part stays a log-probability
                bias.hotwords = [hotwords[c] for c in active for _ in beams[c]]
                width = len(rows[0].tokens)
                ids = torch.tensor([h.tokens for h in rows], dtype=torch.long, device=device).view(
                    len(rows), width
                )
                log_p = bias(ids, log_p.clone()).log_softmax(-1)
            at_bound = torch.tensor([step >= bounds[c] for c in active for _ in beams[c]], device=device)
            top_v, top_i = log_p.topk(min(self.candidates, log_p.shape[-1]), -1)
            if bool(at_bound.any()):  # the duration bound: those hypotheses end here
                top_v[at_bound] = float("-inf")
                top_v[at_bound, 0], top_i[at_bound, 0] = log_p[at_bound, self.eos], self.eos
            lm_total = torch.tensor([h.lm for h in rows], dtype=torch.float64)[:, None] + top_v.double().cpu()
            top_i_cpu = top_i.cpu()
            psi, units, reads = self._bounds(scorer, states, rows, top_i_cpu)
            bound = (1 - self.weight) * lm_total + self.weight * psi + self.bonus * units
            bound = bound.masked_fill(
                (top_i_cpu == self.eos) & (bound > -math.inf), math.inf
            )  # always scored
            proposals, r = {}, 0
            width = top_v.shape[1]
            for c in active:
                k = len(beams[c])
                b = bound[r : r + k].reshape(-1)
                v, t = lm_total[r : r + k].reshape(-1).tolist(), top_i_cpu[r : r + k].reshape(-1).tolist()
                a = reads[r : r + k].reshape(-1).tolist()
                order = torch.argsort(b, descending=True, stable=True).tolist()
                b = b.tolist()
                order = [i for i in order if b[i] > -math.inf]  # -inf: cannot be taken
                proposals[c] = (
                    [(beams[c][i // width], t[i], v[i], a[i]) for i in order],
                    [b[i] for i in order],
                )
                r += k
            live, new_states = self._score(scorer, states, proposals, chunk)
            still = []
            for c in active:
                selected = self._select(sorted(live[c], key=lambda h: -h.score))
                selected = [h for h in selected if h.unspelled is None or self._spell_kept(h)]
                best_done = max((s for s, _ in self.finished[c]), default=-math.inf)
                stop = not selected or best_done >= max(
                    self._rank(h.lm, h.psi, h.units_written + STOP_SLACK_UNITS) for h in selected
                )
                if stop:
                    if self.finished[c]:
                        results[c] = max(self.finished[c], key=lambda f: f[0])[1]
                    else:  # every hypothesis broke off: the best live one that ends with a whole character
                        alive = [h for h in (selected or beams[c]) if not h.pending]
                        results[c] = alive[0].tokens if alive else []
                    beams.pop(c)
                else:
                    beams[c] = selected
                    still.append(c)
            if not still:
                break
            # the next LLM step: each surviving clip's hypotheses in its slots
            if lm_steps is None:
                lm_steps = _BeamLM(
                    model.model.language_model,
                    prompt_kv,
                    prompt_mask,
                    (prompt_mask.long().sum(-1)).to(device),
                    self.beam,
                    min(max(bounds) + 1, 64),  # grows if a transcript needs more
                )
            keep_clips = [step_clips.index(c) for c in still]
            if len(keep_clips) != len(step_clips):
                lm_steps.keep_clips(torch.tensor(keep_clips, device=device))
            step_clips = still
            tokens, parents, live_rows = [], [], []
            for i, c in enumerate(still):
                for s in range(self.beam):
                    hyp = beams[c][s] if s < len(beams[c]) else None
                    tokens.append(hyp.tokens[-1] if hyp else self.eos)
                    parents.append(i * self.beam + (hyp.slot if hyp and step > 0 else 0))
                    if hyp:
                        live_rows.append(i * self.beam + s)
                for s, hyp in enumerate(beams[c]):
                    hyp.slot = s  # where its tokens' keys and values are from now on
            all_hidden = lm_steps.step(
                embed(torch.tensor(tokens, device=device)), torch.tensor(parents, device=device)
            )
            rows_hidden = all_hidden[torch.tensor(live_rows, device=device)]
            ordered = [h for c in still for h in beams[c]]
            states = new_states.take([r for h in ordered for r in (h.row, h.ranked_row)])
            for i, h in enumerate(ordered):
                h.row, h.ranked_row = 2 * i, 2 * i + 1
            active = still
            step += 1
        return [results[c] for c in range(n_clips)]


# ---- CTC helpers of the decoder ---------------------------------------------------------------------------------
_CTC_TARGETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ctc_targets(processor) -> CTCTargets:
    """The processor's `CTCTargets` (its CTC vocabulary spelled by its phonemizer), built once per processor."""
    targets = _CTC_TARGETS.get(processor)
    if targets is None:
        targets = _CTC_TARGETS[processor] = CTCTargets(
            processor.ctc_vocab, getattr(processor, "phonemizer", None)
        )
    return targets


def _ctc_runs(
    ctc_logits: torch.Tensor, lengths: torch.Tensor, blank: int
) -> list[list[tuple[int, int, int]]]:
    """Greedy CTC hypothesis of each clip as (CTC vocabulary id, first frame, last frame) per label emitted
    (repeats collapsed, blanks removed)."""
    hyps = []
    for row, n in zip(ctc_logits.argmax(-1).tolist(), lengths.tolist()):
        previous, hyp = None, []
        for frame, label in enumerate(row[:n]):
            if label != blank and label == previous:
                hyp[-1] = (label, hyp[-1][1], frame)
            elif label != blank:
                hyp.append((label, frame, frame))
            previous = label
        hyps.append(hyp)
    return hyps


def _ctc_greedy(ctc_logits: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """Greedy CTC hypothesis (repeats collapsed, blanks removed) of each clip, as CTC vocabulary ids."""
    return [[label for label, _, _ in runs] for runs in _ctc_runs(ctc_logits, lengths, blank)]


def heard_hotwords(
    index: "HotwordIndex",
    runs: list[tuple[int, int, int]],
    log_probs: torch.Tensor,
    symbols: Sequence[str],
    targets: CTCTargets,
    blank: int,
    margin: float | None,
    max_hotwords: int | None,
) -> list[str]:
    """The hotwords retrieval finds in a clip's greedy CTC hypothesis (`runs`, `_ctc_runs`; `symbols` its phonemes;
    `log_probs` (T, V) the clip's CTC log-probabilities). A name found with phoneme edits is kept only if, over the
    frames between the labels around the match, the CTC head finds its phonemes at most `margin` nats less likely
    than the ones it heard there (None: every match is kept; so is a name with a word the phonemizer cannot
    spell, whose neutral rule gives the check nothing to weigh)."""

    def keep(match: HotwordMatch, word: str) -> bool:
        if not match.edits or margin is None:
            return True
        spelled = targets.targets(word)
        if spelled is None:
            return False
        ids = _flat(spelled[1])
        if WILDCARD in ids:
            return True
        lo = runs[match.start - 1][2] + 1 if match.start else 0
        hi = runs[match.end][1] if match.end < len(runs) else log_probs.shape[0]
        window = log_probs[lo:hi]
        scorer = CTCPrefixScorer(window[None], torch.tensor([window.shape[0]]), blank)
        heard_ids = [label for label, _, _ in runs[match.start : match.end]]
        states, _ = scorer.extend(scorer.initial([0, 0]), [heard_ids, ids])
        heard, name = scorer.final(states).tolist()  # log P(exactly these labels | the window)
        return name >= heard - margin

    return index.retrieve(list(symbols), max_hotwords, keep)


def word_chunks(
    text: str, log_probs: torch.Tensor, targets: CTCTargets, frame_seconds: float, blank: int, duration: float
) -> list[dict]:
    """`[{"text": word, "timestamp": (start, end)}]` for each unit of `text` (an English word, a Hanzi, a digit
    string, as written in `text`), from the CTC head's forced alignment of the transcript (`unit_timestamps`);
    (None, None) for a transcript the audio cannot hold (more targets than frames)."""
    spelled = targets.targets(text)
    if spelled is None:
        return []
    units, unit_targets = spelled
    unit_targets = [tuple(t for t in unit if t != WILDCARD) for unit in unit_targets]
    try:
        stamps = unit_timestamps(log_probs, unit_targets, frame_seconds, blank=blank, duration=duration)
    except ValueError as err:
        logger.warning("no word timestamps for %r: %s", text, err)
        stamps = [None] * len(units)
    chunks = []
    for unit, span, stamp in zip(units, unit_spans(text, units), stamps):
        written = unit if span is None else text[span[0] : span[1]]
        stamp = (round(stamp[0], 3), round(stamp[1], 3)) if stamp is not None else (None, None)
        chunks.append({"text": written, "timestamp": stamp})
    return chunks


def unit_spans(text: str, units: Sequence[str]) -> list[tuple[int, int] | None]:
    """Where each of `units` (words, Hanzi, digit strings, in order) is written in `text`, case aside: (start, end)
    character offsets, searched from the end of the last one found; None for a unit not found."""
    lowered, cursor, spans = text.lower(), 0, []
    for unit in units:
        at = lowered.find(unit.lower(), cursor)
        spans.append(None if at < 0 else (at, at + len(unit)))
        cursor = cursor if at < 0 else at + len(unit)
    return spans


# Audio with pauses in it (several utterances, or longer than the processor's `max_audio_seconds`) is cut into
# pieces at them; decoded as one clip, several sentences under the limit came out at 51% WER / 23% CER against
# 4.2% / 2.4% in pieces (docs/benchmarks.md, "Long-form audio"):
PAUSE_SECONDS = 0.3  # a run of quiet frames at least this long is a pause, cut in its middle
QUIET_DB = -35.0  # a frame this far below the clip's loud level (its 95th-percentile frame energy) is quiet
# of a pause, what each piece keeps on its side: the silence around a piece changes what the demo's model writes
# (167 test clips joined with 0.5-1.0 s pauses: 27 read differently than alone with half of each pause on either
# side, 26 / 14 / 13 / 15 with 0.1 / 0.2 / 0.25 / 0.3 s kept; docs/benchmarks.md)
KEEP_SECONDS = 0.25
LONG_FORM_BATCH = 8  # pieces of long audio decoded together (memory stays flat with the audio's length)


def pause_pieces(
    wave: torch.Tensor,
    sampling_rate: int,
    max_seconds: float,
    pause_seconds: float = PAUSE_SECONDS,
    quiet_db: float = QUIET_DB,
    keep_seconds: float = KEEP_SECONDS,
) -> list[tuple[int, int]]:
    """[start, end) sample ranges of `wave`'s speech, in order: cut at every pause (a run of 10 ms frames quieter
    than `quiet_db` below the clip's loud level, at least `pause_seconds` long, not at either end), each piece
    keeping up to `keep_seconds` of the pause on its side (the rest of the pause is left out); a piece still
    longer than `max_seconds` is cut again, with nothing left out, in the middle of its longest shorter quiet run,
    and only one with no quiet frame at all at its quietest frame (the one cut that may fall inside a word)."""
    hop = max(1, int(round(sampling_rate * 0.01)))
    if wave.numel() < hop * (2 + int(round(pause_seconds / 0.01))):  # no room for a pause between two sounds
        return [(0, wave.numel())]
    n_frames = max(1, wave.numel() // hop)
    frames = wave[: n_frames * hop].reshape(n_frames, hop).float()
    energy = 10.0 * torch.log10(frames.pow(2).mean(dim=1) + 1e-12)  # dB per frame
    quiet = (energy < torch.quantile(energy, 0.95) + quiet_db).tolist()
    runs: list[tuple[int, int]] = []  # quiet runs [a, b) in frames, not touching either end
    a = None
    for i, q in enumerate(quiet + [False]):
        if q and a is None:
            a = i
        elif not q and a is not None:
            if a > 0 and i < n_frames:
                runs.append((a, i))
            a = None
    shortest, keep = int(round(pause_seconds / 0.01)), int(round(keep_seconds / 0.01))
    pauses = [(a, b) for a, b in runs if b - a >= shortest]
    starts = [0] + [max(b - keep, (a + b) // 2) for a, b in pauses]
    ends = [min(a + keep, (a + b) // 2) for a, b in pauses] + [n_frames]
    limit = max(1, int(max_seconds / 0.01))
    pieces: list[tuple[int, int]] = []
    todo = list(zip(starts, ends))[::-1]
    while todo:
        a, b = todo.pop()
        if b - a <= limit:
            pieces.append((a, b))
            continue
        margin = min(100, (b - a) // 4)  # no cut within a second (a quarter) of the piece's ends
        inside = [
            (y - x, -abs((x + y) // 2 - (a + b) // 2), (x + y) // 2)
            for x, y in runs
            if a + margin <= (x + y) // 2 <= b - margin
        ]
        if inside:
            cut = max(inside)[2]
        else:  # no quiet frame: the quietest one of the middle half
            lo, hi = a + (b - a) // 4, b - (b - a) // 4
            cut = lo + int(torch.argmin(energy[lo:hi]))
        todo += [(cut, b), (a, cut)]
    out = [(a * hop, b * hop) for a, b in pieces]
    out[-1] = (out[-1][0], wave.numel())  # the last piece keeps the samples after the last whole frame
    return out


def join_transcripts(texts: Iterable[str]) -> str:
    """Transcripts of consecutive pieces as one: a space between them, none between two Hanzi."""
    out = ""
    for text in texts:
        text = text.strip()
        if text:
            out += ("" if not out or (is_hanzi(out[-1]) and is_hanzi(text[0])) else " ") + text
    return out


def _joined_result(parts: list[dict], starts: list[float]) -> dict:
    """One clip's result from those of its pieces (`transcribe`'s keys), the pieces starting at `starts` (s)."""
    result: dict = {"text": join_transcripts(p["text"] for p in parts)}
    if "hotwords" in parts[0]:
        result["hotwords"] = list(dict.fromkeys(w for p in parts for w in p["hotwords"]))
    if "phonemes" in parts[0]:
        result["phonemes"] = " ".join(p["phonemes"] for p in parts if p["phonemes"])
    if "chunks" in parts[0]:
        result["chunks"] = [
            {
                "text": chunk["text"],
                "timestamp": tuple(None if t is None else round(t + start, 3) for t in chunk["timestamp"]),
            }
            for p, start in zip(parts, starts)
            for chunk in p["chunks"]
        ]
    return result


class PromptCache:
    """A stream's prompt keys and values, kept from one decode to the next (`StreamingSession` of a natively
    streaming model): the prompt text before the audio and the adaptor outputs of the audio that is final (its
    encoder states will not change), which the LLM then does not run again. Set `final_audio` (audio positions
    final for the next decode) before each decode; the decode keeps the keys and values up to them."""

    def __init__(self):
        self.ids: torch.Tensor | None = None  # the prompt ids the keys and values are of
        self.kv: list | None = None  # per layer (keys, values) (1, H, len(ids), d)
        self.final_audio = 0

    def keep(self, input_ids: torch.Tensor, kv, audio_start: int, counts: torch.Tensor) -> None:
        """From a prefill of `input_ids` (one row; its audio from `audio_start`), the keys and values `kv` (per
        layer, at least as long as the prompt) up to the end of the final audio."""
        end = audio_start + min(self.final_audio, int(counts[0]))
        if end > (0 if self.ids is None else self.ids.numel()):
            self.ids = input_ids[0, :end].clone()
            self.kv = [(k[:, :, :end].clone(), v[:, :, :end].clone()) for k, v in kv]


class EntropyASRGenerationMixin:
    """Decoding methods of `EntropyASRForConditionalGeneration` (see the module docstring)."""

    @torch.no_grad()
    def ctc_greedy_decode(self, input_features, input_features_mask=None) -> list[list[int]]:
        """Greedy CTC hypothesis (collapsed repeats, blanks removed) per clip, as CTC vocabulary ids."""
        hidden, lengths = self.model.encode(input_features, input_features_mask)
        return _ctc_greedy(self.model.ctc_head(hidden), lengths, self.config.ctc_blank_id)

    # ---- generation --------------------------------------------------------------------------------------
    def default_max_new_tokens(self, input_features_mask: torch.Tensor | None, num_feature_frames: int):
        """Per-clip bound on new tokens from its duration (LongTensor (B,)): output much longer than the
        speech allows is a hallucination, not a transcript."""
        if input_features_mask is not None:
            return self._token_bound(input_features_mask.sum(-1).long())
        return self._token_bound(torch.tensor([num_feature_frames]))

    def _token_bound(self, frames: torch.Tensor) -> torch.Tensor:
        """`default_max_new_tokens` of clips with `frames` valid feature frames each."""
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

    def _prompt_prefill(
        self, input_ids, attention_mask, audio_embeds, counts, capacity: int, reuse: PromptCache | None = None
    ):
        """The prompts (with the adaptor outputs at their audio positions) through the LLM: (the last hidden state
        (B, E), the position ids, a `_LeanDecoder` holding the keys and values with room for `capacity` positions
        or None, the text model's cache or None). When the LLM is a family `_LeanDecoder` supports, unpadded
        rows run there after the prompt text before the audio taken from `_cached_prompt_head`; otherwise the
        text model's own forward runs them. `reuse` (one clip, a stream's `PromptCache`): the positions it holds
        keys and values of are not run again, and it keeps those of this prompt up to its final audio."""
        batch = input_ids.shape[0]
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        done, head_kv = self._cached_prompt_head(input_ids, attention_mask)
        audio_start, skipped = done, 0  # audio positions already held
        if reuse is not None and head_kv is not None:
            if batch != 1:
                raise ValueError("a PromptCache serves one clip at a time")
            held = 0 if reuse.ids is None else reuse.ids.numel()
            if done < held <= done + int(counts[0]) and torch.equal(input_ids[0, :held], reuse.ids):
                done, head_kv, skipped = held, reuse.kv, held - done
        lm = self.model.language_model
        lean_supported = _LeanDecoder.supports(lm)
        embeds, _ = self.model.embed_prompt(input_ids[:, done:], audio_embeds[:, skipped:], counts - skipped)
        if head_kv is not None and lean_supported:
            lean = _LeanDecoder(lm, head_kv, attention_mask, capacity)
            last = lean.forward(embeds, position_ids[:, done:])[:, -1]
            if reuse is not None:
                reuse.keep(input_ids, zip(lean.keys, lean.values), audio_start, counts)
            return last, position_ids, lean, None
        cache = None
        if head_kv is not None:
            cache = DynamicCache(config=self.config.text_config)
            for i, (keys, values) in enumerate(head_kv):
                cache.update(
                    keys.expand(batch, -1, -1, -1).clone(), values.expand(batch, -1, -1, -1).clone(), i
                )
        out = lm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids[:, done:],
            cache=cache,
            use_cache=True,
        )
        lean = None
        if reuse is not None and head_kv is not None and hasattr(out.cache, "layers"):
            reuse.keep(input_ids, _LeanDecoder.cache_kv(out.cache, len(lm.layers)), audio_start, counts)
        if lean_supported and hasattr(out.cache, "layers"):
            lean = _LeanDecoder(
                lm, _LeanDecoder.cache_kv(out.cache, len(lm.layers)), attention_mask, capacity
            )
        return out.last_hidden_state[:, -1], position_ids, lean, out.cache

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
        """`generate`'s plain greedy transcription (`_is_plain_greedy`) with the model's gates: `_greedy_tokens`
        after encoding the audio once."""
        audio_embeds, counts, hidden, lengths = self.model.get_audio_features(
            input_features, input_features_mask
        )
        unheard = None
        if self.config.min_speech_confidence is not None:
            unheard = self._below_speech_confidence(self.model.ctc_head(hidden), lengths)
        return self._greedy_tokens(
            input_ids,
            attention_mask,
            audio_embeds,
            counts,
            bounds,
            min_new_tokens,
            logits_processor,
            self.config.no_speech_threshold,
            unheard,
        )

    @torch.no_grad()
    def _greedy_tokens(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        audio_embeds: torch.Tensor,
        counts: torch.Tensor,
        bounds: torch.Tensor,
        min_new_tokens: int,
        logits_processor: LogitsProcessorList | None,
        no_speech_threshold: float | None,
        unheard: torch.Tensor | None,
        reuse: PromptCache | None = None,
    ) -> torch.LongTensor:
        """Greedy decoding with a KV cache in a plain loop (the same tokens as `GenerationMixin.generate` with
        the saved generation config, without transformers' per-step logits processor objects and stopping
        criteria: the loop applies their effects itself), from the adaptor outputs of the audio. The prompt runs
        through `_prompt_prefill`; the decoding steps run in its `_LeanDecoder` when there is one, else in the text
        model's own forward. Row i may emit at most `bounds[i]` tokens before EOS; finished rows are padded with
        `pad_token_id`. With `no_speech_threshold`, rows that would end their turn at the first step with at least
        that probability end there, and so do the rows `unheard` marks (below the speech-confidence gate).
        `logits_processor` (custom processors) then sees the float32 scores and the sequences so far, in the
        place `GenerationMixin.generate` gives them. Returns prompt + new tokens, like `generate`."""
        g = self.generation_config
        eos = torch.tensor(g.eos_token_id if isinstance(g.eos_token_id, list) else [g.eos_token_id])
        eos = eos.to(input_ids.device)
        pad = g.pad_token_id if g.pad_token_id is not None else int(eos[0])
        suppress = list(g.suppress_tokens or [])
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        bounds = bounds.to(input_ids.device)
        max_new = int(bounds.max())
        if max_new <= 0:
            return input_ids
        batch = input_ids.shape[0]
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        hidden, position_ids, lean, cache = self._prompt_prefill(
            input_ids, attention_mask, audio_embeds, counts, input_ids.shape[1] + max_new, reuse
        )
        hidden = hidden[:, None]
        lm = self.model.language_model
        for step in range(max_new):
            logits = self.lm_head(hidden[:, -1]).float()
            if suppress:
                logits[:, suppress] = float("-inf")
            if step < min_new_tokens:
                logits[:, eos] = float("-inf")
            if step == 0 and no_speech_threshold is not None:
                logits = _no_speech_gate(logits, eos, no_speech_threshold)
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
            embeds = self.get_input_embeddings()(token[:, None])
            if lean is not None:
                hidden = lean.forward(embeds, position_ids)
                continue
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
            out = lm(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
            )
            cache, hidden = out.cache, out.last_hidden_state
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

    # ---- transcription: the one decoder ------------------------------------------------------------------------
    def decoding_options(self, options: "DecodingOptions | dict | None" = None, **changes) -> DecodingOptions:
        """The decoding options in effect: the model's saved defaults, then `options`, then `changes`."""
        return DecodingOptions.for_model(self, options, **changes)

    @torch.inference_mode()
    def transcribe(
        self, audio, processor, options: "DecodingOptions | dict | None" = None, **changes
    ) -> list[dict]:
        """Transcripts of a batch of clips, decoded the way the model's options say (`DecodingOptions`: its saved
        defaults, then `options`, then `changes`): `[{"text", ["hotwords"], ["phonemes"], ["chunks"]}]`.

        `audio`: a list of clips as `processor.prepare_audio` takes them (paths, arrays at the model's rate,
        {"array"/"raw", "sampling_rate"} dicts). All clips are encoded at once and decoded together: the greedy
        loop or the joint CTC / LLM beam search advance every clip in one LLM step. A clip with pauses in it
        (several sentences, or audio longer than the processor's `max_audio_seconds`) is cut at them
        (`pause_pieces`: the model was trained on single utterances), its pieces decoded LONG_FORM_BATCH at a time
        and joined (`join_transcripts`; word timestamps from the start of the clip)."""
        opts = self.decoding_options(options, **changes)
        single = (
            isinstance(audio, (str, dict)) or getattr(audio, "ndim", 2) == 1
        )  # one clip, not a list of them
        waves = [processor.prepare_audio(clip, long_form=True) for clip in ([audio] if single else audio)]
        rate, limit = processor.sampling_rate, processor.max_audio_seconds
        pieces = [pause_pieces(w, rate, limit) for w in waves]
        whole = [i for i, p in enumerate(pieces) if len(p) == 1]  # no pause: one utterance
        if len(whole) == len(waves):
            return self._transcribe_waves(waves, processor, opts)
        results: list[dict | None] = [None] * len(waves)
        if whole:
            for i, result in zip(whole, self._transcribe_waves([waves[i] for i in whole], processor, opts)):
                results[i] = result
        for i in (i for i in range(len(waves)) if len(pieces[i]) > 1):
            results[i] = self._transcribe_pieces(waves[i], pieces[i], processor, opts)
        return results

    def _transcribe_pieces(self, wave: torch.Tensor, spans, processor, opts: DecodingOptions) -> dict:
        """The transcript of `wave` from its pieces `spans` (`pause_pieces`), decoded LONG_FORM_BATCH at a time and
        joined (word timestamps from the start of `wave`)."""
        parts: list[dict] = []
        for at in range(0, len(spans), LONG_FORM_BATCH):
            group = spans[at : at + LONG_FORM_BATCH]
            parts += self._transcribe_waves([wave[a:b] for a, b in group], processor, opts)
        return _joined_result(parts, [a / processor.sampling_rate for a, _ in spans])

    @torch.inference_mode()
    def _transcribe_waves(
        self,
        waves: list[torch.Tensor],
        processor,
        opts: DecodingOptions,
        encoded=None,
        prefixes: list[str] | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> list[dict]:
        """`transcribe` of clips already through `processor.prepare_audio`, each within its length limit.
        `encoded`: their encoder states and lengths when the caller has them already (a streaming session's
        cached chunk-by-chunk encoding), instead of encoding the clips here. `prefixes`: per clip, text its
        transcript must begin with (a streaming session's settled words): its tokens run through the LLM with the
        prompt, in one forward, and the search goes on from them (`JointSearch.run`'s `prefixes`) instead of
        searching that text again; the gates do not empty a clip with a prefix. A clip whose prefix the search
        cannot spell is decoded without it. `prompt_cache` (one clip): a stream's `PromptCache`, whose positions
        the LLM does not run again."""
        if not waves:
            return []
        if prefixes is not None and len(prefixes) != len(waves):
            raise ValueError(f"prefixes: one per clip ({len(waves)}), got {len(prefixes)}")
        device = self.device
        if encoded is None:
            features, features_mask = processor.audio_features(waves)
            features, features_mask = features.to(device), features_mask.to(device)
            audio_embeds, counts, hidden, lengths = self.model.get_audio_features(features, features_mask)
            feature_frames = features_mask.sum(-1).long()
        else:
            hidden, lengths = (t.to(device) for t in encoded)
            audio_embeds, counts = self.model.embed_audio(hidden, lengths)
            feature_frames = processor.feature_frames(torch.tensor([w.numel() for w in waves]))
        ctc_logits = self.model.ctc_head(hidden).float()
        blank = self.config.ctc_blank_id
        has_ctc = bool(processor.ctc_vocab)
        if not has_ctc:
            retrieval = bool(opts.hotwords) and opts.hotword_retrieval
            for wanted, name in ((opts.joint, "ctc_weight > 0"), (opts.return_timestamps, "return_timestamps"),
                                 (opts.return_phonemes, "return_phonemes"), (retrieval, "hotword_retrieval")):  # fmt: skip
                if wanted:
                    raise DecodingOptionError(
                        f"{name} needs a model with a CTC head; this one's processor has no CTC vocabulary "
                        "(ctc_weight=0 decodes with the LLM alone)"
                    )
        no_speech, least = opts.gates(self.config)
        heard = torch.ones(len(waves), dtype=torch.bool)
        if least is not None:
            heard = (speech_confidence(ctc_logits, lengths, blank) >= least).cpu()
        phonemes = runs = None
        if opts.return_phonemes or (opts.hotwords and opts.hotword_retrieval):
            runs = _ctc_runs(ctc_logits, lengths, blank)
            phonemes = [processor.decode_ctc([label for label, _, _ in r]) for r in runs]
        per_clip: list[list[str]] = [[] for _ in waves]
        if opts.hotwords:
            if not opts.hotword_retrieval:
                per_clip = [list(opts.hotwords) for _ in waves]
            else:
                index = self._hotword_index(processor, opts)
                log_probs = ctc_logits.log_softmax(-1).cpu()
                per_clip = [
                    heard_hotwords(
                        index,
                        r,
                        log_probs[i, : int(lengths[i])],
                        p,
                        _ctc_targets(processor),
                        blank,
                        None if opts.ignore_tones else opts.hotword_margin,
                        opts.max_hotwords,
                    )  # fmt: skip
                    for i, (r, p) in enumerate(zip(runs, phonemes))
                ]
        contexts = [words or None for words in per_clip] if opts.prompt_hotwords else None
        forced: list[list[int]] = [[] for _ in waves]
        if prefixes is not None and any(prefixes):
            tok = processor.tokenizer
            forced = [tok.encode(p, add_special_tokens=False) if p else [] for p in prefixes]
        input_ids, attention_mask = processor.prompt_inputs(counts.tolist(), contexts, forced)
        if opts.max_new_tokens is not None or self.generation_config.max_new_tokens is not None:
            bounds = torch.full(
                (len(waves),), int(opts.max_new_tokens or self.generation_config.max_new_tokens)
            )
        else:
            bounds = self._token_bound(feature_frames)
        if any(forced):
            taken = torch.tensor([len(f) for f in forced])
            bounds = (bounds - taken).clamp(min=1)
            heard |= taken > 0
            if no_speech is not None and bool((taken > 0).any()):
                no_speech = None  # text already written: the clip is not silent
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        biased = [words if opts.hotword_bonus > 0 else [] for words in per_clip]
        redone: dict[int, dict] = {}  # clips decoded again without their prefix
        if opts.joint:
            targets = _ctc_targets(processor)
            last, _, lean, cache = self._prompt_prefill(
                input_ids, attention_mask, audio_embeds, counts, input_ids.shape[1], prompt_cache
            )
            width = input_ids.shape[1]
            if lean is not None:
                prompt_kv = [(k[:, :, :width], v[:, :, :width]) for k, v in zip(lean.keys, lean.values)]
            else:
                prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
            tokens = JointSearch(self, processor.tokenizer, targets, opts).run(
                last,
                prompt_kv,
                attention_mask,
                ctc_logits.log_softmax(-1),
                lengths,
                bounds.tolist(),
                heard.tolist(),
                no_speech,
                biased,
                forced if any(forced) else None,
            )
            unspelled = [i for i, t in enumerate(tokens) if t is None]
            if unspelled:  # a prefix the search could not spell: those clips without it
                again = self._transcribe_waves(
                    [waves[i] for i in unspelled],
                    processor,
                    opts,
                    None if encoded is None else tuple(t[unspelled] for t in encoded),
                )
                redone = dict(zip(unspelled, again))
        else:
            processors = LogitsProcessorList()
            if any(biased):
                processors.append(
                    HotwordBias(processor.tokenizer, biased, opts.hotword_bonus, input_ids.shape[1])
                )
            out = self._greedy_tokens(
                input_ids,
                attention_mask,
                audio_embeds,
                counts,
                bounds,
                0,
                processors,
                no_speech,
                ~heard,
                prompt_cache,
            )
            tokens = [f + t for f, t in zip(forced, out[:, input_ids.shape[1] :].tolist())]
        texts = processor.batch_decode([t if t is not None else [] for t in tokens])
        results = [{"text": text} for text in texts]
        if opts.hotwords:
            for result, words in zip(results, per_clip):
                result["hotwords"] = words
        if opts.return_phonemes:
            for result, symbols in zip(results, phonemes):
                result["phonemes"] = " ".join(symbols)
        if opts.return_timestamps:
            log_probs = ctc_logits.log_softmax(-1)
            seconds = encoder_frame_seconds(self.config)
            for i, result in enumerate(results):
                duration = waves[i].numel() / processor.sampling_rate
                result["chunks"] = word_chunks(
                    result["text"],
                    log_probs[i, : int(lengths[i])],
                    _ctc_targets(processor),
                    seconds,
                    blank,
                    duration,
                )
        for i, result in redone.items():
            results[i] = result
        return results

    @torch.inference_mode()
    def token_entropies(self, processor, audio, text: str, context=None) -> dict:
        """Decoder-side entropy allocation for one clip and its transcript `text`: the LLM's next-token entropy
        (bits) at every transcript token, once with the audio in the prompt and once without it (the text prior).
        Their difference is what the audio path removed, token by token."""
        with_audio = processor(audio=[audio], context=[context], transcript=[text]).to(self.device)
        prompt_only = processor.build_prompt(context).replace(" <speech>", "").replace("<speech>", "")
        tok = processor.tokenizer
        target = with_audio["labels"][0][with_audio["labels"][0] != -100].tolist()
        text_ids = torch.tensor(
            [tok(prompt_only, add_special_tokens=False)["input_ids"] + target], device=self.device
        )

        def entropies(logits: torch.Tensor, n_target: int) -> torch.Tensor:
            # logits at position t predict token t+1: the n_target predictions end one before the last
            logp = logits[0, -n_target - 1 : -1].float().log_softmax(-1)
            return -(logp.exp() * logp).sum(-1) / math.log(2.0)

        h_audio = entropies(self(**with_audio).logits, len(target))
        h_text = entropies(
            self(input_ids=text_ids, attention_mask=torch.ones_like(text_ids)).logits, len(target)
        )
        return {
            "tokens": [tok.decode([t]) for t in target],
            "entropy_with_audio": h_audio.tolist(),
            "entropy_without_audio": h_text.tolist(),
            "mean_with_audio": float(h_audio.mean()),
            "mean_without_audio": float(h_text.mean()),
        }

    def _hotword_index(self, processor, opts: DecodingOptions) -> "HotwordIndex":
        """The retrieval index of `opts.hotwords` (phonemes from the model's phonemizer), kept for the next call
        with the same list and settings (a list of 100 000 names takes seconds to index)."""
        if not processor.ctc_vocab or WORD_SEPARATOR in processor.ctc_vocab:
            raise DecodingOptionError(
                "hotword_retrieval needs a model with a phoneme CTC head (this one's CTC head writes characters): "
                "pass hotword_retrieval=False to let every hotword act on every clip"
            )
        phonemizer = getattr(processor, "phonemizer", None)
        if phonemizer is None:
            raise DecodingOptionError(
                "hotword_retrieval needs the model's phonemizer (phonemizer.json in the model folder)"
            )
        key = (
            id(phonemizer),
            opts.hotwords,
            opts.ignore_tones,
            opts.max_hotword_edits,
            opts.phonemes_per_edit,
        )
        cached = getattr(self, "_hotword_indexes", None)
        if cached is None:
            cached = self._hotword_indexes = {}
        if key not in cached:
            if len(cached) >= 4:
                cached.pop(next(iter(cached)))
            cached[key] = HotwordIndex.from_hotwords(
                opts.hotwords,
                lambda word: [p for p, _ in phonemizer.phonemize(word)],
                ignore_tones=opts.ignore_tones,
                max_edits=opts.max_hotword_edits,
                phonemes_per_edit=opts.phonemes_per_edit,
            )
        return cached[key]


__all__ = [
    "PromptCache",
    "DecodingOptions",
    "DecodingOptionError",
    "EntropyASRGenerationMixin",
    "HotwordBias",
    "HotwordIndex",
    "JointSearch",
    "CTCPrefixScorer",
    "CTCTargets",
    "speech_confidence",
]
