"""The lexicon a model folder carries (`phonemizer.json`), built from the training G2P (`training.data.g2p`).

`build_phonemizer(texts)` puts into one `Phonemizer` (modeling/phonemizer_entropy_asr.py) what the G2P would
answer: every CMUdict word a unit can spell (first pronunciation, stress removed), every word of `texts`
CMUdict lacks as espeak-ng reads it, every Hanzi of pypinyin's dictionary with the phonemes of its default
reading, and every phrase of pypinyin's phrase dictionary (its per-character phonemes where they differ from
the characters' defaults). The phonemizer then gives the G2P's phonemes for any text whose English words are in
the lexicon, without CMUdict, pypinyin or espeak-ng.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from modeling.phonemizer_entropy_asr import HANZI_RANGES, G2PError, Phonemizer, split_units

from .g2p import _cmudict, english_word_phonemes, is_hanzi, phoneme_symbols, pinyin_to_phonemes

logger = logging.getLogger(__name__)

# the CMUdict keys a unit can spell: units are runs of [a-z0-9'] without apostrophes at either end
_UNIT_WORD = re.compile(r"[a-z0-9](?:[a-z0-9']*[a-z0-9])?")
_HANZI_CHAR = re.compile(f"[{HANZI_RANGES}]")
_NO_DIGITS = str.maketrans(
    "", "", "0123456789"
)  # CMUdict's stress marks, as english_word_phonemes drops them

Reading = tuple[str, ...]


def _pinyin_phonemes(syllable: str) -> Reading | None:
    try:
        return pinyin_to_phonemes(syllable)
    except G2PError:
        return None


@lru_cache(maxsize=1)
def base_tables() -> tuple[
    dict[str, Reading], dict[str, Reading], dict[str, tuple[Reading | None, ...] | None]
]:
    """(words, hanzi, phrases) from CMUdict and pypinyin, the part of every lexicon that does not depend on
    texts (about 3 s; cached)."""
    from pypinyin import Style, lazy_pinyin  # lazy: pypinyin reads its dictionaries on import (0.2 s)
    from pypinyin.constants import PHRASES_DICT, PINYIN_DICT  # lazy: see above

    words = {
        word: tuple(p.translate(_NO_DIGITS) for p in entries[0])
        for word, entries in _cmudict().items()
        if entries and _UNIT_WORD.fullmatch(word)
    }

    def tone3(items: list[str]) -> list[str]:
        # a list is read item by item, each as one segment: a character alone takes its first reading,
        # a phrase its phrase reading, which is what pypinyin gives each segment of a run
        return lazy_pinyin(
            items, style=Style.TONE3, neutral_tone_with_five=True, errors=lambda chars: ["?"] * len(chars)
        )

    chars = sorted(chr(code) for code in PINYIN_DICT if _HANZI_CHAR.fullmatch(chr(code)))
    hanzi = {}
    for char, syllable in zip(chars, tone3(chars), strict=True):
        reading = _pinyin_phonemes(syllable)
        if reading is not None:  # a character the G2P cannot read stays out: the phonemizer cannot either
            hanzi[char] = reading
    keys = sorted(PHRASES_DICT)
    syllables = tone3(keys)  # one per character of every phrase, in order
    if len(syllables) != sum(map(len, keys)):
        raise RuntimeError("pypinyin did not read every phrase with one syllable per character")
    phrases: dict[str, tuple[Reading | None, ...] | None] = {}
    start = 0
    for phrase in keys:
        reading = tuple(_pinyin_phonemes(s) for s in syllables[start : start + len(phrase)])
        phrases[phrase] = None if reading == tuple(hanzi.get(c) for c in phrase) else reading
        start += len(phrase)
    return words, hanzi, phrases


def build_phonemizer(
    texts: Iterable[str] | None = None, phonemes: Sequence[str] | None = None, oov: str = "letters"
) -> Phonemizer:
    """A phonemizer that gives `text_to_phonemes`'s answer for every text whose English words are in CMUdict
    or in `texts` (those CMUdict lacks are read by espeak-ng now and stored). `phonemes`: the CTC inventory
    (default: the en-zh inventory); `oov`: the out-of-vocabulary rule stored with the lexicon."""
    words, hanzi, phrases = base_tables()
    words = dict(words)
    added = 0
    for text in texts or ():
        for unit in split_units(text):
            if is_hanzi(unit) or unit.isdigit() or unit in words:
                continue
            if "'" in unit and unit.replace("'", "") in words:  # the G2P's apostrophe fallback finds it
                continue
            words[unit] = tuple(english_word_phonemes(unit))
            added += 1
    inventory = list(phonemes) if phonemes is not None else phoneme_symbols()
    known = set(inventory)
    missing = {p for table in (words, hanzi) for reading in table.values() for p in reading} - known
    if missing:
        logger.warning("lexicon phonemes missing from the CTC inventory: %s", sorted(missing))
    logger.info("phonemizer lexicon: %d words (%d from the texts), %d Hanzi, %d phrases",
                len(words), added, len(hanzi), len(phrases))  # fmt: skip
    return Phonemizer(words, hanzi, phrases, inventory, oov)
