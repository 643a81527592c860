"""The phonemizer model folders carry (modeling/phonemizer_entropy_asr.py) against the training G2P it is built
from (training/data/lexicon.py): same phonemes, polyphones read in context, digits, OOV rules, the file."""

from __future__ import annotations

import copy
import json
import pickle
import random

import pytest

from modeling.phonemizer_entropy_asr import (
    FORMAT_VERSION,
    NUMBER_WORD_PHONEMES,
    Phonemizer,
    number_to_words,
    rule_based_phonemes,
    split_units,
)
from training.data import g2p
from training.data.lexicon import build_phonemizer


@pytest.fixture(scope="module")
def phonemizer() -> Phonemizer:
    return build_phonemizer()  # CMUdict + pypinyin (about 3 s, cached for the process)


def joined(pairs) -> str:
    return " ".join(p for p, _ in pairs)


def test_identical_to_the_training_g2p_on_the_tiny_corpus(tiny_corpus):
    from training.data.corpus import SPEECH_SPLITS
    from training.data.loading import load_speech_dataset

    texts = (tiny_corpus / "text_corpus.txt").read_text(encoding="utf-8").splitlines()
    ph = build_phonemizer(texts)
    for text in texts:
        assert ph.phonemize(text) == g2p.text_to_phonemes(text), text

    def oov(text: str) -> bool:
        return any(u.isascii() and not u.isdigit() and u not in ph for u in split_units(text))

    dataset = load_speech_dataset(tiny_corpus / "dataset")
    held_out = {}
    speech = [split for split in dataset if not split.startswith("probe_")]
    assert set(SPEECH_SPLITS) < set(speech) and "test_codeswitch" in speech
    for split in speech:
        rows = zip(dataset[split]["text"], dataset[split]["language"], dataset[split]["phonemes"])
        held_out[split] = 0
        for text, language, phonemes in rows:
            if oov(text):  # a word neither CMUdict nor the training texts know: the OOV rule reads it
                held_out[split] += 1
                continue
            language = language if language in ("en", "zh") else None  # "mixed": read by script
            assert joined(ph.phonemize(text, language)) == phonemes, text
            assert ph.phonemize(text) == g2p.text_to_phonemes(text), text
        hotwords = (tiny_corpus / "hotwords" / f"{split}.txt").read_text(encoding="utf-8").splitlines()
        for name in filter(None, hotwords):
            assert oov(name) or ph.phonemize(name) == g2p.text_to_phonemes(name), name
    assert held_out["train"] == 0  # training transcripts are in the text corpus, so in the lexicon


def test_identical_to_the_training_g2p_on_every_codeswitched_sentence_of_the_full_corpus():
    """The shipped phonemizer of a model trained on the full corpus reads every code-switched sentence (train,
    dev_codeswitch, test_codeswitch) as the training G2P does: by script, CMUdict and pypinyin."""
    from training.data.corpus import plan_corpus

    plan = plan_corpus("full", 0)  # text only, no audio: about 5 s
    mixed = [u.text for u in plan.utterances if u.language == "mixed"]
    assert len(mixed) == 600 + 2 * 150
    ph = build_phonemizer(plan.text_corpus)
    for text in mixed:
        assert ph.phonemize(text) == g2p.text_to_phonemes(text), text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("银行", "in2 h ang2"),
        ("行走", "x ing2 z ou3"),
        ("重庆", "ch ong2 q ing4"),
        ("重要", "zh ong4 iao4"),
        ("长城", "ch ang2 ch eng2"),
        ("长大了", "zh ang3 d a4 l e5"),
        ("音乐", "in1 ve4"),
        ("快乐", "k uai4 l e4"),
        ("我去银行取钱", "uo3 q v4 in2 h ang2 q v3 q ian2"),
    ],
)
def test_polyphones_read_in_context_as_pypinyin_does(phonemizer, text, expected):
    assert joined(phonemizer.phonemize(text)) == expected == g2p.phoneme_string(text)
    assert phonemizer.hanzi_run(text) == tuple(
        tuple(g2p.pinyin_to_phonemes(s)) for s in g2p.hanzi_to_pinyin(text)
    )


def test_segmentation_is_pypinyins_forward_maximum_matching(phonemizer):
    from pypinyin.constants import PHRASES_DICT
    from pypinyin.seg.mmseg import seg

    rng = random.Random(0)
    phrases = sorted(PHRASES_DICT)
    fresh = pickle.loads(pickle.dumps(phonemizer))  # empty caches
    for i in range(300):  # runs of whole phrases, phrase prefixes (pypinyin's quirks) and single characters
        pieces = [rng.choice(phrases) for _ in range(rng.randint(1, 4))]
        run = "".join(p if rng.random() < 0.5 else p[: rng.randint(1, len(p))] for p in pieces)
        # a character at a time, as the decoder writes (each cut from the one before), and at once
        for end in range(1, len(run) + 1) if i % 2 else [len(run)]:
            assert phonemizer.segments(run[:end]) == list(seg.cut(run[:end])), run[:end]
        # longest first: no run of `fresh`'s is cut from one without its last character
        at_once = [fresh.hanzi_run(run[:end]) for end in range(len(run), 0, -1)][::-1]
        assert [phonemizer.hanzi_run(run[:end]) for end in range(1, len(run) + 1)] == at_once, run
    assert phonemizer.hanzi_run("去\u3402站") is None  # a character without a reading
    with pytest.raises(g2p.G2PError, match="U\\+3402"):
        phonemizer.phonemize("去\u3402站")


def test_a_hanzis_onsets_are_the_first_phonemes_of_every_reading_it_can_take(phonemizer):
    """What the joint search reads one label ahead with: every reading a character takes in any run begins with
    one of its onsets (checked over random runs of the segmentation dictionary's phrases)."""
    from pypinyin.constants import PHRASES_DICT

    assert {"x", "h"} <= phonemizer.hanzi_onsets("行")  # 行走 / 银行
    assert {"ch", "zh"} <= phonemizer.hanzi_onsets("长") and phonemizer.hanzi_onsets("\u3402") == frozenset()
    assert Phonemizer({}, {"走": "z ou3"}).hanzi_onsets("走") == {"z"}
    # every reading a character can take in a run: a phrase that gives it none counts as one more
    lexicon = Phonemizer(
        {}, {"行": "x ing2", "银": "y in2"}, {"银行": ("y in2", "h ang2"), "行x": ("x ing2", None)}
    )
    assert lexicon.hanzi_readings("行") == {("x", "ing2"), ("h", "ang2")}
    assert lexicon.hanzi_readings("银") == {("y", "in2")} and lexicon.hanzi_readings("x") == {()}
    assert lexicon.hanzi_onsets("行") == {"x", "h"} and lexicon.hanzi_onsets("x") == frozenset()
    rng = random.Random(1)
    phrases = sorted(PHRASES_DICT)
    for _ in range(300):
        run = "".join(rng.choice(phrases) for _ in range(rng.randint(1, 3)))
        for char, reading in zip(run, phonemizer.hanzi_run(run) or ()):
            assert reading[0] in phonemizer.hanzi_onsets(char), (run, char)


def test_digits_follow_language(phonemizer):
    assert joined(phonemizer.phonemize("22", "en")) == joined(phonemizer.phonemize("twenty two"))
    assert (
        joined(phonemizer.phonemize("22", "zh"))
        == joined(phonemizer.phonemize("二十二"))
        == "er4 sh iii2 er4"
    )
    assert joined(phonemizer.phonemize("调到22度")) == joined(phonemizer.phonemize("调到二十二度"))
    assert phonemizer.word("22") == ("T", "W", "EH", "N", "T", "IY", "T", "UW")
    # 一百 is a phrase read yi4 bai3 (一 alone is yi1): numerals are read in context too
    assert phonemizer.word("105", language="zh") == ("i4", "b", "ai3", "l", "ing2", "u3")
    for text, language in [
        ("7", "zh"),
        ("100000000", "zh"),
        ("1234567890", None),
        ("2045", "en"),
        ("0", "zh"),
    ]:
        assert phonemizer.phonemize(text, language) == g2p.text_to_phonemes(text, language), text


def test_number_words_are_cmudicts():
    said = {w for n in (*range(100), 100, 1000, 10**6) for w in number_to_words(n)}
    assert said == set(NUMBER_WORD_PHONEMES)
    for word, phonemes in NUMBER_WORD_PHONEMES.items():
        assert tuple(g2p.english_word_phonemes(word)) == phonemes, word


def test_oov_words_under_both_rules(phonemizer):
    word = "zorbulaxian"
    assert not phonemizer.in_lexicon(word) and word not in phonemizer
    letters = tuple(rule_based_phonemes(word))
    assert letters[:3] == ("Z", "AO", "R") and phonemizer.word(word) == letters
    assert phonemizer.word("mp3") == ("M", "P", "TH", "R", "IY")

    neutral = phonemizer.with_oov("neutral")
    assert neutral.oov == "neutral" and phonemizer.oov == "letters" and len(neutral) == len(phonemizer)
    assert neutral.word(word) is None and neutral.word("hello") == ("HH", "AH", "L", "OW")
    assert neutral.word("42") == phonemizer.word("42")  # digits are read, not out of vocabulary
    pairs = neutral.phonemize(f"hello {word} world")
    assert sorted({i for _, i in pairs}) == [0, 2]  # the OOV word has no phonemes
    assert pairs == [pair for pair in phonemizer.phonemize(f"hello {word} world") if pair[1] != 1]

    # a word still being written: letter rules, unless its letters so far spell a lexicon word
    for ph in (phonemizer, neutral):
        assert ph.word("navig", partial=True) == tuple(rule_based_phonemes("navig"))
        assert ph.word("gas", partial=True) == ("G", "AE", "S")
    with pytest.raises(ValueError, match="oov"):
        phonemizer.with_oov("silence")


def test_save_load_round_trip(tmp_path):
    ph = Phonemizer(
        words={"hello": ("HH", "AH", "L", "OW"), "dont": "D OW N T"},
        hanzi={"银": ("in2",), "行": ("x", "ing2"), "走": ("z", "ou3")},
        phrases={"银行": (("in2",), ("h", "ang2")), "行走": None},
        phonemes=["<blank>", "HH", "AH"],
        oov="neutral",
    )
    path = tmp_path / "phonemizer.json"
    ph.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format_version"] == FORMAT_VERSION and data["oov"] == "neutral"
    assert data["phonemes"] == ["<blank>", "HH", "AH"] and data["words"]["hello"] == "HH AH L OW"
    assert data["phrases"] == ["行走", "银行"] and data["phrase_readings"] == {"银行": ["in2", "h ang2"]}

    loaded = Phonemizer.load(path)
    text = "Don't say hello 银行行走 zorb"
    assert loaded.phonemize(text) == ph.phonemize(text)
    assert joined(loaded.phonemize(text)) == "D OW N T HH AH L OW in2 h ang2 x ing2 z ou3"  # don't -> dont
    assert loaded.oov == "neutral" and loaded.word("zorb") is None
    assert Phonemizer.load(path, oov="letters").word("zorb") == tuple(rule_based_phonemes("zorb"))
    assert Phonemizer.from_pretrained(tmp_path).phonemize(text) == ph.phonemize(text)
    for other in (pickle.loads(pickle.dumps(loaded)), copy.deepcopy(loaded)):
        assert other.phonemize(text) == ph.phonemize(text)

    path.write_text(json.dumps({**data, "format_version": 99}), encoding="utf-8")
    with pytest.raises(ValueError, match="format_version"):
        Phonemizer.load(path)
