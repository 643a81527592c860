"""Hotword retrieval (companion paper): hotwords stored as phoneme sequences in an Aho-Corasick automaton;
the greedy phoneme-CTC hypothesis of a clip is scanned once, and the hotwords whose phonemes occur in it
go into the prompt's context. Overlapping matches: the longest wins (then the earliest).

Homophones share a phoneme sequence (张伟/章伟), so a match can name several hotwords; all of them are
returned and the LLM picks the spelling. `ignore_tones` drops Mandarin tone digits on both sides, which
trades precision for recall when the CTC head confuses tones.

`max_edits` > 0 (ours; the paper matches exactly) also finds hotwords whose phonemes occur with up to that many
substitutions, insertions or deletions, one per `phonemes_per_edit` phonemes of the hotword (names shorter
than FUZZY_MIN_PHONEMES stay exact): each such hotword is cut into edits + 1 pieces, one of which must then occur exactly (pigeonhole);
a second automaton over the pieces scans the hypothesis again, and an edit-distance alignment of the whole
hotword around each piece found checks the candidate.
"""

from __future__ import annotations

import re
from collections import Counter, deque
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

    def retrieve(self, phonemes: Sequence[str] | str, max_hotwords: int | None = None) -> list[str]:
        """Hotwords for the context of a clip whose greedy CTC hypothesis is `phonemes` (a list or a
        space-separated string), in hypothesis order, without repeats, at most `max_hotwords`."""
        if isinstance(phonemes, str):
            phonemes = phonemes.split()
        out: list[str] = []
        for m in self.search(phonemes):
            out.extend(w for w in m.hotwords if w not in out)
        return out[:max_hotwords] if max_hotwords is not None else out
