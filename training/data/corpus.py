"""The built-in bilingual (English/Mandarin) in-car corpus (`entropy-asr make-corpus`).

Text comes from a grammar of in-car voice-assistant requests (navigation, music, calls, climate and
windows, times and numbers) over entity lists (contacts, points of interest, artists, songs). Entities
of each type are partitioned 80/10/10 into train/dev/test, so dev and test mention entities never seen
in training; Mandarin contact names include homophones (张伟/章伟/张玮 are all `zh ang1 uei3`), so
picking the characters needs context (e.g. hotwords). Every sentence occurs in one split only, and every
template of the grammar is trained on: dev and test take at most a fifth of an entity-free template's
sentences (none of a fixed command such as "pause the music").

Speech is synthesized with espeak-ng (Mandarin from tone-numbered pinyin with the `cmn-latn-pinyin`
voice), resampled from 22.05 kHz to 16 kHz and stored as 16-bit FLAC bytes in an
`Audio(sampling_rate=16000, decode=False)` column. Speakers are espeak voice+variant+pitch+speed
combinations; dev and test use voice variants never used in training. Hallucination probe splits
(`probe_silence`, `probe_babble`, `probe_vehicle`, `probe_music`, `probe_white`) hold 1-4 s of pure
silence or noise with empty transcripts.

Code-switched requests (language `mixed`, both directions: "播放 summer rain", "call 张伟") are said stretch by
stretch, each language by a voice of that language (`join_stretches`: one loudness, a drawn pause at each
language boundary); train holds some, `dev_codeswitch` and `test_codeswitch` the held-out ones (dev/test voices
and names). `test_unseen_engine` holds English test-name requests said by flite, a synthesizer no other split
uses (the `engine` column records it per clip). Both come from a random stream of their own, after the
monolingual lines, so a seed's monolingual corpus is the one it gave before they existed.

Outputs under OUT: dataset/ (a DatasetDict from `save_to_disk`), text_corpus.txt (text-only LM data,
train entities only, disjoint from dev/test sentences), hotwords/{train,dev,test}.txt (entity names in
each split), README.md (how it was made). The same seed gives identical text, speakers and audio bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import multiprocessing
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from datasets import Audio, Dataset, DatasetDict, Features, Value
from datasets import Sequence as HFSequence
from tqdm.auto import tqdm

from .audio import TARGET_SR, encode_audio, load_audio, resample
from .augment import babble, music_noise, vehicle_noise, white_noise
from .g2p import (
    PhonemeVocab,
    hanzi_to_pinyin,
    number_to_hanzi,
    number_to_words,
    text_to_phonemes,
)

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "zh")
SPEECH_SPLITS = ("train", "dev", "test")
PROBE_KINDS = ("silence", "babble", "vehicle", "music", "white")
ENTITY_TYPES = ("contact", "poi", "artist", "song")
# dev + test take at most this share of an entity-free template's sentences (`held_out_cap`)
HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class SizeSpec:
    """Utterances per language per split, probe clips per kind, text-corpus sentences, code-switched
    utterances (in train, and in each of dev_codeswitch and test_codeswitch) and test_unseen_engine clips."""

    train: int
    dev: int
    test: int
    probes: int
    text_corpus: int
    codeswitch_train: int = 0
    codeswitch_held: int = 0
    unseen_engine: int = 0


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(
        train=100,
        dev=20,
        test=20,
        probes=10,
        text_corpus=2000,
        codeswitch_train=20,
        codeswitch_held=8,
        unseen_engine=8,
    ),
    "small": SizeSpec(
        train=1000,
        dev=100,
        test=100,
        probes=30,
        text_corpus=10000,
        codeswitch_train=100,
        codeswitch_held=50,
        unseen_engine=50,
    ),
    "full": SizeSpec(
        train=6000,
        dev=300,
        test=300,
        probes=120,
        text_corpus=60000,
        codeswitch_train=600,
        codeswitch_held=150,
        unseen_engine=150,
    ),
}
# the code-switched utterances of each speech split go to this dataset split (train's stay in train)
CODESWITCH_SPLITS = {"train": "train", "dev": "dev_codeswitch", "test": "test_codeswitch"}
UNSEEN_ENGINE_SPLIT = "test_unseen_engine"

# ----------------------------------------------------------------------------------------------
# Word lists
# ----------------------------------------------------------------------------------------------

EN_FIRST = (
    "james john jon robert michael william david richard joseph thomas charles daniel matthew anthony mark "
    "steven paul andrew kevin brian sean shawn alan mary patricia jennifer linda elizabeth barbara susan "
    "jessica sarah karen nancy lisa emily michelle laura amanda rebecca rachel olivia emma sophia grace "
    "chloe hannah lucas ethan noah liam catherine kathryn"
).split()
EN_LAST = (
    "smith johnson williams brown jones miller davis wilson anderson taylor moore jackson martin lee "
    "thompson white harris clark lewis robinson walker young allen king wright scott green baker adams "
    "nelson hill campbell mitchell roberts carter phillips evans turner parker collins edwards stewart "
    "stuart morris murphy cook rogers morgan cooper peterson reed reid gray grey"
).split()
EN_POI_NAMES = (
    "riverside;oakwood;maple;cedar;pine hill;lakeview;sunset;harbor;union;central;north park;westfield;"
    "eastgate;highland;greenwood;fairview;brookside;springfield;hillcrest;kingston;victoria;liberty;"
    "madison;franklin;jefferson;lincoln;washington;clifton;ashford;bridgeport;silver lake;river bend;"
    "stonebridge;willow creek;meadowbrook;elmwood"
).split(";")
EN_POI_TYPES = (
    "mall;station;hospital;library;stadium;park;plaza;hotel;museum;high school;medical center;"
    "shopping center;train station;parking garage;market;cinema;community center;university"
).split(";")
EN_NEARBY = (
    "gas station;charging station;parking lot;coffee shop;restaurant;pharmacy;hospital;car wash;"
    "rest area;supermarket;cash machine;hotel"
).split(";")
EN_ARTIST_FIRST = (
    "ava leo mia max zoe kai nina omar ruby felix iris oscar luna jasper stella milo hazel finn violet silas"
).split()
EN_ARTIST_LAST = "ray stone hart fox lane knight rivers blake woods moon frost wilde cruz vance banks hale shaw quinn".split()
EN_BAND_ADJ = (
    "midnight electric silver velvet crimson golden wild lonely neon broken paper northern hollow quiet lucky"
).split()
EN_BAND_NOUN = "owls tigers rivers hearts kings ghosts lights wolves foxes machines sparrows pilots dreamers strangers".split()
EN_SONG_ADJ = (
    "summer golden broken endless silent midnight little lonely wild blue electric sweet distant paper "
    "falling burning secret morning winter crazy"
).split()
EN_SONG_NOUN = (
    "rain heart road dreams fire river sky lights love night city ocean stars shadows wings roses "
    "thunder memories highway moon"
).split()
EN_WINDOWS = ("driver side", "passenger side", "rear left", "rear right")
EN_SEATS = ("driver", "passenger", "rear")
EN_TIME_SUFFIX = (
    "",
    " in the morning",
    " in the evening",
    " tonight",
    " tomorrow morning",
    " this afternoon",
)

ZH_SURNAMES = "张章施师石时付傅江姜于余俞程成龚宫魏卫戴代王李刘陈杨黄赵周吴孙朱马胡郭林何高罗郑梁谢宋唐韩冯邓曹彭田潘袁蔡杜叶苏萧"
ZH_GIVEN = (
    "伟 玮 炜 静 婧 丽 莉 军 君 杰 洁 涛 韬 明 铭 华 平 萍 刚 钢 芳 方 敏 闽 鹏 朋 辉 晖 婷 庭 飞 菲 燕 艳 强 勇 娜 "
    "建国 志强 海燕 晓明 小明 雨轩 宇轩 欣怡 心怡 浩然 思远 佳琪 嘉琪 俊杰 峻杰 文博 雅静 建华 国庆"
).split()
ZH_POI_NAMES = (
    "人民 中山 解放 建国 和平 东方 世纪 阳光 星河 金桥 长江 黄河 西湖 南湖 北海 滨江 新城 花园 未来 科技 光明 "
    "幸福 友谊 胜利 朝阳 青年 文化 白云 红星 天河"
).split()
ZH_POI_TYPES = "广场 公园 医院 加油站 停车场 火车站 购物中心 图书馆 体育馆 大酒店 博物馆 电影院 服务区 充电站 超市 大学".split()
ZH_NEARBY = "加油站 充电站 停车场 咖啡馆 餐厅 药店 医院 洗车店 服务区 超市 银行 酒店".split()
ZH_ARTIST_SURNAMES = "周林陈王邓蔡孙刘张薛李莫梁许萧"
ZH_ARTIST_GIVEN = (
    "晓雨 子墨 一鸣 雨桐 思琪 天宇 嘉欣 星辰 若曦 浩宇 语嫣 书豪 佳怡 志远 文静 明轩 雅婷 梦瑶".split()
)
ZH_BAND_ADJ = "蓝色 午夜 银色 红色 青春 自由 星空 月亮".split()
ZH_BAND_NOUN = "海洋 飞鸟 森林 列车 少年 花园 光年 旅人".split()
ZH_SONG_ADJ = "夏天 遥远 温柔 孤独 快乐 安静 永远 昨天 明天 冬天 春天 秘密 梦里 城市 海边 夜晚 美丽 勇敢 年轻 最后".split()
ZH_SONG_NOUN = (
    "风 星光 雨 故事 歌 约定 花 月亮 海 时光 旅行 告白 心跳 晚安 远方 天空 回忆 世界 微笑 信".split()
)
LEVELS = range(1, 11)  # fan speed, volume
TEMPERATURES = range(16, 31)
MINUTES = (5, 10, 15, 20, 30, 45)
EN_TIME_FORMS = (
    "{h} o'clock",
    "{h} thirty",
    "{h} fifteen",
    "{h} forty five",
    "half past {h}",
    "quarter to {h}",
)
ZH_WINDOWS = ("主驾", "副驾", "左后", "右后", "所有")
ZH_SEATS = ("主驾", "副驾", "后排")
ZH_DAYPARTS = ("早上", "上午", "中午", "下午", "晚上", "明天早上")
ZH_MINUTES = ("", "半", "一刻", "十五分", "四十分", "零五分", "二十分")

# (category, template). Entity slots: {contact} {poi} {artist} {song}; others are filled from lists.
EN_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("nav", "navigate to {poi}"),
    ("nav", "take me to {poi}"),
    ("nav", "drive to {poi} please"),
    ("nav", "how long will it take to get to {poi}"),
    ("nav", "find a route to {poi} avoiding highways"),
    ("nav", "add {poi} as a stop"),
    ("nav", "find the nearest {nearby}"),
    ("nav", "is there a {nearby} near {poi}"),
    ("music", "play {song} by {artist}"),
    ("music", "play some music by {artist}"),
    ("music", "i want to listen to {song}"),
    ("music", "put on {song}"),
    ("music", "play the latest album from {artist}"),
    ("music", "add {song} to my playlist"),
    ("music", "set the volume to {level}"),
    ("music", "skip this song"),
    ("music", "pause the music"),
    ("call", "call {contact}"),
    ("call", "call {contact} on the mobile"),
    ("call", "dial {contact} at home"),
    ("call", "send a message to {contact} saying i will be {minutes} minutes late"),
    ("call", "read my last message from {contact}"),
    ("call", "text {contact} that i am on my way"),
    ("climate", "set the temperature to {temp} degrees"),
    ("climate", "set the driver side temperature to {temp} degrees"),
    ("climate", "turn the fan speed to level {level}"),
    ("climate", "open the {window} window"),
    ("climate", "close the {window} window"),
    ("climate", "open the {window} window halfway"),
    ("climate", "turn on the {seat} seat heater"),
    ("climate", "turn on the air conditioning"),
    ("time", "remind me to call {contact} at {time}"),
    ("time", "set an alarm for {time}"),
    ("time", "what will the traffic be like at {time}"),
    ("time", "leave for {poi} at {time}"),
)
ZH_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("nav", "导航到{poi}"),
    ("nav", "带我去{poi}"),
    ("nav", "去{poi}怎么走"),
    ("nav", "到{poi}还要多久"),
    ("nav", "把{poi}设为途经点"),
    ("nav", "附近有没有{nearby}"),
    ("nav", "帮我找最近的{nearby}"),
    ("music", "播放{artist}的{song}"),
    ("music", "我想听{song}"),
    ("music", "来一首{artist}的歌"),
    ("music", "播放{song}"),
    ("music", "把{song}加入收藏"),
    ("music", "音量调到{level}"),
    ("music", "下一首"),
    ("music", "暂停播放"),
    ("call", "打电话给{contact}"),
    ("call", "给{contact}打电话"),
    ("call", "呼叫{contact}"),
    ("call", "给{contact}发消息说我{minutes}分钟后到"),
    ("call", "读一下{contact}发来的消息"),
    ("climate", "把温度调到{temp}度"),
    ("climate", "把空调调到{temp}度"),
    ("climate", "风量调到{level}档"),
    ("climate", "打开{window}车窗"),
    ("climate", "关闭{window}车窗"),
    ("climate", "把{window}车窗打开一半"),
    ("climate", "打开{seat}座椅加热"),
    ("climate", "打开空调"),
    ("time", "{time}提醒我给{contact}打电话"),
    ("time", "设一个{time}的闹钟"),
    ("time", "{time}出发去{poi}"),
)
TEMPLATES = {"en": EN_TEMPLATES, "zh": ZH_TEMPLATES}
_SLOT_RE = re.compile(r"\{(\w+)\}")

# Code-switched requests, both directions: (carrier language, category, template); a slot `{en:song}` takes an
# entity of that language (of the utterance's split), spoken by that language's voice.
CODESWITCH_TEMPLATES: tuple[tuple[str, str, str], ...] = (
    ("zh", "music", "播放{en:song}"),
    ("zh", "music", "我想听{en:artist}的{en:song}"),
    ("zh", "music", "来一首{en:artist}的歌"),
    ("zh", "music", "把{en:song}加入收藏"),
    ("zh", "nav", "导航到{en:poi}"),
    ("zh", "nav", "带我去{en:poi}"),
    ("zh", "call", "给{en:contact}打电话"),
    ("zh", "call", "打电话给{en:contact}"),
    ("en", "call", "call {zh:contact}"),
    ("en", "call", "text {zh:contact} that i am on my way"),
    ("en", "nav", "navigate to {zh:poi}"),
    ("en", "nav", "take me to {zh:poi}"),
    ("en", "music", "play {zh:song}"),
    ("en", "music", "play some music by {zh:artist}"),
    ("en", "music", "play {zh:song} by {zh:artist}"),
)
_CS_SLOT_RE = re.compile(r"\{(en|zh):(\w+)\}")
CODESWITCH_PAUSE = (0.08, 0.25)  # seconds of silence at each language boundary, drawn per boundary

# Speakers: (espeak voice, variants). Dev/test use variants that training never uses.
SPEAKER_VARIANTS = {
    "train": ("m1", "m2", "m3", "m4", "f1", "f2", "f4"),
    "dev": ("m5", "f3"),
    "test": ("m6", "f5"),
}
EN_VOICES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland")
ZH_VOICES = ("cmn-latn-pinyin",)
SPEAKERS_PER_SPLIT = {"en": {"train": 32, "dev": 6, "test": 6}, "zh": {"train": 12, "dev": 4, "test": 4}}


# The unseen engine: Debian's flite and the voices compiled into it (diphone kal/kal16, clustergen awb/rms/slt),
# English only, in test_unseen_engine and nowhere else.
FLITE_VOICES = ("kal16", "awb", "rms", "slt", "kal")
UNSEEN_ENGINE_SPEAKERS = 10


@dataclass(frozen=True)
class Speaker:
    """A synthetic voice. espeak-ng: base voice, variant, pitch (0-99) and speed (words per minute); flite: its
    voice and speed (percent of the voice's own rate; variant and pitch unused)."""

    voice: str
    variant: str
    pitch: int
    speed: int
    engine: str = "espeak-ng"

    @property
    def name(self) -> str:
        if self.engine == "flite":
            return f"flite:{self.voice}-s{self.speed}"
        return f"{self.voice}+{self.variant}-p{self.pitch}-s{self.speed}"

    def args(self) -> tuple[str, ...]:
        """The engine program's voice options (`espeak-ng -v V -p P -s S`, `flite -voice V --setf ...`)."""
        if self.engine == "flite":
            return ("-voice", self.voice, "--setf", f"duration_stretch={100 / self.speed:.4f}")
        return ("-v", f"{self.voice}+{self.variant}", "-p", str(self.pitch), "-s", str(self.speed))


# what `synthesize` takes: the stretches (text, language, engine, voice args) in order, the seconds of silence
# between consecutive stretches, the gain, and the whole utterance's text and language (for its phonemes)
SynthJob = tuple[tuple[tuple[str, str, str, tuple[str, ...]], ...], tuple[float, ...], float, str, str]


@dataclass
class ScriptLine:
    """One line of the recording script: a sentence, its language and (dataset) split, and who says it how loud.
    A code-switched line (language "mixed") is said in `parts`, (language, text) stretches, each by the voice of
    its language in `voices`, with `pauses` seconds of silence at the boundaries."""

    text: str
    language: str
    split: str
    entities: list[str] = field(default_factory=list)
    template: str = ""  # the grammar template it was drawn from
    speaker: Speaker | None = None
    gain: float = 1.0
    parts: list[tuple[str, str]] = field(default_factory=list)
    voices: dict[str, Speaker] = field(default_factory=dict)
    pauses: list[float] = field(default_factory=list)

    @property
    def speaker_name(self) -> str:
        """The `speaker` column: the voice's name, or a code-switched line's voices as `EN|ZH`."""
        if self.voices:
            return "|".join(self.voices[language].name for language in LANGUAGES)
        return self.speaker.name

    @property
    def engine(self) -> str:
        return next(iter(self.voices.values())).engine if self.voices else self.speaker.engine

    def job(self) -> SynthJob:
        parts = self.parts or [(self.language, self.text)]
        voices = [self.voices.get(language) or self.speaker for language, _ in parts]
        stretches = tuple((text, lang, v.engine, v.args()) for (lang, text), v in zip(parts, voices))
        return stretches, tuple(self.pauses), self.gain, self.text, self.language


# ----------------------------------------------------------------------------------------------
# Entities and text
# ----------------------------------------------------------------------------------------------


def _entity_lists(language: str) -> dict[str, list[str]]:
    """All entity names per type (deterministic order, deduplicated)."""
    if language == "en":
        lists = {
            "contact": [f"{first} {last}" for first in EN_FIRST for last in EN_LAST],
            "poi": [f"{n} {t}" for n in EN_POI_NAMES for t in EN_POI_TYPES],
            "artist": [f"{first} {last}" for first in EN_ARTIST_FIRST for last in EN_ARTIST_LAST]
            + [f"the {a} {n}" for a in EN_BAND_ADJ for n in EN_BAND_NOUN],
            "song": [f"{a} {n}" for a in EN_SONG_ADJ for n in EN_SONG_NOUN],
        }
    else:
        lists = {
            "contact": [s + g for s in ZH_SURNAMES for g in ZH_GIVEN],
            "poi": [n + t for n in ZH_POI_NAMES for t in ZH_POI_TYPES],
            "artist": [s + g for s in ZH_ARTIST_SURNAMES for g in ZH_ARTIST_GIVEN]
            + [a + n + "乐队" for a in ZH_BAND_ADJ for n in ZH_BAND_NOUN],
            "song": [a + "的" + n for a in ZH_SONG_ADJ for n in ZH_SONG_NOUN],
        }
    return {kind: list(dict.fromkeys(names)) for kind, names in lists.items()}


def partition_entities(
    rng: np.random.Generator, held_out: float = 0.1
) -> dict[str, dict[str, dict[str, list[str]]]]:
    """language -> split -> entity type -> names; dev and test each get `held_out` of every type."""
    out: dict[str, dict[str, dict[str, list[str]]]] = {}
    for language in LANGUAGES:
        out[language] = {split: {} for split in SPEECH_SPLITS}
        for kind, names in _entity_lists(language).items():
            order = rng.permutation(len(names))
            n_held = max(1, int(round(held_out * len(names))))
            parts = {
                "dev": order[:n_held],
                "test": order[n_held : 2 * n_held],
                "train": order[2 * n_held :],
            }
            for split, idx in parts.items():
                out[language][split][kind] = [names[i] for i in sorted(idx)]
    return out


def _en_time(rng: np.random.Generator) -> str:
    h = number_to_words(int(rng.integers(1, 13)))[0]
    body = EN_TIME_FORMS[int(rng.integers(len(EN_TIME_FORMS)))].format(h=h)
    return body + EN_TIME_SUFFIX[int(rng.integers(len(EN_TIME_SUFFIX)))]


def _zh_small(number: int) -> str:
    """Mandarin numeral with 两 for a bare 2 (两点, 两档)."""
    return "两" if number == 2 else number_to_hanzi(number)


def _fill_slot(slot: str, language: str, rng: np.random.Generator) -> str:
    def pick(options: Sequence):
        return options[int(rng.integers(len(options)))]

    if language == "en":
        if slot == "nearby":
            return pick(EN_NEARBY)
        if slot == "level":
            return number_to_words(pick(LEVELS))[0]
        if slot == "temp":
            return " ".join(number_to_words(pick(TEMPERATURES)))
        if slot == "minutes":
            return " ".join(number_to_words(pick(MINUTES)))
        if slot == "window":
            return pick(EN_WINDOWS)
        if slot == "seat":
            return pick(EN_SEATS)
        if slot == "time":
            return _en_time(rng)
    else:
        if slot == "nearby":
            return pick(ZH_NEARBY)
        if slot == "level":
            return _zh_small(pick(LEVELS))
        if slot == "temp":
            return number_to_hanzi(pick(TEMPERATURES))
        if slot == "minutes":
            return number_to_hanzi(pick(MINUTES))
        if slot == "window":
            return pick(ZH_WINDOWS)
        if slot == "seat":
            return pick(ZH_SEATS)
        if slot == "time":
            return pick(ZH_DAYPARTS) + _zh_small(int(rng.integers(1, 13))) + "点" + pick(ZH_MINUTES)
    raise KeyError(f"unknown slot {slot!r}")


def slot_choices(slot: str, language: str) -> int:
    """How many different fills `_fill_slot` can give a list slot."""
    if slot in ("level", "temp", "minutes"):
        return len({"level": LEVELS, "temp": TEMPERATURES, "minutes": MINUTES}[slot])
    if slot == "time":
        return 12 * (
            len(EN_TIME_FORMS) * len(EN_TIME_SUFFIX)
            if language == "en"
            else len(ZH_DAYPARTS) * len(ZH_MINUTES)
        )
    lists = {
        "en": {"nearby": EN_NEARBY, "window": EN_WINDOWS, "seat": EN_SEATS},
        "zh": {"nearby": ZH_NEARBY, "window": ZH_WINDOWS, "seat": ZH_SEATS},
    }
    return len(lists[language][slot])


def held_out_cap(template: str, language: str) -> float:
    """How many dev + test sentences a template may give: unbounded for one with an entity slot (its held-out
    entities keep them unseen), else HELD_OUT_SHARE of its sentences (so a fixed command like "pause the music"
    never leaves training, and training keeps most of every small template)."""
    if _has_entity(template):
        return math.inf
    return int(HELD_OUT_SHARE * math.prod(slot_choices(s, language) for s in _SLOT_RE.findall(template)))


def _has_entity(template: str) -> bool:
    return any(slot in ENTITY_TYPES for slot in _SLOT_RE.findall(template))


def generate_sentence(
    language: str,
    entities: dict[str, list[str]],
    rng: np.random.Generator,
    require_entity: bool = False,
    closed: set[str] | frozenset[str] = frozenset(),
) -> tuple[str, list[str], str]:
    """One request from the grammar (not from a template in `closed`), with the entity names it mentions and
    its template."""
    templates = [
        t for _, t in TEMPLATES[language] if (not require_entity or _has_entity(t)) and t not in closed
    ]
    template = templates[int(rng.integers(len(templates)))]
    used: list[str] = []

    def fill(match: re.Match) -> str:
        slot = match.group(1)
        if slot in ENTITY_TYPES:
            names = entities[slot]
            name = names[int(rng.integers(len(names)))]
            used.append(name)
            return name
        return _fill_slot(slot, language, rng)

    return _SLOT_RE.sub(fill, template), used, template


def generate_texts(
    spec: SizeSpec, entities: dict[str, dict[str, dict[str, list[str]]]], rng: np.random.Generator
) -> tuple[list[ScriptLine], list[str]]:
    """Sentences for every split (unique across splits) and the text-only corpus.

    Dev/test are drawn first, from that split's held-out entities: 80% from templates with an entity slot,
    20% from any template, an entity-free template giving at most `held_out_cap` of them (dev and test
    together), so every template is trained on. Training then never repeats a dev/test sentence. The text
    corpus is training's sentences plus independent draws from the grammar over training's entities (dev/test
    sentences left out): a template's sentences recur as often as it is drawn, so small templates are not
    rarer in the text than large ones.
    """
    taken: set[str] = set()
    utterances: list[ScriptLine] = []
    held: dict[tuple[str, str], int] = {}  # (language, template) -> dev + test sentences drawn from it
    for split in ("dev", "test", "train"):
        count = getattr(spec, split)
        for language in LANGUAGES:
            pool = entities[language][split]
            made, attempts = 0, 0
            while made < count:
                attempts += 1
                if attempts > 200 * count:
                    raise RuntimeError(f"grammar too small for {count} unique {language} {split} sentences")
                require = split != "train" and rng.random() < 0.8
                closed = set()
                if split != "train":
                    closed = {
                        t
                        for _, t in TEMPLATES[language]
                        if held.get((language, t), 0) >= held_out_cap(t, language)
                    }
                text, used, template = generate_sentence(language, pool, rng, require, closed)
                if text in taken:
                    continue
                taken.add(text)
                if split != "train":
                    held[language, template] = held.get((language, template), 0) + 1
                utterances.append(
                    ScriptLine(text=text, language=language, split=split, entities=used, template=template)
                )
                made += 1
    heldout = {u.text for u in utterances if u.split != "train"}
    corpus = [u.text for u in utterances if u.split == "train"]
    per_language = max(0, spec.text_corpus - len(corpus)) // len(LANGUAGES)
    for language in LANGUAGES:
        added, attempts = 0, 0
        while added < per_language:
            attempts += 1
            if attempts > 100 * per_language:
                raise RuntimeError(f"the grammar's {language} training sentences are nearly all held out")
            text, _, _ = generate_sentence(language, entities[language]["train"], rng)
            if text not in heldout:
                corpus.append(text)
                added += 1
    order = rng.permutation(len(corpus))
    return utterances, [corpus[i] for i in order]


def codeswitch_parts(
    template: str, carrier: str, entities: dict[str, dict[str, list[str]]], rng: np.random.Generator
) -> tuple[list[tuple[str, str]], list[str]]:
    """A code-switched template filled: its (language, text) stretches in order (neighbours of one language
    merged) and the entity names used; `entities[language][type]` are the names to draw from."""
    parts: list[tuple[str, str]] = []
    used: list[str] = []

    def add(language: str, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if parts and parts[-1][0] == language:
            joiner = "" if language == "zh" else " "
            parts[-1] = (language, parts[-1][1] + joiner + text)
        else:
            parts.append((language, text))

    at = 0
    for match in _CS_SLOT_RE.finditer(template):
        add(carrier, template[at : match.start()])
        language, kind = match.groups()
        names = entities[language][kind]
        name = names[int(rng.integers(len(names)))]
        used.append(name)
        add(language, name)
        at = match.end()
    add(carrier, template[at:])
    return parts, used


def codeswitch_text(parts: Sequence[tuple[str, str]]) -> str:
    """The transcript of code-switched stretches: joined by a space at each language boundary."""
    return " ".join(text for _, text in parts)


def generate_codeswitch(
    spec: SizeSpec,
    entities: dict[str, dict[str, dict[str, list[str]]]],
    rng: np.random.Generator,
    taken: set[str],
) -> list[ScriptLine]:
    """Code-switched lines for train, dev_codeswitch and test_codeswitch (`CODESWITCH_SPLITS`): each speech
    split's names in both languages, no sentence in two splits or in `taken` (which it extends)."""
    lines: list[ScriptLine] = []
    for split in ("dev", "test", "train"):
        count = spec.codeswitch_train if split == "train" else spec.codeswitch_held
        pool = {language: entities[language][split] for language in LANGUAGES}
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            if attempts > 200 * count:
                raise RuntimeError(f"code-switched grammar too small for {count} unique {split} sentences")
            carrier, _, template = CODESWITCH_TEMPLATES[int(rng.integers(len(CODESWITCH_TEMPLATES)))]
            parts, used = codeswitch_parts(template, carrier, pool, rng)
            text = codeswitch_text(parts)
            if text in taken:
                continue
            taken.add(text)
            lines.append(ScriptLine(text, "mixed", CODESWITCH_SPLITS[split], used, template, parts=parts))
            made += 1
    return lines


def generate_unseen_engine(
    spec: SizeSpec,
    entities: dict[str, dict[str, dict[str, list[str]]]],
    rng: np.random.Generator,
    taken: set[str],
) -> list[ScriptLine]:
    """English lines for test_unseen_engine: each names test entities (so none is a training or text-corpus
    sentence), none in `taken` (which it extends)."""
    lines: list[ScriptLine] = []
    attempts = 0
    while len(lines) < spec.unseen_engine:
        attempts += 1
        if attempts > 200 * spec.unseen_engine:
            raise RuntimeError(f"grammar too small for {spec.unseen_engine} unseen-engine sentences")
        text, used, template = generate_sentence("en", entities["en"]["test"], rng, require_entity=True)
        if text in taken:
            continue
        taken.add(text)
        lines.append(ScriptLine(text, "en", UNSEEN_ENGINE_SPLIT, used, template))
    return lines


def make_flite_speakers(rng: np.random.Generator, n: int = UNSEEN_ENGINE_SPEAKERS) -> list[Speaker]:
    """flite voices for test_unseen_engine: every voice of FLITE_VOICES in turn, each at a drawn speed (85-115%
    of its own rate)."""
    speakers: dict[str, Speaker] = {}
    i = 0
    while len(speakers) < n:
        voice = FLITE_VOICES[i % len(FLITE_VOICES)]
        i += 1
        speaker = Speaker(voice, "", 0, int(rng.integers(85, 116)), engine="flite")
        speakers.setdefault(speaker.name, speaker)
    return list(speakers.values())


def make_speakers(rng: np.random.Generator) -> dict[str, dict[str, list[Speaker]]]:
    """language -> split -> speakers. Variants are disjoint between train, dev and test."""
    out: dict[str, dict[str, list[Speaker]]] = {}
    for language in LANGUAGES:
        voices = EN_VOICES if language == "en" else ZH_VOICES
        out[language] = {}
        for split in SPEECH_SPLITS:
            combos = [(v, var) for v in voices for var in SPEAKER_VARIANTS[split]]
            speakers: dict[str, Speaker] = {}
            want = SPEAKERS_PER_SPLIT[language][split]
            i = 0
            while len(speakers) < want:
                voice, variant = combos[i % len(combos)]  # cycle so every voice/variant is used
                i += 1
                speaker = Speaker(voice, variant, int(rng.integers(35, 76)), int(rng.integers(145, 191)))
                speakers.setdefault(speaker.name, speaker)
            out[language][split] = list(speakers.values())
    return out


# ----------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------


def tts_input(text: str, language: str) -> str:
    """What espeak-ng reads: the English text, or space-separated tone-numbered pinyin."""
    return " ".join(hanzi_to_pinyin(text)) if language == "zh" else text


# libespeak-ng's C API (speak_lib.h), called in process: a synthesis takes ~5 ms, starting the espeak-ng program
# for each utterance ~17 ms more.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_POS_CHARACTER = 1
_ESPEAK_ENDPAUSE = 0x1000  # the flags the espeak-ng program synthesizes with (its first utterance is
# byte-identical to this API's)
SYNTH_CHUNK = 64  # utterances per fresh synthesizer (see `synthesize_chunk`)


class Espeak:
    """libespeak-ng in this process, synthesizing into memory. espeak-ng keeps some state from one utterance to
    the next (an utterance repeated comes out a few samples longer or shorter), so the audio of an utterance
    depends on what this synthesizer said before it: `synthesize_chunk` gives every chunk a fresh one."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as err:
            raise RuntimeError(
                f"libespeak-ng is not installed ({err}; run `make system` or apt-get install espeak-ng)"
            ) from err
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )
        self._pieces: list[np.ndarray] = []

        def collect(wav, n, _events):
            if n > 0:
                self._pieces.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = callback_type(collect)  # referenced for as long as the library may call it
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def say(self, text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
        """float32 samples at `sample_rate` (what `espeak-ng -v VOICE -p PITCH -s SPEED --stdout TEXT` writes)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, int(speed), 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
        data = text.encode("utf-8")
        self._pieces = []
        status = self.lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_ENDPAUSE, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed ({status}) on {text!r}")
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0


def _voice(args: Sequence[str]) -> tuple[str, int, int]:
    """(voice, pitch, speed) from an espeak-ng `Speaker.args()` (the espeak-ng program's `-v V -p P -s S`)."""
    opts = dict(zip(args[::2], args[1::2]))
    if len(args) != 6 or set(opts) != {"-v", "-p", "-s"}:
        raise ValueError(f"expected espeak args -v VOICE -p PITCH -s SPEED, got {list(args)}")
    return opts["-v"], int(opts["-p"]), int(opts["-s"])


def flite_say(text: str, args: Sequence[str]) -> tuple[np.ndarray, int]:
    """(float32 samples, sample rate) of `flite ARGS -t TEXT` (its voices run at 8 or 16 kHz)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        done = subprocess.run(["flite", *args, "-t", text, "-o", str(path)], capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            raise RuntimeError(f"flite failed on {text!r} with {list(args)}: {done.stderr.strip()}")
        wave, sr = sf.read(str(path), dtype="float32")
    return wave, int(sr)


def say_stretch(
    text: str, language: str, engine_name: str, args: Sequence[str], espeak: Espeak
) -> np.ndarray:
    """One stretch of speech at TARGET_SR, by espeak-ng (`espeak`, in this process) or flite."""
    if engine_name == "flite":
        wave, sr = flite_say(text, args)
    elif engine_name == "espeak-ng":
        wave, sr = espeak.say(tts_input(text, language), *_voice(args)), espeak.sample_rate
    else:
        raise ValueError(f"unknown speech engine {engine_name!r} (espeak-ng or flite)")
    return resample(wave, sr, TARGET_SR)


# a sample at most this far below a stretch's peak counts as silence when a boundary is trimmed (-40 dB)
SILENCE_LEVEL = 0.01


def voiced_span(wave: np.ndarray, level: float = SILENCE_LEVEL) -> tuple[int, int]:
    """[start, end) from the first to the last sample louder than `level` times the peak ((0, 0) if silent)."""
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    loud = np.flatnonzero(np.abs(wave) > level * peak) if peak > 0 else np.zeros(0, dtype=np.int64)
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, 0)


def join_stretches(waves: Sequence[np.ndarray], pauses: Sequence[float], sr: int = TARGET_SR) -> np.ndarray:
    """Stretches said by different voices as one utterance: the silence a synthesizer leaves at an inner
    boundary trimmed (`voiced_span`), every stretch brought to the loudness of the first (RMS over its voiced
    span), and `pauses[i]` seconds of digital silence between stretch i and i + 1."""
    if len(pauses) != len(waves) - 1:
        raise ValueError(f"{len(waves)} stretches need {len(waves) - 1} pauses, got {len(pauses)}")
    pieces: list[np.ndarray] = []
    reference = None
    for i, wave in enumerate(waves):
        start, end = voiced_span(wave)
        rms = float(np.sqrt(np.mean(np.square(wave[start:end])))) if end > start else 0.0
        reference = rms if reference is None else reference
        piece = wave[start if i else 0 : end if i + 1 < len(waves) else len(wave)]
        if i:
            pieces.append(np.zeros(int(round(pauses[i - 1] * sr)), dtype=np.float32))
        pieces.append(piece * (reference / rms) if rms > 0 and reference > 0 else piece)
    return np.concatenate(pieces).astype(np.float32)


def synthesize(job: SynthJob, espeak: Espeak) -> tuple[bytes, str, float]:
    """`ScriptLine.job()` -> (16 kHz 16-bit FLAC bytes, space-joined phonemes, duration in s): each stretch
    said by its engine (espeak-ng in `espeak`), joined (`join_stretches`), peak-normalised to the gain."""
    stretches, pauses, gain, text, language = job
    waves = [say_stretch(t, lang, engine, args, espeak) for t, lang, engine, args in stretches]
    wave = waves[0] if len(waves) == 1 else join_stretches(waves, pauses)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak > 0:
        wave = wave * (gain * 0.9 / peak)
    phonemes = " ".join(p for p, _ in text_to_phonemes(text, language if language in LANGUAGES else None))
    return encode_audio(wave, TARGET_SR), phonemes, len(wave) / TARGET_SR


def synthesize_chunk(jobs: Sequence[SynthJob]) -> list[tuple[bytes, str, float]]:
    """`synthesize` of each job in order, by one synthesizer that has said nothing before. Run it in a process
    of its own (espeak-ng cannot be reset in place): `synthesize_all` does."""
    engine = Espeak()
    return [synthesize(job, engine) for job in jobs]


def synthesize_all(jobs: list[SynthJob], workers: int) -> list[tuple[bytes, str, float]]:
    """Every job, in chunks of SYNTH_CHUNK consecutive jobs, each chunk in a fresh process (`workers` at a
    time): the audio depends only on the jobs, not on the number of workers."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (run `make system` or apt-get install espeak-ng)")
    if shutil.which("flite") is None and any(e == "flite" for job in jobs for _, _, e, _ in job[0]):
        raise RuntimeError("flite is not installed (run `make system` or apt-get install flite)")
    # load CMUdict and pypinyin's dictionaries, and librosa's resampler (imported lazily, its numba functions
    # loaded on first use: 1.7 s), before forking: every chunk's process shares them instead of loading its own
    text_to_phonemes("the", "en"), text_to_phonemes("你好", "zh"), tts_input("你好", "zh")
    resample(np.zeros(441, np.float32), 22050, TARGET_SR)
    chunks = [jobs[i : i + SYNTH_CHUNK] for i in range(0, len(jobs), SYNTH_CHUNK)]
    results: list[tuple[bytes, str, float]] = []
    with (
        multiprocessing.get_context("fork").Pool(max(1, workers), maxtasksperchild=1) as pool,
        tqdm(total=len(jobs), desc="synthesizing", unit="utt") as bar,
    ):
        for done in pool.imap(synthesize_chunk, chunks):
            results += done
            bar.update(len(done))
    return results


def make_probe(kind: str, seed: int, index: int, others: Sequence[np.ndarray]) -> np.ndarray:
    """One probe clip: 1-4 s of digital silence or noise at -40..-15 dBFS RMS (deterministic)."""
    rng = np.random.default_rng([seed, PROBE_KINDS.index(kind), index])
    n = int(rng.uniform(1.0, 4.0) * TARGET_SR)
    if kind == "silence":
        return np.zeros(n, dtype=np.float32)
    noise = {
        "babble": lambda: babble(others, n, rng),
        "vehicle": lambda: vehicle_noise(n, rng),
        "music": lambda: music_noise(n, rng),
        "white": lambda: white_noise(n, rng),
    }[kind]()
    level = 10 ** (float(rng.uniform(-40.0, -15.0)) / 20.0)
    wave = noise * level
    return (wave * min(1.0, 0.99 / float(np.max(np.abs(wave))))).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------

FEATURES = Features(
    {
        "id": Value("string"),
        "audio": Audio(sampling_rate=TARGET_SR, decode=False),
        "text": Value("string"),
        "language": Value("string"),
        "speaker": Value("string"),
        "engine": Value("string"),  # espeak-ng, or flite (test_unseen_engine); "" for the probes
        "phonemes": Value("string"),
        "entities": HFSequence(Value("string")),
        "duration": Value("float32"),
        "split": Value("string"),
    }
)


def _table(rows: list[dict]) -> Dataset:
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    audio = columns.pop("audio")
    plain = Features({k: v for k, v in FEATURES.items() if k != "audio"})
    ds = Dataset.from_dict(columns, features=plain)
    # Audio.encode_example needs torchcodec; adding raw structs and casting needs only Arrow.
    ds = ds.add_column("audio", audio).cast_column("audio", FEATURES["audio"])
    return ds.select_columns(list(FEATURES))


@dataclass
class CorpusPlan:
    """Everything decided before synthesis: entity partition, speakers, sentences and their speakers."""

    size: str
    spec: SizeSpec
    seed: int
    entities: dict[str, dict[str, dict[str, list[str]]]]
    speakers: dict[str, dict[str, list[Speaker]]]
    utterances: list[ScriptLine]
    text_corpus: list[str]
    unseen_speakers: list[Speaker] = field(default_factory=list)  # the flite voices of test_unseen_engine

    def jobs(self) -> list[SynthJob]:
        return [u.job() for u in self.utterances]


def plan_corpus(size: str | SizeSpec = "tiny", seed: int = 0) -> CorpusPlan:
    """Draw texts, speaker assignment and gains for a corpus (fast, no audio); deterministic in `seed`."""
    if isinstance(size, SizeSpec):
        name, spec = "custom", size
    elif size in SIZES:
        name, spec = size, SIZES[size]
    else:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    rng = np.random.default_rng(seed)
    entities = partition_entities(rng)
    speakers = make_speakers(rng)
    utterances, text_corpus = generate_texts(spec, entities, rng)
    for utt in utterances:
        pool = speakers[utt.language][utt.split]
        utt.speaker = pool[int(rng.integers(len(pool)))]
        utt.gain = float(rng.uniform(0.5, 1.0))
    # code-switched and unseen-engine lines come after, from a stream of their own: the monolingual corpus is
    # the one the seed gave before they existed
    extra = np.random.default_rng([seed, 27])
    taken = {u.text for u in utterances} | set(text_corpus)
    mixed = generate_codeswitch(spec, entities, extra, taken)
    home = {dataset_split: split for split, dataset_split in CODESWITCH_SPLITS.items()}
    for utt in mixed:
        pools = {language: speakers[language][home[utt.split]] for language in LANGUAGES}
        utt.voices = {language: pool[int(extra.integers(len(pool)))] for language, pool in pools.items()}
        utt.pauses = [float(extra.uniform(*CODESWITCH_PAUSE)) for _ in utt.parts[1:]]
        utt.gain = float(extra.uniform(0.5, 1.0))
    unseen = generate_unseen_engine(spec, entities, extra, taken)
    flite = make_flite_speakers(extra) if unseen else []
    for utt in unseen:
        utt.speaker = flite[int(extra.integers(len(flite)))]
        utt.gain = float(extra.uniform(0.5, 1.0))
    text_corpus = text_corpus + [u.text for u in mixed if u.split == "train"]
    return CorpusPlan(name, spec, seed, entities, speakers, utterances + mixed + unseen, text_corpus, flite)


def build_corpus(
    out: str | Path, size: str | SizeSpec = "tiny", seed: int = 0, workers: int = 2
) -> DatasetDict:
    """Synthesize the corpus into `out` (see module docstring) and return the DatasetDict."""
    start = time.perf_counter()
    out = Path(out)
    plan = plan_corpus(size, seed)
    spec, utterances = plan.spec, plan.utterances
    vocab = PhonemeVocab.default()
    logger.info("synthesizing %d utterances with %d workers", len(utterances), workers)
    results = synthesize_all(plan.jobs(), workers)

    rows: dict[str, list[dict]] = {split: [] for split in SPEECH_SPLITS}
    for utt, (flac, phonemes, duration) in zip(utterances, results):
        vocab.encode(phonemes.split())  # fail loudly on a symbol missing from configs/phonemes
        split_rows = rows.setdefault(utt.split, [])
        uid = f"{utt.split}-{utt.language}-{len(split_rows):05d}"
        split_rows.append(
            {
                "id": uid,
                "audio": {"bytes": flac, "path": f"{uid}.flac"},
                "text": utt.text,
                "language": utt.language,
                "speaker": utt.speaker_name,
                "engine": utt.engine,
                "phonemes": phonemes,
                "entities": utt.entities,
                "duration": duration,
                "split": utt.split,
            }
        )

    spoken = [
        r for r in rows["train"] if r["language"] in LANGUAGES
    ]  # the babble of the corpus before mixing
    talkers = [load_audio(r["audio"]["bytes"]) for r in spoken[:: max(1, len(spoken) // 48)]]
    for kind in PROBE_KINDS:
        split = f"probe_{kind}"
        rows[split] = []
        for i in tqdm(range(spec.probes), desc=split, unit="clip", leave=False):
            wave = make_probe(kind, seed, i, talkers)
            uid = f"{split}-{i:05d}"
            rows[split].append(
                {
                    "id": uid,
                    "audio": {"bytes": encode_audio(wave), "path": f"{uid}.flac"},
                    "text": "",
                    "language": "",
                    "speaker": "",
                    "engine": "",
                    "phonemes": "",
                    "entities": [],
                    "duration": len(wave) / TARGET_SR,
                    "split": split,
                }
            )
    dataset = DatasetDict({split: _table(split_rows) for split, split_rows in rows.items()})

    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "dataset", out / "hotwords"):
        if stale.exists():
            logger.info("replacing %s", stale)
            shutil.rmtree(stale)
    dataset.save_to_disk(str(out / "dataset"))
    (out / "hotwords").mkdir()
    hotwords: dict[str, list[str]] = {}
    for split in [name for name in rows if not name.startswith("probe_")]:
        hotwords[split] = sorted({name for r in rows[split] for name in r["entities"]})
        (out / "hotwords" / f"{split}.txt").write_text("\n".join(hotwords[split]) + "\n", encoding="utf-8")
    (out / "text_corpus.txt").write_text("\n".join(plan.text_corpus) + "\n", encoding="utf-8")
    elapsed = time.perf_counter() - start
    (out / "README.md").write_text(
        _readme(plan, workers, dataset, hotwords, elapsed),
        encoding="utf-8",
    )
    logger.info("corpus %s (seed %d) written to %s in %.1f s", plan.size, seed, out, elapsed)
    return dataset


def _espeak_version() -> str:
    try:
        text = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
        return text.split("Data at")[0].strip()
    except OSError:
        return "unknown"


def _readme(
    plan: CorpusPlan, workers: int, dataset: DatasetDict, hotwords: dict[str, list[str]], elapsed: float
) -> str:
    speakers = plan.speakers
    lines = [
        "# entropy-asr synthetic in-car corpus",
        "",
        f"Built by `entropy-asr make-corpus --size {plan.size} --seed {plan.seed} --workers {workers}` "
        f"in {elapsed:.1f} s with {_espeak_version()}.",
        "",
        "Bilingual (English `en`, Mandarin `zh`) in-car voice-assistant requests, synthesized with espeak-ng",
        "(Mandarin read from tone-numbered pinyin by the `cmn-latn-pinyin` voice), resampled to 16 kHz and",
        "stored as 16-bit FLAC bytes in an `Audio(sampling_rate=16000, decode=False)` column. Load with",
        "`training.data.loading.load_speech_dataset(OUT/dataset)`.",
        "",
        "Entities (contacts, points of interest, artists, songs) are split 80/10/10 per type, so dev/test",
        "mention entities never seen in training; no sentence occurs in two splits; dev/test voices use",
        "espeak variants never used in training. Mandarin contacts include homophones (e.g. 张伟/章伟).",
        "",
        "Code-switched requests (language `mixed`: a Mandarin carrier with English names, or an English carrier",
        "with Mandarin names) are said stretch by stretch, each language by a voice of that language from the",
        "split's pool (the `speaker` column names both, `EN|ZH`), the stretches brought to one loudness and",
        f"joined with {CODESWITCH_PAUSE[0]:g}-{CODESWITCH_PAUSE[1]:g} s of silence at each language boundary; "
        "train has some, `dev_codeswitch`",
        "and `test_codeswitch` hold the rest (dev/test voices and names). `test_unseen_engine` holds English",
        "test-name requests said by another synthesizer, flite (`engine` column), which no other split uses.",
        "",
        "## Splits",
        "",
        "| split | utterances | en | zh | mixed | hours | speakers |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ds in dataset.items():
        langs = ds["language"]
        hours = sum(ds["duration"]) / 3600
        n_spk = len(set(ds["speaker"]) - {""})
        counts = " | ".join(str(langs.count(language)) for language in (*LANGUAGES, "mixed"))
        lines.append(f"| {name} | {len(ds)} | {counts} | {hours:.2f} | {n_spk} |")
    lines += ["", "## Voices per split", ""]
    for language in LANGUAGES:
        for split in SPEECH_SPLITS:
            names = ", ".join(s.name for s in speakers[language][split])
            lines.append(f"- {language} {split}: {names}")
    if plan.unseen_speakers:
        lines.append(f"- en {UNSEEN_ENGINE_SPLIT}: " + ", ".join(s.name for s in plan.unseen_speakers))
    lines += [
        "",
        "## Other files",
        "",
        f"- `text_corpus.txt`: {len(plan.text_corpus)} sentences for language-model pretraining (train entities "
        "only,",
        "  no dev/test sentence).",
        "- `hotwords/{split}.txt`: entity names occurring in the split ("
        + ", ".join(f"{s}: {len(h)}" for s, h in hotwords.items())
        + ").",
        "- Probe splits (`probe_*`) have empty transcripts: 1-4 s of digital silence or babble, vehicle,",
        "  music or white noise at -40..-15 dBFS; any non-empty output on them is a hallucination.",
        "",
        "Columns: id, audio, text, language, speaker, engine, phonemes (space-joined, configs/phonemes/en-zh.txt),",
        "entities (entity names in the utterance), duration (s), split.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
