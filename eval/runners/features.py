"""Encoder states on a dataset split and frame labels by CTC forced alignment (method.md section 4).

Frame labels. Each encoder frame that lies inside the speech gets a phoneme P and a semantic unit S:

- Phoneme-CTC models (the default case): the reference phoneme sequence (`training.data.g2p.
  text_to_phonemes` on the transcript, as the corpus and the CTC targets use) is force-aligned (Viterbi,
  `eval.alignment`) to the log-probabilities of a phoneme CTC head. That head is the model's own, or the
  head of `label_model` when one is given (then every analysed model is labelled on the same frames; its
  encoder must have the same frame rate). A blank frame between two emissions takes the label of the
  segment it lies in; leading and trailing blank frames are dropped.
- Character-CTC models (the conventional baseline: its `ctc_vocab` holds letters, Hanzi and the word
  separator `|` instead of phonemes) and no `label_model`: the reference *character* sequence
  (`text_to_chars`) is aligned with the model's own head, every frame of a character takes that
  character's unit, frames of a `|` segment (between words) are dropped, and the unit's phonemes are
  spread evenly, in order, over the unit's frames (phoneme j of k over frames [j n / k, (j + 1) n / k)).
  P is then an approximation (phoneme boundaries inside a word are not observed); S is exact.

The CTC head kind is read from the vocabulary: it is character-level iff it holds the word separator `|`
(`training.data.g2p.WORD_SEPARATOR`), which no phoneme inventory contains.

Semantic units S: a unit is a word (English) or a character (Mandarin), as `split_units` segments the
transcript. Its id is its *lexical identity*, the unit string itself, made an integer by one table shared
over the whole run (all utterances, all models): "play" is one class wherever it occurs, and homophones
(张 and 章, both `zh ang1`) are different classes. So CSAI asks how much word identity beyond phonetics a
linear probe reads from a frame, which is what "semantic anchoring" means; with per-utterance positions
instead, the classes would not be comparable across utterances.

Pronunciations: every frame also gets the id of its unit's pronunciation, the unit's reference phoneme string
(`text_to_phonemes`, e.g. "zh ang1" for both 张 and 章), from one table shared over the run. The headline CSAI
conditions on it, so what it counts is what the encoder knows beyond how the unit sounds.

Utterances the alignment cannot fit (fewer frames than targets plus adjacent repeats), with symbols
outside the CTC vocabulary, or with no phonemes are skipped with a warning and counted by reason.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from eval.alignment import ctc_forced_align, frame_labels
from modeling.phonemizer_entropy_asr import is_hanzi, split_units
from training.data.g2p import WORD_SEPARATOR, text_to_chars, text_to_phonemes
from training.data.splits import Utterance

logger = logging.getLogger(__name__)

PHONEME = "phoneme"
CHARACTER = "character"

# label sources, as written in the reports
OWN_PHONEME_HEAD = "own_phoneme_head"
LABEL_MODEL_PHONEME_HEAD = "label_model_phoneme_head"
OWN_CHARACTER_HEAD_EVEN_SPLIT = "own_character_head_even_split"

UNIT_DEFINITION = (
    "semantic unit S = the word (English) or character (Mandarin) a phoneme belongs to (split_units), "
    "identified by its lexical string over the whole run (one class per word/character type); its "
    "pronunciation = its reference phoneme string (homophones share one)"
)


# --------------------------------------------------------------------------------------------------------
# Encoder states and CTC log-probabilities
# --------------------------------------------------------------------------------------------------------


def ctc_unit_kind(ctc_vocab: Sequence[str]) -> str:
    """ "character" for a character CTC vocabulary (it holds the word separator), else "phoneme"."""
    if not ctc_vocab:
        raise ValueError("the model has no CTC vocabulary: frame labels need a CTC head")
    return CHARACTER if WORD_SEPARATOR in ctc_vocab else PHONEME


@dataclass
class EncoderOutputs:
    """Per-utterance encoder states (T_i, d) and CTC log-probabilities (T_i, V), float32, valid frames only."""

    states: list[np.ndarray]
    log_probs: list[np.ndarray]


@torch.inference_mode()
def encode_utterances(
    model: Any,
    processor: Any,
    audios: Sequence[np.ndarray],
    batch_size: int = 8,
    desc: str = "encoding",
) -> EncoderOutputs:
    """Run the encoder and the CTC head over clips in batches of similar length (less padding).

    Features come from the processor exactly as at inference (`processor(audio=...)`); the batching is a
    function of the clip lengths only, so two models see the same padding and, for the same weights, give
    identical states.
    """
    order = sorted(range(len(audios)), key=lambda i: (len(audios[i]), i))
    states: list[np.ndarray | None] = [None] * len(audios)
    log_probs: list[np.ndarray | None] = [None] * len(audios)
    device = next(model.parameters()).device
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, unit="batch", disable=None):
        inputs = processor(audio=[audios[i] for i in idx])
        feats = inputs["input_features"].to(device)
        mask = inputs["input_features_mask"].to(device)
        hidden, lengths = model.model.encode(feats, mask)  # (B, T, d), (B,)
        lp = model.model.ctc_head(hidden).float().log_softmax(-1)  # (B, T, V)
        for row, (i, n) in enumerate(zip(idx, lengths.tolist())):
            states[i] = hidden[row, :n].float().cpu().numpy()
            log_probs[i] = lp[row, :n].cpu().numpy()
    return EncoderOutputs(states, log_probs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Reference targets and frame labels
# --------------------------------------------------------------------------------------------------------


class LabelError(ValueError):
    """An utterance that cannot be labelled; `reason` is the skip-count key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ReferenceTargets:
    """Phonemes of a transcript with the index of their unit, and the unit strings (`split_units`)."""

    phonemes: list[str]
    phoneme_units: list[int]
    units: list[str]


def reference_targets(text: str, language: str | None = None) -> ReferenceTargets:
    language = language if language in ("en", "zh") else None
    pairs = text_to_phonemes(text, language)
    return ReferenceTargets([p for p, _ in pairs], [u for _, u in pairs], split_units(text))


@dataclass
class UtteranceLabels:
    """Labels of the kept frames of one utterance.

    keep: (T,) bool over the utterance's valid encoder frames; phonemes: (M,) phoneme symbols;
    units: (M,) unit indices into the utterance's `split_units`; token_index: (M,) index of the aligned
    target token (a phoneme in phoneme mode, a character in character mode); unit_pronunciations: the
    pronunciation of each unit of `split_units` (its phonemes joined by spaces; "" for a unit without any).
    """

    keep: np.ndarray
    phonemes: list[str]
    units: np.ndarray
    token_index: np.ndarray
    unit_pronunciations: list[str] = field(default_factory=list)


def unit_pronunciations(targets: ReferenceTargets) -> list[str]:
    """Each unit's phonemes joined by spaces, in unit order ("" for a unit without phonemes)."""
    phones: list[list[str]] = [[] for _ in targets.units]
    for p, u in zip(targets.phonemes, targets.phoneme_units):
        phones[u].append(p)
    return [" ".join(p) for p in phones]


def _target_ids(symbols: Sequence[str], vocab_index: dict[str, int]) -> list[int]:
    missing = sorted({s for s in symbols if s not in vocab_index})
    if missing:
        raise LabelError("symbol_not_in_ctc_vocab", f"symbols {missing[:5]} are not in the CTC vocabulary")
    return [vocab_index[s] for s in symbols]


def _align(log_probs: np.ndarray, targets: list[int], blank: int) -> list[int]:
    try:
        return ctc_forced_align(log_probs, targets, blank=blank)
    except ValueError as err:
        reason = "too_short_for_alignment" if "cannot align" in str(err) else "alignment_failed"
        raise LabelError(reason, str(err)) from err


def phoneme_frame_labels(
    log_probs: np.ndarray, targets: ReferenceTargets, ctc_vocab: Sequence[str], blank: int = 0
) -> UtteranceLabels:
    """Align the reference phonemes to a phoneme head's (T, V) log-probs; label the frames (module doc)."""
    if not targets.phonemes:
        raise LabelError("no_phonemes", "the transcript has no phonemes")
    ids = _target_ids(targets.phonemes, {s: i for i, s in enumerate(ctc_vocab)})
    path = _align(log_probs, ids, blank)
    fl = frame_labels(path, ids, targets.phoneme_units)
    return UtteranceLabels(
        fl.keep,
        [targets.phonemes[k] for k in fl.token_index],
        fl.units,
        fl.token_index,
        unit_pronunciations(targets),
    )


def _chars_with_units(units: list[str]) -> tuple[list[str], list[int]]:
    """`text_to_chars` with the unit index of every character (-1 for the word separator)."""
    chars: list[str] = []
    owners: list[int] = []
    for u, unit in enumerate(units):
        if u > 0 and not (is_hanzi(units[u - 1]) and is_hanzi(unit)):
            chars.append(WORD_SEPARATOR)
            owners.append(-1)
        chars.extend(unit)
        owners.extend([u] * len(unit))
    return chars, owners


def character_frame_labels(
    log_probs: np.ndarray,
    text: str,
    targets: ReferenceTargets,
    ctc_vocab: Sequence[str],
    blank: int = 0,
) -> UtteranceLabels:
    """Align the reference characters to a character head; spread each unit's phonemes over its frames."""
    if not targets.phonemes:
        raise LabelError("no_phonemes", "the transcript has no phonemes")
    chars, owners = _chars_with_units(targets.units)
    if chars != text_to_chars(text):  # the separator rule must stay the one the baseline was trained on
        raise AssertionError(f"character targets of {text!r} disagree with text_to_chars")
    ids = _target_ids(chars, {s: i for i, s in enumerate(ctc_vocab)})
    fl = frame_labels(_align(log_probs, ids, blank), ids, owners)
    phones_of: dict[int, list[str]] = {}
    for p, u in zip(targets.phonemes, targets.phoneme_units):
        phones_of.setdefault(u, []).append(p)
    keep_kept = np.zeros(len(fl.units), dtype=bool)
    phonemes = np.empty(len(fl.units), dtype=object)
    for u in np.unique(fl.units):
        pos = np.flatnonzero(fl.units == u)  # the unit's frames, in time order (contiguous)
        phones = phones_of.get(int(u), []) if u >= 0 else []
        if not phones:
            continue  # separator frames, or a unit without phonemes
        k, n = len(phones), len(pos)
        keep_kept[pos] = True
        phonemes[pos] = [phones[(i * k) // n] for i in range(n)]
    keep = fl.keep.copy()
    keep[np.flatnonzero(fl.keep)[~keep_kept]] = False
    return UtteranceLabels(
        keep,
        list(phonemes[keep_kept]),
        fl.units[keep_kept],
        fl.token_index[keep_kept],
        unit_pronunciations(targets),
    )


@dataclass
class LabelledSet:
    """Frame labels of a set of utterances (None for a skipped one) and the skip counts by reason."""

    labels: list[UtteranceLabels | None]
    skipped: Counter = field(default_factory=Counter)
    source: str = OWN_PHONEME_HEAD


def label_utterances(
    utterances: Sequence[Utterance],
    log_probs: Sequence[np.ndarray],
    ctc_vocab: Sequence[str],
    blank: int = 0,
    source: str = OWN_PHONEME_HEAD,
) -> LabelledSet:
    """Frame labels for every utterance from the given CTC head's log-probs (mode from its vocabulary)."""
    kind = ctc_unit_kind(ctc_vocab)
    if kind == CHARACTER:
        source = OWN_CHARACTER_HEAD_EVEN_SPLIT
    out = LabelledSet([], Counter(), source)
    for utt, lp in zip(utterances, log_probs):
        targets = reference_targets(utt.text, utt.language)
        try:
            if kind == PHONEME:
                labels = phoneme_frame_labels(lp, targets, ctc_vocab, blank)
            else:
                labels = character_frame_labels(lp, utt.text, targets, ctc_vocab, blank)
            if not labels.keep.any():
                raise LabelError("no_labelled_frames", "no frame kept after alignment")
        except LabelError as err:
            logger.warning("skipping %s for frame labels (%s): %s", utt.id, err.reason, err)
            out.skipped[err.reason] += 1
            labels = None
        out.labels.append(labels)
    if out.skipped:
        logger.warning(
            "frame labels: skipped %d of %d utterances (%s)",
            sum(out.skipped.values()),
            len(utterances),
            dict(out.skipped),
        )
    return out


# --------------------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------------------


class SymbolTable:
    """Strings -> consecutive integer ids in order of first appearance (shared over a run)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def ids(self, symbols: Sequence[str]) -> np.ndarray:
        return np.array([self.index.setdefault(s, len(self.index)) for s in symbols], dtype=np.int64)

    @property
    def symbols(self) -> list[str]:
        return list(self.index)


@dataclass
class PooledFrames:
    """Kept frames of all labelled utterances, pooled: the inputs of `entropy_allocation_scores`."""

    states: np.ndarray  # (N, d) float32
    phonemes: np.ndarray  # (N,) int64, ids in the run's phoneme table
    units: np.ndarray  # (N,) int64, ids in the run's unit table (lexical identity)
    utterance_ids: np.ndarray  # (N,) str
    utterances: list[str]  # ids of the utterances that contributed frames
    pronunciations: np.ndarray  # (N,) int64, ids of the units' pronunciations in the run's table

    @property
    def n_frames(self) -> int:
        return int(self.states.shape[0])


def pool_frames(
    utterances: Sequence[Utterance],
    states: Sequence[np.ndarray],
    labelled: LabelledSet,
    phoneme_table: SymbolTable,
    unit_table: SymbolTable,
    pronunciation_table: SymbolTable | None = None,
) -> PooledFrames:
    """Concatenate the kept frames of `states` (T_i, d) with their (phoneme, unit, unit pronunciation) ids
    (`pronunciation_table`: the run's, shared like the other two; a fresh one when None)."""
    pronunciation_table = SymbolTable() if pronunciation_table is None else pronunciation_table
    blocks, phon, unit, pron, utt_ids, used = [], [], [], [], [], []
    for utt, z, lab in zip(utterances, states, labelled.labels):
        if lab is None:
            continue
        if len(lab.keep) != len(z):
            raise ValueError(
                f"{utt.id}: the labels cover {len(lab.keep)} frames but the encoder gave {len(z)}: the label "
                "model and the analysed model must have the same encoder frame rate"
            )
        unit_strings = split_units(utt.text)
        blocks.append(z[lab.keep])
        phon.append(phoneme_table.ids(lab.phonemes))
        unit.append(unit_table.ids([unit_strings[u] for u in lab.units]))
        if len(lab.unit_pronunciations) != len(unit_strings):
            raise ValueError(f"{utt.id}: the labels hold no pronunciation for each unit (label again)")
        pron.append(pronunciation_table.ids([lab.unit_pronunciations[u] for u in lab.units]))
        utt_ids.extend([utt.id] * int(lab.keep.sum()))
        used.append(utt.id)
    if not blocks:
        raise ValueError("no utterance could be labelled: nothing to analyse")
    return PooledFrames(
        np.concatenate(blocks).astype(np.float32, copy=False),
        np.concatenate(phon),
        np.concatenate(unit),
        np.array(utt_ids),
        used,
        np.concatenate(pron),
    )


def gather_kept(states: Sequence[np.ndarray], labelled: LabelledSet, name: str = "reference") -> np.ndarray:
    """The same kept frames from another encoder's states (e.g. the CKA reference), pooled in order."""
    blocks = []
    for i, (z, lab) in enumerate(zip(states, labelled.labels)):
        if lab is None:
            continue
        if len(lab.keep) != len(z):
            raise ValueError(
                f"utterance {i}: the {name} encoder gave {len(z)} frames, the analysed one {len(lab.keep)}; "
                "CKA needs the same frames (same front end and frame rate)"
            )
        blocks.append(z[lab.keep])
    return np.concatenate(blocks).astype(np.float32, copy=False)


def frames_per_second(utterances: Sequence[Utterance], states: Sequence[np.ndarray]) -> float:
    """Encoder frame rate measured on the data (frames / second of audio)."""
    seconds = sum(u.seconds for u in utterances)
    return sum(len(z) for z in states) / seconds if seconds > 0 else math.nan
