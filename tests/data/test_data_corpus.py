"""The synthetic in-car corpus: split hygiene, determinism, probes, outputs and the CLI hook."""

from __future__ import annotations

import argparse
import io
import re
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf

from training.data import corpus as C
from training.data.audio import load_audio
from training.data.g2p import PhonemeVocab, phoneme_string
from training.data.loading import SpeechDataset, load_speech_dataset

TINY_SEED = 7  # the seed tests/conftest.py builds the session's tiny corpus with


@pytest.fixture(scope="module")
def dataset(tiny_corpus):
    return load_speech_dataset(tiny_corpus / "dataset")


EXTRA_SPLITS = ("dev_codeswitch", "test_codeswitch", C.UNSEEN_ENGINE_SPLIT)


def test_splits_and_sizes(dataset):
    spec = C.SIZES["tiny"]
    assert set(dataset) == {"train", "dev", "test", *EXTRA_SPLITS} | {f"probe_{k}" for k in C.PROBE_KINDS}
    for split in C.SPEECH_SPLITS:
        languages = list(dataset[split]["language"])
        assert languages.count("en") == languages.count("zh") == getattr(spec, split)
        assert languages.count("mixed") == (spec.codeswitch_train if split == "train" else 0)
    for split in ("dev_codeswitch", "test_codeswitch"):
        assert list(dataset[split]["language"]) == ["mixed"] * spec.codeswitch_held
    assert list(dataset[C.UNSEEN_ENGINE_SPLIT]["language"]) == ["en"] * spec.unseen_engine
    for kind in C.PROBE_KINDS:
        assert len(dataset[f"probe_{kind}"]) == spec.probes


def test_codeswitched_lines_say_both_scripts_each_in_its_own_voice(dataset):
    from eval.asr_error_rate.scoring import detect_language

    for split in ("train", "dev_codeswitch", "test_codeswitch"):
        rows = [r for r in dataset[split].remove_columns("audio") if r["language"] == "mixed"]
        assert rows
        for row in rows:
            assert detect_language(row["text"]) == "mixed", row["text"]
            en, zh = row["speaker"].split("|")
            assert en.startswith("en") and zh.startswith("cmn-latn-pinyin"), row["speaker"]
            # the phonemes of both languages: a CMUdict symbol (upper case) and a pinyin initial/final
            assert any(p.isupper() for p in row["phonemes"].split()), row["text"]
            assert any(p.islower() for p in row["phonemes"].split()), row["text"]
    plan = C.plan_corpus("tiny", TINY_SEED)
    mixed = [u for u in plan.utterances if u.language == "mixed"]
    # both directions: Mandarin carriers with English names and English carriers with Mandarin names
    assert {u.parts[0][0] for u in mixed} == {"en", "zh"}
    home = {dataset_split: split for split, dataset_split in C.CODESWITCH_SPLITS.items()}
    for u in mixed:
        for language, voice in u.voices.items():  # one voice per language, from the home split's pool
            assert voice in plan.speakers[language][home[u.split]]
        assert C.codeswitch_text(u.parts) == u.text and len(u.pauses) == len(u.parts) - 1
        assert all(a[0] != b[0] for a, b in zip(u.parts, u.parts[1:]))  # stretches alternate languages


def silent_runs(wave: np.ndarray, level: float, shortest: float) -> list[tuple[float, float]]:
    """(start, length) in seconds of the inner runs of samples at most `level` times the peak, at least
    `shortest` s long."""
    quiet = np.abs(wave) <= level * np.abs(wave).max()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    runs = [(a / 16000, (b - a) / 16000) for a, b in zip(edges[::2], edges[1::2])]
    return [(a, n) for a, n in runs if n >= shortest and a > 0 and a + n < len(wave) / 16000]


def test_codeswitched_audio_has_the_planned_pause_at_each_boundary_and_one_loudness(dataset):
    plan = C.plan_corpus("tiny", TINY_SEED)
    mixed = [u for u in plan.utterances if u.split == "test_codeswitch"]
    stored = dataset["test_codeswitch"]
    assert [u.text for u in mixed] == list(stored["text"])
    for u, row in zip(mixed, stored):
        wave = load_audio(row["audio"])
        runs = silent_runs(wave, 0.01, 0.06)
        assert len(runs) == len(u.pauses), (u.text, runs, u.pauses)
        for (_, length), planned in zip(runs, u.pauses):
            # the planned silence, plus at most the quiet tail a stretch keeps below the whole clip's -40 dB
            assert planned - 1e-3 <= length <= planned + 0.1, (u.text, runs, u.pauses)
        bounds = [0.0] + [x for a, n in runs for x in (a, a + n)] + [len(wave) / 16000]
        levels = []
        for a, b in zip(bounds[::2], bounds[1::2]):
            piece = wave[int(a * 16000) : int(b * 16000)]
            start, end = C.voiced_span(piece)
            levels.append(float(np.sqrt(np.mean(piece[start:end] ** 2))))
        assert max(levels) / min(levels) < 1.3, (u.text, levels)
    with pytest.raises(ValueError, match="need 1 pauses"):
        C.join_stretches([np.ones(10), np.ones(10)], [])


def test_unseen_engine_split_is_flite_only_and_says_test_names(dataset):
    unseen = dataset[C.UNSEEN_ENGINE_SPLIT]
    assert set(unseen["engine"]) == {"flite"}
    assert all(s.startswith("flite:") for s in unseen["speaker"])
    for split in dataset:
        if split != C.UNSEEN_ENGINE_SPLIT and not split.startswith("probe_"):
            assert set(dataset[split]["engine"]) == {"espeak-ng"}, split
    train_entities = {e for row in dataset["train"]["entities"] for e in row}
    names = {e for row in unseen["entities"] for e in row}
    assert all(unseen["entities"]) and not names & train_entities
    held_out = C.plan_corpus("tiny", TINY_SEED).entities["en"]["test"]
    assert names <= {name for kind in C.ENTITY_TYPES for name in held_out[kind]}
    wave = load_audio(unseen[0]["audio"])
    assert abs(len(wave) / 16000 - unseen[0]["duration"]) < 1e-3 and 0.3 < np.abs(wave).max() <= 0.91


def test_splits_share_no_voice_no_variant_and_no_sentence(dataset):
    splits = [*C.SPEECH_SPLITS, *EXTRA_SPLITS]
    voices = {s: {v for joined in dataset[s]["speaker"] for v in joined.split("|")} for s in splits}
    texts = {s: set(dataset[s]["text"]) for s in splits}
    variants = {s: {v.split("+")[1].split("-")[0] for v in voices[s] if "+" in v} for s in splits}
    # code-switched lines are said by their home split's voices; the unseen engine's by flite alone
    assert variants["dev_codeswitch"] <= variants["dev"] and variants["test_codeswitch"] <= variants["test"]
    assert not variants[C.UNSEEN_ENGINE_SPLIT]
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not texts[a] & texts[b], (a, b)
            if {a, b} not in ({"dev", "dev_codeswitch"}, {"test", "test_codeswitch"}):
                assert not voices[a] & voices[b], (a, b)
                assert not variants[a] & variants[b], (a, b)
    assert len(texts["train"]) == len(dataset["train"])  # unique within the split too


def test_dev_test_entities_unseen_in_training(tiny_corpus, dataset):
    train_entities = {e for row in dataset["train"]["entities"] for e in row}
    for split in ("dev", "test", "dev_codeswitch", "test_codeswitch"):
        entities = {e for row in dataset[split]["entities"] for e in row}
        assert entities and not entities & train_entities
        hotwords = (tiny_corpus / "hotwords" / f"{split}.txt").read_text(encoding="utf-8").split("\n")
        assert set(filter(None, hotwords)) == entities
        with_entities = sum(bool(row) for row in dataset[split]["entities"])
        assert with_entities >= 0.6 * len(dataset[split])


def test_text_corpus_excludes_dev_and_test(tiny_corpus, dataset):
    lines = (tiny_corpus / "text_corpus.txt").read_text(encoding="utf-8").splitlines()
    spec = C.SIZES["tiny"]
    assert len(lines) == spec.text_corpus + spec.codeswitch_train  # with the code-switched training lines
    held_out = {t for split in ("dev", "test", *EXTRA_SPLITS) for t in dataset[split]["text"]}
    assert not set(lines) & held_out
    assert set(dataset["train"]["text"]) <= set(lines)
    assert any(any("\u4e00" <= c <= "\u9fff" for c in line) for line in lines)


def test_audio_is_16k_flac_of_plausible_length(dataset):
    train = dataset["train"]
    row = train[0]
    info = sf.info(io.BytesIO(row["audio"]["bytes"]))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    wave = load_audio(row["audio"])
    assert abs(len(wave) / 16000 - row["duration"]) < 1e-3 and 0.3 < np.abs(wave).max() <= 0.91
    durations = np.array(train["duration"])
    assert np.mean((durations >= 1.5) & (durations <= 4.0)) >= 0.8
    assert durations.max() < 8.0


def test_phonemes_column_matches_g2p(dataset):
    vocab = PhonemeVocab.default()
    for split in C.SPEECH_SPLITS:
        for row in dataset[split].select(range(0, len(dataset[split]), 7)):
            assert row["phonemes"] == phoneme_string(row["text"], row["language"])
            assert vocab.encode(row["phonemes"].split())


def test_probes_have_empty_references(dataset):
    for kind in C.PROBE_KINDS:
        split = dataset[f"probe_{kind}"]
        assert set(split["text"]) == {""}
        assert all(1.0 <= d <= 4.0 for d in split["duration"])
        assert list(SpeechDataset(split)) == []  # empty transcripts are skipped by default
        items = list(SpeechDataset(split, allow_empty=True))
        assert len(items) == len(split)
        peaks = [float(np.abs(item["audio"]).max()) for item in items]
        if kind == "silence":
            assert max(peaks) == 0.0
        else:
            assert min(peaks) > 1e-3


def test_deterministic_for_a_seed(dataset):
    plan = C.plan_corpus("tiny", TINY_SEED)
    by_split = defaultdict(list)
    for utt in plan.utterances:
        by_split[utt.split].append(utt)
    for split in C.SPEECH_SPLITS:
        assert [u.text for u in by_split[split]] == list(dataset[split]["text"])
        assert [u.speaker_name for u in by_split[split]] == list(dataset[split]["speaker"])
    # Re-synthesize the chunks of a few rows with one worker: byte-identical to the 2-worker build.
    stored, jobs = dataset["test"], plan.jobs()
    for i in (0, len(stored) - 1):
        at = plan.utterances.index(by_split["test"][i])
        first = at - at % C.SYNTH_CHUNK
        flac, phonemes, _ = C.synthesize_all(jobs[first : first + C.SYNTH_CHUNK], workers=1)[at - first]
        assert flac == stored[i]["audio"]["bytes"] and phonemes == stored[i]["phonemes"]
    silence = C.make_probe("silence", TINY_SEED, 3, [])
    assert len(silence) == round(dataset["probe_silence"][3]["duration"] * 16000)
    white = C.make_probe("white", TINY_SEED, 2, [])
    np.testing.assert_allclose(load_audio(dataset["probe_white"][2]["audio"]), white, atol=1 / 32768)
    other = C.plan_corpus("tiny", TINY_SEED + 1)
    assert [u.text for u in other.utterances] != [u.text for u in plan.utterances]


def test_speaker_pools_and_full_size():
    speakers = C.make_speakers(np.random.default_rng(0))
    en = {s.name for split in C.SPEECH_SPLITS for s in speakers["en"][split]}
    zh = {s.name for split in C.SPEECH_SPLITS for s in speakers["zh"][split]}
    assert len(en) >= 24 + 12 and len(zh) >= 8 + 8
    assert len(speakers["en"]["train"]) >= 24 and len(speakers["zh"]["train"]) >= 8
    full = C.SIZES["full"]
    assert full.train >= 6000 and full.probes >= 100 and full.text_corpus >= 50000


def test_mandarin_contacts_contain_homophones():
    contacts = C._entity_lists("zh")["contact"]
    by_sound = defaultdict(set)
    for name in contacts:
        by_sound[phoneme_string(name, "zh")].add(name)
    groups = [names for names in by_sound.values() if len(names) > 1]
    assert len(groups) > 100
    assert {"张伟", "章伟", "张玮"} <= by_sound[phoneme_string("张伟", "zh")]


def test_entity_partition_is_disjoint_and_complete():
    parts = C.partition_entities(np.random.default_rng(0))
    for language in C.LANGUAGES:
        for kind, names in C._entity_lists(language).items():
            split_sets = [set(parts[language][s][kind]) for s in C.SPEECH_SPLITS]
            assert set().union(*split_sets) == set(names)
            assert sum(map(len, split_sets)) == len(names)
            assert len(split_sets[1]) == len(split_sets[2]) >= 0.09 * len(names)


def test_readme_and_cli_arguments(tiny_corpus):
    readme = (tiny_corpus / "README.md").read_text(encoding="utf-8")
    assert f"--seed {TINY_SEED}" in readme and "| train | 220 | 100 | 100 | 20 |" in readme
    assert "| test_unseen_engine | 8 | 8 | 0 | 0 |" in readme and "flite:" in readme
    from training.commands import make_corpus

    parser = argparse.ArgumentParser()
    make_corpus.add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--size", "full", "--seed", "3", "--workers", "1"])
    assert (str(args.out), args.size, args.seed, args.workers) == ("x", "full", 3, 1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--size", "huge"])


def test_in_process_synthesis_matches_the_espeak_ng_program_for_a_fresh_synthesizer():
    """The first utterance of a fresh synthesizer is what the espeak-ng program writes, sample for sample; a
    synthesizer that has spoken before may differ by a few samples, hence one fresh synthesizer per chunk."""
    import io
    import subprocess

    import soundfile as sf

    def program(text, voice, pitch, speed):
        args = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text]
        out = subprocess.run(args, capture_output=True, check=True).stdout
        return sf.read(io.BytesIO(out), dtype="float32")

    def fresh(*args):  # a process of its own, as synthesize_all runs every chunk
        import multiprocessing

        # spawned, not forked: a fork of a process that has synthesized in-process (another test's, in the same
        # pytest worker) inherits its synthesizer's state
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_say, args)

    for job in (
        ("Call Brandon on his mobile", "en+f2", 74, 159),
        ("da3 dian4 hua4", "cmn-latn-pinyin+m3", 71, 179),
    ):
        wave, sr = program(*job)
        ours, our_sr = fresh(*job)
        assert our_sr == sr == 22050 and len(wave) > 0.3 * sr
        np.testing.assert_array_equal(ours, wave)
    with pytest.raises(ValueError, match="no voice 'xx-nope'"):
        fresh("hello", "xx-nope", 50, 170)
    with pytest.raises(ValueError, match="-v VOICE -p PITCH -s SPEED"):
        C._voice(["-v", "en", "-a", "50", "-s", "170"])
    assert C._voice(["-v", "en+m1", "-p", "50", "-s", "170"]) == ("en+m1", 50, 170)


def _say(text, voice, pitch, speed):
    engine = C.Espeak()
    return engine.say(text, voice, pitch, speed), engine.sample_rate


def test_every_template_is_trained_on_and_held_out_sparingly():
    plan = C.plan_corpus("small", 3)
    for language, templates in C.TEMPLATES.items():
        utts = [u for u in plan.utterances if u.language == language]
        for u in utts[:50]:  # each utterance records the template it was drawn from
            pattern = C._SLOT_RE.sub("(.+)", re.escape(u.template).replace(r"\{", "{").replace(r"\}", "}"))
            assert re.fullmatch(pattern, u.text), (u.template, u.text)
        trained = {u.template for u in utts if u.split == "train"}
        assert trained == {t for _, t in templates}
        held = defaultdict(int)
        for u in utts:
            if u.split != "train":
                held[u.template] += 1
        for _, template in templates:
            if not C._has_entity(template):
                assert held[template] <= C.held_out_cap(template, language)
    # fixed commands never leave training; a 12-way template gives dev + test two sentences at most
    assert C.held_out_cap("pause the music", "en") == C.held_out_cap("打开空调", "zh") == 0
    assert C.held_out_cap("附近有没有{nearby}", "zh") == 2
    assert C.held_out_cap("导航到{poi}", "zh") == float("inf")
    assert C.slot_choices("time", "zh") == 12 * len(C.ZH_DAYPARTS) * len(C.ZH_MINUTES)
    rng = np.random.default_rng(0)
    fills = {C._fill_slot("time", "en", rng) for _ in range(20000)}
    assert len(fills) == C.slot_choices("time", "en")


def test_text_corpus_draws_templates_evenly():
    """Small templates recur in the text corpus as often as large ones are drawn (not only their few
    distinct sentences), so the LLM's text prior knows every command."""
    plan = C.plan_corpus("small", 3)
    lines = plan.text_corpus
    for language, templates in C.TEMPLATES.items():
        fixed = [t for _, t in templates if not C._SLOT_RE.search(t)]
        in_language = [x for x in lines if any("\u4e00" <= c <= "\u9fff" for c in x) == (language == "zh")]
        expected = len(in_language) / len(templates)
        for command in fixed:
            assert 0.6 * expected <= lines.count(command) <= 1.6 * expected
