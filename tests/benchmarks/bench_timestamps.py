"""Word-timestamp accuracy of the phoneme CTC head (run by `make bench`): the demo's exported model on clips whose
word boundaries are known to the sample (tests/timestamps_clips.py: words of built-in test sentences synthesized
one at a time in the sentence's test voice, trimmed, joined by 0.1-0.6 s of silence or abutting), for each
candidate boundary rule: median and maximum absolute start and end error per language, the share of words off by
more than 300 ms, and the alignment's time per clip. It needs `make demo` to have run (the model and the corpus);
ENTROPY_ASR_DEMO_DIR names another checkout whose demo has (default: this one)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow
DEMO = Path(os.environ.get("ENTROPY_ASR_DEMO_DIR", REPO))
MODEL = DEMO / "runs" / "demo-full" / "export" / "model"
DATA = DEMO / "data" / "corpus-full" / "dataset"
SENTENCES_PER_LANGUAGE = 40  # ~300 English words and ~270 Mandarin pieces of 1-2 Hanzi
SEED = 7
TARGET_MEDIAN_S, TARGET_MAX_S = 0.080, 0.300


def _blank_extension(log_probs, unit_targets, frame_seconds, duration, blank_below=0.999):
    """The candidate rule not taken: a unit spans its first to its last spike frame, its end extended over the
    following frames while the blank posterior stays below `blank_below` (not yet silence), up to the next unit's
    first spike."""
    from modeling.alignment_entropy_asr import BLANK_FRAME, ctc_forced_align

    path = ctc_forced_align(log_probs, [t for unit in unit_targets for t in unit])
    unit_of = [u for u, unit in enumerate(unit_targets) for _ in unit]
    frames: dict[int, list[int]] = {}
    for frame, token in enumerate(path):
        if token != BLANK_FRAME:
            frames.setdefault(unit_of[token], []).append(frame)
    blank = log_probs[:, 0].exp().tolist()
    spoken = sorted(frames)
    out: list[tuple[float, float] | None] = [None] * len(unit_targets)
    for i, u in enumerate(spoken):
        stop = frames[spoken[i + 1]][0] if i + 1 < len(spoken) else len(path)
        end = frames[u][-1] + 1
        while end < stop and blank[end] < blank_below:
            end += 1
        out[u] = (min(frames[u][0] * frame_seconds, duration), min(end * frame_seconds, duration))
    return out


def _rules(frame_seconds: float) -> dict:
    """Candidate boundary rules: name -> f(log_probs, unit_targets, duration) -> [(start, end) | None]."""
    from modeling.alignment_entropy_asr import unit_timestamps

    def rule(**kw):
        return lambda lp, targets, duration: unit_timestamps(
            lp, targets, frame_seconds, duration=duration, **kw
        )

    spikes = {"min_duration": 0.0, "tail": frame_seconds / 2, "stray_gap": math.inf}
    return {
        "first to last spike": rule(**spikes),
        "spikes, end + 0.2 s": rule(**{**spikes, "tail": 0.2}),
        "spikes, end over blanks < 0.999": lambda lp, targets, duration: _blank_extension(
            lp, targets, frame_seconds, duration
        ),
        "spikes, end at next start": rule(**{**spikes, "min_duration": math.inf}),
        "chosen, stray spikes kept": rule(stray_gap=math.inf),
        "chosen (the defaults)": rule(),
    }


def _clips_and_log_probs(model, processor) -> list[tuple]:
    """(clip, (T, V) CTC log-probs, unit targets) for SENTENCES_PER_LANGUAGE test sentences per language."""
    from datasets import load_from_disk

    from modeling.phonemizer_entropy_asr import split_units
    from tests.timestamps_clips import random_timed_clip
    from training.data.g2p import text_to_phonemes

    table = load_from_disk(str(DATA / "test")).remove_columns("audio")
    rng = np.random.default_rng(SEED)
    out = []
    for language in ("en", "zh"):
        rows = [i for i, lang in enumerate(table["language"]) if lang == language]
        for i in rng.choice(rows, SENTENCES_PER_LANGUAGE, replace=False):
            row = table[int(i)]
            clip = random_timed_clip(row["text"], language, row["speaker"], rng)
            inputs = processor(audio=[clip.audio])
            hidden, lengths = model.model.encode(inputs["input_features"], inputs["input_features_mask"])
            log_probs = model.model.ctc_head(hidden)[0, : int(lengths[0])].float().log_softmax(-1)
            phonemes = text_to_phonemes(clip.text, language)
            unit_targets = [
                tuple(processor.ctc_vocab.index(p) for p, unit in phonemes if unit == k)
                for k in range(len(split_units(clip.text)))
            ]
            out.append((clip, log_probs, unit_targets))
    return out


def _errors(rule, measured) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per language: absolute start and end errors (s) of every synthesized piece (a word, or 1-2 Hanzi)."""
    errors: dict[str, tuple[list, list]] = {"en": ([], []), "zh": ([], [])}
    for clip, log_probs, unit_targets in measured:
        stamps = rule(log_probs, unit_targets, clip.duration)
        starts, ends = errors[clip.language]
        for units, (start, end) in zip(clip.piece_units, clip.spans):
            starts.append(abs(stamps[units[0]][0] - start))
            ends.append(abs(stamps[units[-1]][1] - end))
    return {lang: (np.array(s), np.array(e)) for lang, (s, e) in errors.items()}


@pytest.fixture(scope="module")
@torch.inference_mode()
def chosen_errors() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Measure every candidate rule on the same clips, print the figures, return the chosen rule's errors."""
    if not (MODEL.is_dir() and DATA.is_dir()):
        pytest.skip("needs `make demo`'s model and corpus")
    from transformers import AutoModel, AutoProcessor

    from modeling.alignment_entropy_asr import encoder_frame_seconds, unit_timestamps

    model = AutoModel.from_pretrained(str(MODEL), trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(str(MODEL), trust_remote_code=True)
    frame_seconds = encoder_frame_seconds(model.config)
    measured = _clips_and_log_probs(model, processor)

    print(
        f"\n[bench_timestamps] {len(measured)} clips, {frame_seconds * 1000:.0f} ms frames; ms, median / max"
    )
    results = {}
    for name, rule in _rules(frame_seconds).items():
        results[name] = errors = _errors(rule, measured)
        cells = []
        for lang, (starts, ends) in errors.items():
            off = 100 * np.mean((starts > TARGET_MAX_S) | (ends > TARGET_MAX_S))
            cells.append(
                f"{lang} ({len(starts)}): start {1000 * np.median(starts):3.0f} / {1000 * starts.max():4.0f}, "
                f"end {1000 * np.median(ends):3.0f} / {1000 * ends.max():4.0f}, > 300 ms {off:4.1f}%"
            )
        print(f"  {name:32s} " + " | ".join(cells))

    t0 = time.perf_counter()
    for clip, log_probs, unit_targets in measured:
        unit_timestamps(log_probs, unit_targets, frame_seconds, duration=clip.duration)
    per_clip = (time.perf_counter() - t0) / len(measured)
    mean_s = np.mean([clip.duration for clip, _, _ in measured])
    print(
        f"  alignment + timestamps: {1000 * per_clip:.1f} ms per clip (mean clip {mean_s:.1f} s, "
        f"{torch.get_num_threads()} CPU threads)"
    )
    return results["chosen (the defaults)"]


MANDARIN_SHORTFALL = (
    "the demo model's phoneme head emits the last two or three syllables of a Mandarin sentence in the trailing "
    "silence, up to ~1.7 s after they were spoken (on the corpus's own test clips too): 12-21% of the pieces are "
    "off by more than 300 ms, which also lifts the median end error to 85-105 ms (~77 ms over the other pieces)"
)


@pytest.mark.parametrize(
    "language", ["en", pytest.param("zh", marks=pytest.mark.xfail(reason=MANDARIN_SHORTFALL, strict=False))]
)
def test_word_timestamps_on_known_boundaries(chosen_errors, language):
    starts, ends = chosen_errors[language]
    assert np.median(starts) <= TARGET_MEDIAN_S and np.median(ends) <= TARGET_MEDIAN_S
    assert starts.max() <= TARGET_MAX_S and ends.max() <= TARGET_MAX_S
