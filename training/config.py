"""Stage configuration: one YAML per stage, validated before any training starts.

    stage: pretrain | align | ia_sft | joint_sft | context_sft | grpo | text_lm
    model: runs/tiny/init            # model folder the stage starts from
    output_dir: runs/tiny/pretrain
    data: {path: data/corpus/dataset, train_split: train, eval_split: dev}
    training: {max_steps: 300, learning_rate: 5e-4, ...}   # transformers TrainingArguments (GRPOConfig for grpo)
    trainable: {encoder: true, ctc_head: true, adaptor: false, llm: false}   # default per stage
    augment: {...}                   # training.data.augment.AugmentConfig fields, or false
    ctc: {units: phoneme, consistency_weight: 0.2}          # pretrain
    hot_swap: {...}                  # ia_sft (HotSwapConfig)
    context: {...}                   # context_sft (ContextConfig)
    no_speech: {samples: 200, margin: 0.25, floor: 0.01, confidence_margin: 0.1}  # no-speech gates (NoSpeechConfig)
    lora: {r: 8, alpha: 16, target_modules: [...]}          # LLM adapters instead of full fine-tuning
    grpo: {...}                      # grpo

Unknown keys anywhere fail with the key's dotted name.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]  # configs/ and the recipes' relative paths start here


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: `1e-3` and `5E4` are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(source: Any) -> Any:
    """Parse YAML text or a stream (every config and `key=value` override goes through here)."""
    return yaml.load(source, Loader=_Loader)


@dataclass(frozen=True)
class StageKind:
    """What configs, recipes and the stage runner know of a stage before anything is built (how it trains
    lives on its Trainer class in training/stages)."""

    # what it trains on: "text" (sentences of data.text_corpus), "ctc" (audio and CTC targets), "sft" (audio
    # and the transcript after a prompt) or "grpo" (audio, rewarded rollouts)
    batches: str
    snapshots: bool = False  # every checkpoint-N is a snapshot that later stages choose an encoder from
    transcribes: bool = True  # writes transcripts: its no-speech gates are calibrated when it ends
    hot_swap: bool = False  # swaps pretraining snapshots in: needs hot_swap.pretrain_dir
    arguments: str = "TrainingArguments"  # what `training:` holds: TrainingArguments or TRL's GRPOConfig


# the stages in the order a recipe may run them
STAGE_KINDS: dict[str, StageKind] = {
    "text_lm": StageKind("text", transcribes=False),
    "pretrain": StageKind("ctc", snapshots=True, transcribes=False),
    "align": StageKind("sft"),
    "ia_sft": StageKind("sft", hot_swap=True),
    "joint_sft": StageKind("sft"),
    "context_sft": StageKind("sft"),
    "grpo": StageKind("grpo", arguments="GRPOConfig"),
}
STAGES = tuple(STAGE_KINDS)


class ConfigError(ValueError):
    """A stage or recipe config is invalid; the message names the offending key."""


@dataclass
class DataConfig:
    path: str = ""
    train_split: str = "train"
    eval_split: str | None = "dev"
    audio_column: str = "audio"
    text_column: str = "text"
    language_column: str = "language"
    max_train_samples: int | None = None
    max_eval_samples: int | None = 64
    # speech stages: rows of a language repeated this many times on average in the training split, e.g.
    # {zh: 2.0} (unlisted languages 1.0); see training.data.loading.weight_languages
    language_weights: dict[str, float] | None = None
    text_corpus: str | None = None  # text_lm: one sentence per line


@dataclass
class CTCConfig:
    units: str = "phoneme"  # phoneme | char
    consistency_weight: float = 0.2  # CR-CTC symmetric-KL weight (0 = plain CTC on one view)
    two_views: bool = True


@dataclass
class ChunkingConfig:
    """Dynamic chunk training (WeNet's U2), pretraining only: each batch is encoded with full context with
    probability `full_context_prob`, otherwise chunk-limited (modeling/encoder_entropy_asr.py) with a chunk of
    1..`max_chunk_frames` encoder frames drawn uniformly and 0..`max_left_chunks` chunks of left context (-1:
    every earlier chunk), so that one encoder serves offline and streaming recognition."""

    dynamic: bool = False
    full_context_prob: float = 0.5
    max_chunk_frames: int = 25  # 1 s at 25 Hz
    max_left_chunks: int = -1
    # N > 0: before training, give the model's front end fixed feature statistics estimated over the first N
    # training clips (a streamable front end: `EntropyASRProcessor.set_feature_stats`), unless it has some
    feature_stats_clips: int = 0


@dataclass
class HotSwapConfig:
    pretrain_dir: str = ""  # output folder of the pretraining run (checkpoint-* snapshots)
    mode: str = "replay"  # replay: a finished run's snapshots in order; watch: a run still going
    threshold: float = 0.975
    interval_steps: int = 50
    eval_samples: int = 32
    reference: str | None = None  # snapshot the aligned model started from (default: read from the model)


@dataclass
class ContextConfig:
    inject_prob: float = 0.5  # probability that a sample gets its entities as hotwords
    distractor_prob: float = 0.5  # probability of adding sound-alike distractors when injecting
    max_distractors: int = 2
    hotwords_file: str | None = None  # pool of candidate distractors (default: entities of the train split)


@dataclass
class NoSpeechConfig:
    """After every stage that writes transcripts (all but pretrain and text_lm): `no_speech_threshold` of the
    saved model = (1 + margin) x the highest end-of-turn-first probability over `samples` evenly spaced clips of
    the eval split (at least `floor`), so no such clip would be silenced, and `min_speech_confidence` =
    (1 - confidence_margin) x the lowest speech confidence over the same clips (None: no encoder-side gate).
    samples: 0 disables both (no gate)."""

    samples: int = 200
    margin: float = 0.25
    floor: float = 0.01
    # min_speech_confidence = (1 - confidence_margin) x the lowest speech confidence over the same clips;
    # None: no encoder-side gate
    confidence_margin: float | None = 0.1


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class GRPOStageConfig:
    temperature_start: float = 1.0
    temperature_end: float = 0.7
    reward_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.5])
    keyword_prob: float = 0.5


@dataclass
class StageConfig:
    stage: str
    model: str
    output_dir: str
    data: DataConfig = field(default_factory=DataConfig)
    training: dict[str, Any] = field(default_factory=dict)
    trainable: dict[str, bool] | None = None
    augment: dict[str, Any] | bool | None = None
    ctc: CTCConfig = field(default_factory=CTCConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    hot_swap: HotSwapConfig = field(default_factory=HotSwapConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    no_speech: NoSpeechConfig = field(default_factory=NoSpeechConfig)
    lora: LoraConfig | None = None
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    seed: int = 0

    @property
    def kind(self) -> StageKind:
        return STAGE_KINDS[self.stage]

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage: unknown stage {self.stage!r}; one of {list(STAGES)}")
        if not self.model:
            raise ConfigError("model: the model folder the stage starts from is required")
        if not self.output_dir:
            raise ConfigError("output_dir: required")
        if self.kind.batches == "text":
            if not self.data.text_corpus:
                raise ConfigError("data.text_corpus: the text_lm stage needs a text corpus file")
            if not Path(self.data.text_corpus).is_file():
                raise ConfigError(f"data.text_corpus: {self.data.text_corpus} does not exist")
        else:
            if not self.data.path:
                raise ConfigError("data.path: the dataset folder or manifest is required")
            if not Path(self.data.path).exists():
                raise ConfigError(f"data.path: {self.data.path} does not exist")
        chunking = self.chunking
        if (chunking.dynamic or chunking.feature_stats_clips) and self.stage != "pretrain":
            key = "dynamic" if chunking.dynamic else "feature_stats_clips"
            raise ConfigError(f"chunking.{key}: only the pretrain stage trains the encoder for streaming")
        if chunking.feature_stats_clips < 0:
            raise ConfigError(
                f"chunking.feature_stats_clips: must be >= 0, got {chunking.feature_stats_clips}"
            )
        if chunking.dynamic:
            if not 0.0 <= chunking.full_context_prob <= 1.0:
                raise ConfigError(
                    f"chunking.full_context_prob: must be in [0, 1], got {chunking.full_context_prob}"
                )
            if chunking.max_chunk_frames < 1:
                raise ConfigError(f"chunking.max_chunk_frames: must be >= 1, got {chunking.max_chunk_frames}")
            if chunking.max_left_chunks < -1:
                raise ConfigError(
                    f"chunking.max_left_chunks: must be -1 (all) or >= 0, got {chunking.max_left_chunks}"
                )
        if self.ctc.units not in ("phoneme", "char"):
            raise ConfigError(f"ctc.units: {self.ctc.units!r} is not 'phoneme' or 'char'")
        if self.no_speech.samples < 0 or self.no_speech.margin < 0:
            raise ConfigError("no_speech: samples and margin must be >= 0")
        cm = self.no_speech.confidence_margin
        if cm is not None and not 0.0 <= cm < 1.0:
            raise ConfigError(f"no_speech.confidence_margin: must be in [0, 1) or null, got {cm}")
        if not 0.0 < self.no_speech.floor <= 1.0:
            raise ConfigError(f"no_speech.floor: must be in (0, 1], got {self.no_speech.floor}")
        if self.hot_swap.mode not in ("replay", "watch"):
            raise ConfigError(f"hot_swap.mode: {self.hot_swap.mode!r} is not 'replay' or 'watch'")
        if self.kind.hot_swap and not self.hot_swap.pretrain_dir:
            raise ConfigError(
                f"hot_swap.pretrain_dir: the {self.stage} stage needs the pretraining run's folder"
            )
        if self.trainable is not None:
            bad = set(self.trainable) - {"encoder", "ctc_head", "adaptor", "llm"}
            if bad:
                raise ConfigError(
                    f"trainable.{sorted(bad)[0]}: unknown part; parts are encoder, ctc_head, adaptor, llm"
                )
        known = {f.name for f in dataclasses.fields(_arguments_class(self.kind.arguments))}
        for key in self.training:
            if key not in known:
                raise ConfigError(f"training.{key}: not a {self.kind.arguments} field")


def _arguments_class(name: str) -> type:
    """TrainingArguments, or TRL's GRPOConfig (imported only for a GRPO stage: TRL is slow to import)."""
    if name == "GRPOConfig":
        from trl import GRPOConfig  # lazy: TRL takes seconds to import; only a GRPO stage needs it

        return GRPOConfig
    import transformers  # lazy: keeps this module torch-free (the demo's workers import it before setting their threads)

    return getattr(transformers, name)


def _build(cls, data: dict[str, Any], prefix: str):
    """Instantiate dataclass `cls` from `data`, recursing into dataclass fields; unknown keys raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(f"{name}: unknown key (known: {', '.join(sorted(fields))})")
        sub = _dataclass_type(fields[key].type)
        kwargs[key] = (
            _build(sub, value or {}, name)
            if sub is not None and value is not False and value is not None
            else value
        )
    missing = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in kwargs
    ]
    if missing:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{missing[0]}: required key missing")
    return cls(**kwargs)


def _dataclass_type(annotation) -> type | None:
    names = {
        c.__name__: c
        for c in (
            DataConfig,
            CTCConfig,
            ChunkingConfig,
            HotSwapConfig,
            ContextConfig,
            NoSpeechConfig,
            LoraConfig,
            GRPOStageConfig,
        )
    }
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    for name, cls in names.items():
        if name in text:
            return cls
    return None


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["training.max_steps=10", "data.path=x"]` -> nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_yaml(value)
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_stage_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> StageConfig:
    """Read, merge overrides into, and validate a stage config."""
    if isinstance(source, dict):
        data = source
    else:
        with open(source, encoding="utf-8") as f:
            data = parse_yaml(f) or {}
    data = merge(data, parse_overrides(overrides or []))
    config = _build(StageConfig, data, "")
    config.validate()
    return config


def stage_config_to_dict(config: StageConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
