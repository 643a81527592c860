"""G2P: vocabulary file, English (CMUdict + OOV fallback), Mandarin (pinyin), mixed text, characters."""

from __future__ import annotations

import pytest

from training.data import g2p
from training.data.g2p import (
    ARPABET,
    BLANK,
    PhonemeVocab,
    UnknownSymbolError,
    build_char_vocab,
    default_vocab_path,
    split_units,
    text_to_chars,
    text_to_phonemes,
)


def phones(text: str, language: str | None = None) -> list[str]:
    return [p for p, _ in text_to_phonemes(text, language)]


def test_vocab_file_matches_inventory():
    vocab = PhonemeVocab.from_file(default_vocab_path())
    assert default_vocab_path().name == "en-zh.txt"
    assert vocab.symbols == g2p.phoneme_symbols()
    assert vocab.symbols[0] == BLANK and vocab.blank_id == 0
    assert len(set(vocab.symbols)) == len(vocab) == 1 + 39 + 21 + 45 * 5
    assert all(s in vocab for s in ARPABET) and len(ARPABET) == 39


def test_vocab_encode_decode_and_unknown_symbol():
    vocab = PhonemeVocab.default()
    ids = vocab.encode(["HH", "AH", "zh", "ang1"])
    assert ids == [vocab.token_to_id(s) for s in ["HH", "AH", "zh", "ang1"]] and 0 not in ids
    assert vocab.decode([0, *ids], skip_blank=True) == ["HH", "AH", "zh", "ang1"]
    assert vocab.decode([0]) == [BLANK]
    with pytest.raises(UnknownSymbolError, match="AH1"):
        vocab.encode(["HH", "AH1"])
    with pytest.raises(UnknownSymbolError, match="9999"):
        vocab.decode([9999])


def test_vocab_rejects_bad_files(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("a\n<blank>\n")
    with pytest.raises(ValueError, match="id 0"):
        PhonemeVocab.from_file(path)
    path.write_text("<blank>\nA\nA\n")
    with pytest.raises(ValueError, match="duplicate"):
        PhonemeVocab.from_file(path)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("hello", "HH AH L OW"),
        ("world", "W ER L D"),
        ("navigate", "N AE V AH G EY T"),
        ("temperature", "T EH M P R AH CH ER"),
        ("Call!", "K AO L"),
    ],
)
def test_english_cmudict_without_stress(word, expected):
    assert " ".join(phones(word)) == expected


def test_oov_english_uses_fallback_with_valid_symbols():
    word = "zorbulaxian"
    assert word not in g2p._cmudict()
    result = phones(word)
    assert len(result) >= 6 and set(result) <= set(ARPABET)
    assert result[0] == "Z"
    g2p.espeak_phonemes.cache_clear()
    assert phones(word) == result  # deterministic, not just cached


def test_rule_based_fallback_is_valid():
    out = g2p.rule_based_phonemes("shtrongly42")
    assert out[:2] == ["SH", "T"] and set(out) <= set(ARPABET)
    assert g2p.rule_based_phonemes("shtrongly42") == out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("张", "zh ang1"),
        ("章", "zh ang1"),
        ("你好", "n i3 h ao3"),  # lexical tones, no third-tone sandhi
        ("我", "uo3"),  # zero initial: w is spelling
        ("云", "vn2"),
        ("有", "iou3"),
        ("的", "d e5"),  # neutral tone = 5
        ("四是", "s ii4 sh iii4"),  # apical vowels
        ("女", "n v3"),
        ("银行", "in2 h ang2"),  # phrase context picks hang2, not xing2
    ],
)
def test_mandarin_pinyin_phonemes(text, expected):
    assert " ".join(phones(text)) == expected


@pytest.mark.parametrize(("a", "b"), [("张伟", "章伟"), ("于丽", "余丽"), ("心怡", "欣怡"), ("施", "师")])
def test_mandarin_homophones_share_phonemes(a, b):
    assert a != b and phones(a) == phones(b)


def test_mixed_text_units_and_indices():
    text = "播放 Taylor Swift 的 Love-Story!"
    assert split_units(text) == ["播", "放", "taylor", "swift", "的", "love", "story"]
    pairs = text_to_phonemes(text)
    by_unit: dict[int, list[str]] = {}
    for phone, index in pairs:
        by_unit.setdefault(index, []).append(phone)
    assert [i for _, i in pairs] == sorted(i for _, i in pairs)
    assert by_unit[0] == ["b", "o1"] and by_unit[1] == ["f", "ang4"]
    assert by_unit[2] == ["T", "EY", "L", "ER"] and by_unit[4] == ["d", "e5"]
    assert by_unit[6] == ["S", "T", "AO", "R", "IY"]
    assert set(by_unit) == set(range(7))


def test_units_normalise_width_case_and_punctuation():
    assert split_units("Ｈｅｌｌｏ，世界! What's up?") == ["hello", "世", "界", "what's", "up"]
    assert split_units("") == [] and text_to_phonemes("...") == []


def test_digits_follow_language():
    assert phones("22", "en") == phones("twenty two")
    assert phones("22", "zh") == phones("二十二")
    assert phones("调到22度") == phones("调到二十二度")  # Hanzi context -> Mandarin reading
    assert g2p.number_to_hanzi(105) == "一百零五" and g2p.number_to_hanzi(12) == "十二"
    assert g2p.number_to_words(2045) == ["two", "thousand", "forty", "five"]


def test_all_phonemes_of_mixed_text_encode():
    vocab = PhonemeVocab.default()
    text = "导航到 Riverside Mall 然后给张伟打电话 at seven thirty 嗯 一下儿"
    ids = vocab.encode(phones(text))
    assert len(ids) > 20 and vocab.blank_id not in ids


def test_char_targets_and_vocab():
    assert text_to_chars("Play 周杰伦 now, it's 22") == list("play|周杰伦|now|it's|22")
    vocab = build_char_vocab(["周杰伦", "打开空调 ok"])
    assert vocab[0] == BLANK
    assert vocab[1:27] == [chr(c) for c in range(ord("a"), ord("z") + 1)]
    assert vocab[27:29] == ["'", "|"]
    assert vocab[39:] == sorted("周杰伦打开空调")
    PhonemeVocab(vocab).encode(text_to_chars("打开 ok"))


def test_hanzi_without_a_reading_raises_g2p_error():
    # U+3402 is a CJK Extension A character pypinyin has no reading for; it once crashed inside pypinyin
    with pytest.raises(g2p.G2PError, match="U\\+3402"):
        g2p.text_to_phonemes("去\u3402站")
    assert g2p.hanzi_to_pinyin("去车站") == ["qu4", "che1", "zhan4"]
