"""Transcript normalisation (English, Mandarin, mixed) and WER / CER / mixed error rate with counts."""

import math

import pytest

from eval.error_rate import ErrorCounts, cer, error_rate, mer, wer
from eval.text_norm import detect_language, normalize_text, tokenize


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world"),
        ("  MIXED   Case\tand\nspaces ", "mixed case and spaces"),
        ("Don't stop—it's fine.", "dont stop its fine"),
        ("don’t", "dont"),  # typographic apostrophe
        ("well-known (really)", "well known really"),
        ("ＡＢＣ　ｄｅｆ１２３", "abc def123"),  # full-width letters, digits, ideographic space
        ("你好，世界。", "你好 世界"),
        ("《三体》、“黑暗森林”！？；：", "三体 黑暗森林"),
        ("【注意】……好的～", "注意 好的"),
        ("我用iPhone打电话，OK？", "我用iphone打电话 ok"),
        ("ＯＫ，好的", "ok 好的"),
        ("", ""),
        ("?!。，", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_normalize_text_switches():
    assert normalize_text("Hi, ＡＢ", lowercase=False) == "Hi AB"
    assert normalize_text("Hi, ＡＢ", remove_punctuation=False) == "hi, ab"
    assert normalize_text("ＡＢ", unicode_nfkc=False) == "ａｂ"  # lowercased, still full-width


@pytest.mark.parametrize(
    "text, language, tokens",
    [
        ("hello big world", "en", ["hello", "big", "world"]),
        ("你好 世界", "zh", ["你", "好", "世", "界"]),
        ("我用iphone打电话 ok", "mixed", ["我", "用", "iphone", "打", "电", "话", "ok"]),
        ("第2024届", "mixed", ["第", "2024", "届"]),
        ("", "mixed", []),
    ],
)
def test_tokenize(text, language, tokens):
    assert tokenize(text, language) == tokens


def test_tokenize_rejects_unknown_language():
    with pytest.raises(ValueError, match="language"):
        tokenize("a", "fr")


@pytest.mark.parametrize(
    "texts, language",
    [
        (["hello world"], "en"),
        (["你好"], "zh"),
        (["你好", "hello"], "mixed"),
        (["我用iphone"], "mixed"),
        ([""], "en"),
    ],
)
def test_detect_language(texts, language):
    assert detect_language(texts) == language


def test_wer_counts():
    out = wer(["the cat sat on mat", "hello there"], ["The cat sat on the mat.", "Hello!"])
    # pair 1: one deletion ("the"); pair 2: one insertion ("there")
    assert (out["substitutions"], out["deletions"], out["insertions"], out["hits"]) == (0, 1, 1, 6)
    assert out["reference_length"] == 7
    assert out["error_rate"] == pytest.approx(2 / 7)
    assert (out["metric"], out["language"], out["num_samples"]) == ("wer", "en", 2)


def test_normalisation_makes_surface_variants_equal():
    assert wer("HELLO, WORLD!", "hello world")["error_rate"] == 0.0
    assert cer("今天天气很好！", "今天天气很好。")["error_rate"] == 0.0
    assert cer("ＡＢ好", "ab好")["error_rate"] == 0.0
    assert wer("HELLO, WORLD!", "hello world", normalize=False)["error_rate"] == 1.0


def test_cer_counts_characters():
    out = cer(["今天天汽很好"], ["今天天气很好啊"])
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (1, 1, 0)
    assert out["error_rate"] == pytest.approx(2 / 7)
    assert out["metric"] == "cer"


def test_mixed_error_rate_counts_words_and_characters():
    out = mer(["我用iphone打了电话"], ["我用 iPhone 打电话。"])
    # tokens ref: 我 用 iphone 打 电 话 (6); hyp inserts 了
    assert (out["reference_length"], out["insertions"], out["substitutions"]) == (6, 1, 0)
    # a wrong English word is one error in MER but many in CER
    assert mer(["我用android"], ["我用iphone"])["error_rate"] == pytest.approx(1 / 3)
    assert cer(["我用android"], ["我用iphone"])["error_rate"] > 0.5


def test_error_rate_auto_detects_language():
    assert error_rate(["hello"], ["hello"])["metric"] == "wer"
    assert error_rate(["你好"], ["你好"])["metric"] == "cer"
    assert error_rate(["你好 hi"], ["你好 hi"])["metric"] == "mer"


def test_per_sample_counts_sum_to_totals():
    out = error_rate(["a b c", "x", ""], ["a c", "x y", "z"], language="en", return_per_sample=True)
    per = out["per_sample"]
    assert [p["error_rate"] for p in per] == [0.5, 0.5, 1.0]
    for key in ("substitutions", "deletions", "insertions", "hits", "reference_length"):
        assert sum(p[key] for p in per) == out[key]


def test_empty_references():
    assert error_rate([""], [""], language="en")["error_rate"] == 0.0
    assert math.isinf(error_rate(["noise words"], [""], language="en")["error_rate"])


def test_error_counts_dataclass():
    c = ErrorCounts(1, 2, 3, 4) + ErrorCounts(1, 0, 0, 1)
    assert (c.reference_length, c.errors, c.rate) == (9, 7, 7 / 9)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="predictions but"):
        wer(["a", "b"], ["a"])
