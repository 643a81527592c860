"""The per-sample hallucination rule and the probe-set rate on hand-made examples."""

import pytest

from eval.hallucination import (
    hallucination_rate,
    is_hallucination,
    probe_hallucination_rate,
    unigram_precision,
)


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        # long AND no overlap -> hallucination
        ("thank you for watching please subscribe", "go", True),
        ("thanks for watching and see you", "hello world", True),  # 6 > 1.5 * 2, precision 0
        # long but overlapping (a repetition loop on the right words) -> not flagged
        ("hello world hello world hello world", "hello world", False),
        # no overlap but not long enough: 3 words vs 1.5 * 2 = 3 (strictly greater needed)
        ("foo bar baz", "hello world", False),
        ("foo bar baz qux", "hello world", True),
        # short output -> never
        ("", "hello world", False),
        ("hello", "hello world", False),
        # case / punctuation normalised before counting
        ("HELLO! World, hello. WORLD?", "Hello world", False),
        # Mandarin: counted in characters
        ("谢谢大家收看请订阅", "你好", True),  # 9 chars > 3, precision 0
        ("你好你好你好", "你好", False),  # overlap 1/3 >= 0.1
        ("你们好", "你好", False),  # 3 chars, not > 3
        # empty reference: any non-empty output is long with zero overlap
        ("hello", "", True),
        ("。", "", False),
    ],
)
def test_per_sample_rule(prediction, reference, expected):
    assert is_hallucination(prediction, reference) is expected


def test_precision_threshold_is_strict_and_configurable():
    # 20 hypothesis words, 2 of them in the reference: precision exactly 0.1 -> not below 0.1
    hyp = "a b " + " ".join(f"w{i}" for i in range(18))
    assert unigram_precision(hyp.split(), ["a", "b"]) == pytest.approx(0.1)
    assert not is_hallucination(hyp, "a b")
    assert is_hallucination(hyp, "a b", max_unigram_precision=0.11)
    assert not is_hallucination("x y z w", "a b", length_ratio=2.0)


def test_unigram_precision_is_clipped():
    assert unigram_precision(["a", "a", "a", "b"], ["a", "c"]) == pytest.approx(0.25)
    assert unigram_precision([], ["a"]) == 1.0


def test_mandarin_output_for_english_reference_counts_characters():
    # one "word" in English tokenisation, 8 characters with auto (mixed) detection
    assert is_hallucination("感谢观看欢迎订阅", "hello world")
    assert not is_hallucination("感谢观看欢迎订阅", "hello world", language="en")


def test_hallucination_rate():
    preds = ["hello world", "subscribe to my channel now", "你好", "谢谢大家收看请订阅"]
    refs = ["hello world", "go", "你好", "你好"]
    out = hallucination_rate(preds, refs)
    assert out["flagged_indices"] == [1, 3]
    assert (out["num_flagged"], out["num_samples"], out["rate"]) == (2, 4, 0.5)
    assert out["language"] == "mixed"


def test_probe_hallucination_rate():
    out = probe_hallucination_rate(["", "  ", "。", "Thank you.", "谢谢", "...!"])
    assert out["flagged_indices"] == [3, 4]
    assert out["rate"] == pytest.approx(2 / 6)
    assert probe_hallucination_rate([])["rate"] == 0.0
    assert probe_hallucination_rate(["。"], normalize=False)["num_flagged"] == 1
