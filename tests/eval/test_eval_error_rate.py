"""Transcript normalisation (English, Mandarin, mixed) and WER / CER / mixed error rate with counts."""

import math

import pytest

from eval.asr_error_rate.scoring import (
    ErrorCounts,
    cer,
    detect_language,
    error_rate,
    mer,
    normalize_text,
    tokenize,
    wer,
)


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


def test_biased_counts_split_the_alignment_by_the_names():
    from eval.asr_error_rate.scoring import biased_error_counts

    hyp = "please call noah rogers now".split()
    ref = "call barbara stewart now".split()
    biased, unbiased = biased_error_counts(hyp, ref, [["barbara", "stewart"], ["lee"]])
    assert biased == ErrorCounts(substitutions=2, deletions=0, insertions=0, hits=0)
    assert unbiased == ErrorCounts(substitutions=0, deletions=0, insertions=1, hits=2)  # "please" inserted
    # an inserted token of a name counts as biased; nothing spoken and nothing heard
    assert biased_error_counts(["lee", "x"], [], [["lee"]]) == (
        ErrorCounts(insertions=1),
        ErrorCounts(insertions=1),
    )
    assert biased_error_counts([], ["call", "lee"], [["lee"]]) == (
        ErrorCounts(deletions=1),
        ErrorCounts(deletions=1),
    )
    # a name that does not occur in the reference marks nothing; an empty phrase is ignored
    assert biased_error_counts(ref, ref, [["anna"], []]) == (ErrorCounts(), ErrorCounts(hits=4))


def test_biased_and_unbiased_add_up_to_the_error_counts():
    import random

    from eval.asr_error_rate.scoring import biased_error_counts, error_counts

    rng = random.Random(0)
    vocab = list("abcdef")
    for _ in range(200):
        ref = rng.choices(vocab, k=rng.randint(0, 8))
        hyp = rng.choices(vocab, k=rng.randint(0, 8))
        start = rng.randint(0, len(ref))
        phrases = [ref[start : start + rng.randint(1, 3)]]
        biased, unbiased = biased_error_counts(hyp, ref, phrases)
        assert biased + unbiased == error_counts(hyp, ref)
        assert biased.reference_length == sum(
            any(ref[i - k : i - k + len(p)] == p for p in phrases if p for k in range(len(p)))
            for i in range(len(ref))
        )


def test_biased_error_rate_normalises_and_tokenises_the_names_like_the_references():
    from eval.asr_error_rate.scoring import biased_error_rate

    out = biased_error_rate(
        ["Call Noah Rogers.", "打电话给刘晓明"],
        ["call barbara stewart", "打电话给刘小明。"],
        [["Barbara Stewart"], ["刘小明"]],
        language="mixed",
    )
    assert out["biased"]["error_rate"] == pytest.approx(3 / 5)  # 2 of 2 words, 1 of 3 characters
    assert out["biased"]["reference_length"] == 5 and out["biased"]["metric"] == "mer"
    assert out["unbiased"]["error_rate"] == 0.0 and out["unbiased"]["hits"] == 5
    # each side's interval resamples the utterances' own counts: here 2 of 2 (English) and 1 of 3 (Mandarin)
    low, high = out["biased"]["ci95"]
    assert (
        low == pytest.approx(1 / 3) and high == pytest.approx(1.0) and out["unbiased"]["ci95"] == [0.0, 0.0]
    )
    none = biased_error_rate(["a b"], ["a b"], [[]], language="en")
    assert none["biased"]["ci95"] is None  # one utterance: no interval
    assert none["biased"]["error_rate"] is None and none["unbiased"]["error_rate"] == 0.0
    with pytest.raises(ValueError, match="bias phrase lists"):
        biased_error_rate(["a"], ["a"], [["a"], ["b"]])


def test_biased_split_with_several_overlapping_and_repeated_names():
    from eval.asr_error_rate.scoring import biased_error_counts, biased_error_rate, error_counts

    ref = "call ann lee and ann lee park".split()
    hyp = "call anne lee and ann lea park now".split()
    phrases = [["ann", "lee"], ["lee", "park"], ["nobody"]]  # twice, overlapping, absent
    biased, unbiased = biased_error_counts(hyp, ref, phrases)
    assert biased.reference_length == 5  # ann lee (1st), ann lee park (2nd)
    assert (biased.substitutions, biased.hits) == (2, 3) and unbiased == ErrorCounts(insertions=1, hits=2)
    assert biased + unbiased == error_counts(hyp, ref)
    with pytest.raises(TypeError, match="one list of phrases per pair"):
        biased_error_rate(["a"], ["a"], "ann")


def test_bootstrap_intervals_cover_the_true_error_rate_about_95_percent_of_the_time():
    """200 utterances of 5-15 tokens, each token wrong with probability 0.1 (true corpus rate 0.1): over 40 seeded
    repeats the 95% interval holds 0.1 in at least 33 (a binomial(40, 0.95) falls below 34 about 5% of the time)."""
    import random

    from eval.asr_error_rate.scoring import bootstrap_interval

    rng = random.Random(0)
    covered = 0
    for repeat in range(40):
        lengths = [rng.randint(5, 15) for _ in range(200)]
        errors = [sum(rng.random() < 0.1 for _ in range(n)) for n in lengths]
        low, high = bootstrap_interval(errors, lengths, resamples=400, seed=repeat)
        assert low <= sum(errors) / sum(lengths) <= high
        covered += low <= 0.1 <= high
    assert covered >= 33, covered


def test_proportion_intervals_cover_the_true_rate_even_near_zero():
    """Wilson intervals of clips flagged out of n: over 200 seeded draws each of n = 120 clips at true rates 0.005
    (mostly 0 or 1 flagged: where a percentile bootstrap collapses to [0, 0]) and 0.2, the 95% interval holds the
    true rate in at least 90% of draws; 0 of n keeps an upper end above 0 that shrinks as n grows."""
    import random

    from eval.asr_error_rate.scoring import proportion_interval

    rng = random.Random(0)
    for rate in (0.005, 0.2):
        covered = 0
        for _ in range(200):
            count = sum(rng.random() < rate for _ in range(120))
            low, high = proportion_interval(count, 120)
            assert 0 <= low <= count / 120 <= high <= 1
            covered += low <= rate <= high
        assert covered >= 180, (rate, covered)
    assert (
        proportion_interval(0, 100)[0] == 0
        and 0 < proportion_interval(0, 600)[1] < proportion_interval(0, 100)[1]
    )
    assert proportion_interval(0, 0) is None
    with pytest.raises(ValueError, match="not within 0..5"):
        proportion_interval(6, 5)


def test_bootstrap_interval_is_seeded_and_needs_two_utterances():
    from eval.asr_error_rate.scoring import bootstrap_interval

    errors, lengths = [0, 1, 2, 5, 0, 3], [10, 8, 12, 9, 7, 11]
    assert bootstrap_interval(errors, lengths) == bootstrap_interval(errors, lengths)
    low, high = bootstrap_interval(errors, lengths)
    assert 0 <= low < sum(errors) / sum(lengths) < high <= 1
    assert bootstrap_interval([1], [5]) is None and bootstrap_interval([0, 0], [0, 0]) is None
    with pytest.raises(ValueError, match="2 error counts for 3"):
        bootstrap_interval([0, 1], [1, 2, 3])
