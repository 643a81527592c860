"""Hotword retrieval (companion paper): hotwords stored as phoneme sequences in an Aho-Corasick automaton;
the greedy phoneme-CTC hypothesis of a clip is scanned once, and the hotwords whose phonemes occur in it
go into the prompt's context. Overlapping matches: the longest wins (then the earliest).

Homophones share a phoneme sequence (张伟/章伟), so a match can name several hotwords; all of them are
returned and the LLM picks the spelling. `ignore_tones` drops Mandarin tone digits on both sides, which
trades precision for recall when the CTC head confuses tones.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from training.data.g2p import MANDARIN_INITIALS

_TONE = re.compile(r"(?<=[a-zêv])[1-5]$")


def _strip_tone(symbol: str) -> str:
    """`ang3` -> `ang`; a syllabic nasal keeps a mark (`n2` -> `n~`) so it does not become the initial `n`."""
    base = _TONE.sub("", symbol)
    return base + "~" if base != symbol and base in MANDARIN_INITIALS else base


@dataclass(frozen=True)
class HotwordMatch:
    start: int  # phoneme index in the hypothesis
    end: int  # one past the last phoneme
    hotwords: tuple[str, ...]  # every hotword with this phoneme sequence (homophones)


class HotwordIndex:
    """Aho-Corasick automaton over phoneme symbols.

    >>> index = HotwordIndex.from_phonemes({"liberty park": "L IH B ER T IY P AA R K".split()})
    >>> index.retrieve("D R AY V T UW L IH B ER T IY P AA R K P L IY Z".split())
    ['liberty park']
    """

    def __init__(self, ignore_tones: bool = False, min_phonemes: int = 3):
        if min_phonemes < 1:
            raise ValueError(f"min_phonemes must be >= 1, got {min_phonemes}")
        self.ignore_tones = ignore_tones
        self.min_phonemes = min_phonemes
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
    def from_phonemes(cls, entries: dict[str, Sequence[str]], **kwargs) -> HotwordIndex:
        index = cls(**kwargs)
        for word, phonemes in entries.items():
            index.add(word, phonemes)
        return index.build()

    @classmethod
    def from_hotwords(cls, hotwords: Iterable[str], **kwargs) -> HotwordIndex:
        """Phonemes by the project's G2P (CMUdict/espeak-ng for English, pypinyin for Mandarin)."""
        from training.context import phoneme_key

        index = cls(**kwargs)
        for word in dict.fromkeys(w.strip() for w in hotwords):
            if word:
                index.add(word, phoneme_key(word))
        return index.build()

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> HotwordIndex:
        """One hotword per line (blank lines and lines starting with # ignored)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"hotword file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise ValueError(f"hotword file {path} is not UTF-8 text: {err}") from err
        return cls.from_hotwords((ln for ln in lines if not ln.lstrip().startswith("#")), **kwargs)

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

    def build(self) -> HotwordIndex:
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
        self._built = True
        return self

    def __len__(self) -> int:
        return sum(len(w) for w in self._words)

    # ---------------------------------------------------------------------------------- querying
    def matches(self, phonemes: Sequence[str]) -> list[HotwordMatch]:
        """Every occurrence of a stored sequence in `phonemes` (overlaps included), in order of end."""
        if not self._built:
            self.build()
        found: list[HotwordMatch] = []
        node = 0
        for i, p in enumerate(self._normalise(phonemes)):
            sym = self._symbols.get(p)
            if sym is None:
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
                hit = self._out_link[hit]
        return found

    def search(self, phonemes: Sequence[str]) -> list[HotwordMatch]:
        """Non-overlapping matches, longest first (ties: earliest), returned in hypothesis order."""
        chosen: list[HotwordMatch] = []
        taken: set[int] = set()
        for m in sorted(self.matches(phonemes), key=lambda m: (-(m.end - m.start), m.start)):
            span = set(range(m.start, m.end))
            if span & taken:
                continue
            taken |= span
            chosen.append(m)
        return sorted(chosen, key=lambda m: m.start)

    def retrieve(self, phonemes: Sequence[str] | str, max_hotwords: int | None = None) -> list[str]:
        """Hotwords for the context of a clip whose greedy CTC hypothesis is `phonemes` (a list or a
        space-separated string), in hypothesis order, without repeats, at most `max_hotwords`."""
        if isinstance(phonemes, str):
            phonemes = phonemes.split()
        out: list[str] = []
        for m in self.search(phonemes):
            out.extend(w for w in m.hotwords if w not in out)
        return out[:max_hotwords] if max_hotwords is not None else out
