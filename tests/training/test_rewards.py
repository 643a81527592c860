"""GRPO rewards (method.md section 3): values computed by hand."""

import math

import pytest

from training.stages.rewards import (
    accuracy_reward,
    cer_units,
    character_error_rate,
    context_reward,
    hallucination_reward,
    keyword_present,
    r_acc,
    r_context,
    r_hallu,
    total_reward,
)


# ---- R_acc ---------------------------------------------------------------------------------------------------
def test_one_substitution_in_ten_characters():
    assert character_error_rate("abcdefghiX", "abcdefghij") == pytest.approx(0.1)
    assert accuracy_reward("abcdefghiX", "abcdefghij") == pytest.approx(math.exp(-0.2))


def test_english_cer_counts_characters_and_word_boundaries():
    # "call john" = 9 units (8 letters + 1 word boundary); normalisation removes case and punctuation.
    assert cer_units("Call, John!") == list("call") + ["\u2581"] + list("john")
    assert accuracy_reward("CALL JOHN.", "call john") == 1.0
    # one deleted letter: 1/9
    assert accuracy_reward("cal john", "call john") == pytest.approx(math.exp(-2 / 9))
    # merged words: the lost boundary is one deletion out of 9
    assert accuracy_reward("calljohn", "call john") == pytest.approx(math.exp(-2 / 9))
    # without word boundaries: 8 units, merging is free
    assert character_error_rate("calljohn", "call john", count_word_boundaries=False) == 0.0


def test_mandarin_cer_ignores_spacing_and_full_width_punctuation():
    ref = "打电话给张伟"  # 6 characters
    assert accuracy_reward("打 电 话 给 张 伟。", ref) == 1.0
    assert accuracy_reward("打电话给章伟", ref) == pytest.approx(math.exp(-2 / 6))  # one substitution
    assert accuracy_reward("打电话给张伟吧", ref) == pytest.approx(math.exp(-2 / 6))  # one insertion
    # spaces next to CJK characters are not units in mixed text either
    assert cer_units("播放 yellow submarine") == list("播放yellow") + ["\u2581"] + list("submarine")


def test_empty_reference_accuracy():
    assert accuracy_reward("", "") == 1.0
    assert accuracy_reward("hello", "") == 0.0  # CER = inf
    assert accuracy_reward("", "hello") == pytest.approx(math.exp(-2.0))  # all deleted: CER = 1


# ---- R_hallu -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n_hyp,expected",
    [(8, 0.0), (9, -1.0), (2, 0.0), (1, -1.0), (4, 0.0), (0, -1.0)],
)
def test_hallucination_thresholds_english_words(n_hyp, expected):
    ref = "navigate to the station"  # 4 words
    hyp = " ".join(["word"] * n_hyp)
    assert hallucination_reward(hyp, ref) == expected


@pytest.mark.parametrize("n_hyp,expected", [(8, 0.0), (9, -1.0), (2, 0.0), (1, -1.0)])
def test_hallucination_thresholds_mandarin_characters(n_hyp, expected):
    ref = "打开车窗"  # 4 characters
    assert hallucination_reward("好" * n_hyp, ref) == expected


def test_hallucination_english_length_is_words_not_characters():
    # 2 words vs 4 words: exactly 0.5x, allowed, although the characters differ a lot
    assert hallucination_reward("a b", "navigate to the station") == 0.0


def test_hallucination_empty_reference():
    assert hallucination_reward("", "") == 0.0
    assert hallucination_reward("thank you", "") == -1.0
    assert hallucination_reward("。", "") == 0.0  # punctuation only normalises to empty


# ---- R_context -----------------------------------------------------------------------------------------------
def test_context_two_keywords_one_present_is_zero():
    assert context_reward("call john smith now", ["John Smith", "张伟"]) == 0.0


def test_context_values():
    assert context_reward("打电话给张伟", ["张伟"]) == 0.5
    assert context_reward("打电话给章伟", ["张伟"]) == -0.5
    assert context_reward("call john", ["john", "smith", "call"]) == pytest.approx((0.5 - 0.5 + 0.5) / 3)
    assert context_reward("anything", []) is None
    assert context_reward("anything", None) is None
    assert context_reward("anything", ["", "。"]) is None


def test_keyword_match_is_whole_words_for_english():
    assert not keyword_present("fill up with gasoline", "gas")
    assert keyword_present("the nearest gas station", "Gas Station")
    assert keyword_present("导航到最近的加油站", "加油站")


# ---- total and TRL signatures --------------------------------------------------------------------------------
def test_total_equals_formula():
    hyp, ref, kws = "call jon smith", "call john smith", ["john smith", "call"]
    acc = math.exp(-2 * 1 / 15)  # one deletion, 15 units (13 letters + 2 boundaries)
    hallu = 0.0
    ctx = (-0.5 + 0.5) / 2
    assert total_reward(hyp, ref, kws) == pytest.approx(acc + 0.5 * hallu + 0.5 * ctx)
    # a hallucinated, keyword-less answer
    hyp2 = "call john smith and then play the beatles please now"  # 10 words > 2 * 3
    acc2 = accuracy_reward(hyp2, ref)
    assert total_reward(hyp2, ref, []) == pytest.approx(acc2 - 0.5)
    assert total_reward(hyp2, ref, ["beatles"], weights=(1.0, 0.5, 0.5)) == pytest.approx(acc2 - 0.5 + 0.25)


def test_trl_reward_functions_read_columns_and_completion_forms():
    completions = ["call john smith", [{"role": "assistant", "content": "打电话给张伟"}], "x y z w v u t"]
    kwargs = {
        "reference": ["call john smith", "打电话给张伟", "hi"],
        "keywords": [["john smith"], [], ["hi"]],
        "trainer_state": None,
    }
    prompts = ["p"] * 3
    assert r_acc(prompts, completions, None, **kwargs)[:2] == [1.0, 1.0]
    assert r_hallu(prompts, completions, None, **kwargs) == [0.0, 0.0, -1.0]
    assert r_context(prompts, completions, None, **kwargs) == [0.5, None, -0.5]
    assert r_context(prompts, completions, None, reference=kwargs["reference"]) == [None] * 3
    assert [f.__name__ for f in (r_acc, r_hallu, r_context)] == ["r_acc", "r_hallu", "r_context"]
    with pytest.raises(KeyError, match="reference"):
        r_acc(prompts, completions)
