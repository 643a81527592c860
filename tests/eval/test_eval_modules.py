"""The evaluate modules load offline from their local folders and give the library's numbers."""

import filecmp
import math
import os
from pathlib import Path

import evaluate
import numpy as np
import pytest
from evaluate.loading import get_imports

from eval.asr_error_rate.scoring import biased_error_rate, error_rate
from eval.entropy_allocation.allocation import entropy_allocation_scores

FAST = {"min_steps": 50}


@pytest.fixture(scope="module")
def frames(corpus):
    rng = np.random.default_rng(0)
    z = np.concatenate([np.eye(20)[corpus.phonemes], np.eye(40)[corpus.units]], 1)
    z = (z + 0.1 * rng.standard_normal(z.shape)).astype(np.float32)
    ref = (z @ rng.standard_normal((60, 24))).astype(np.float32)
    return z, ref


def _load(eval_dir: Path, name: str, config_name: str | None = None):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return evaluate.load(str(eval_dir / name), config_name, keep_in_memory=True)


def test_entropy_allocation_module_matches_library(eval_dir, corpus, frames):
    z, _ = frames
    metric = _load(eval_dir, "entropy_allocation")
    got = metric.compute(
        encoder_states=z,
        phonemes=corpus.phonemes,
        units=corpus.units,
        utterance_ids=corpus.utterance_ids,
        pronunciations=corpus.pronunciations,
        **FAST,
    )
    expected = entropy_allocation_scores(
        z, corpus.phonemes, corpus.units, corpus.utterance_ids, pronunciations=corpus.pronunciations, **FAST
    )
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert "cka" not in got and got["csai_bits"] is not None
    with pytest.raises(TypeError, match="pronunciations must be one integer id per frame"):
        metric.compute(
            encoder_states=z,
            phonemes=corpus.phonemes,
            units=corpus.units,
            utterance_ids=corpus.utterance_ids,
            pronunciations=corpus.pronunciations.astype(float),
        )


def test_entropy_allocation_module_with_reference_and_int_ids(eval_dir, corpus, frames):
    z, ref = frames
    utt_int = np.unique(corpus.utterance_ids, return_inverse=True)[1]
    metric = _load(eval_dir, "entropy_allocation", "with_reference")
    half = len(z) // 2
    for sl in (slice(None, half), slice(half, None)):  # two batches, as in an evaluation loop
        metric.add_batch(
            encoder_states=z[sl],
            reference_states=ref[sl],
            phonemes=corpus.phonemes[sl],
            units=corpus.units[sl],
            utterance_ids=utt_int[sl],
        )
    got = metric.compute(log_base=math.e, **FAST)
    expected = entropy_allocation_scores(
        z, corpus.phonemes, corpus.units, utt_int, reference_states=ref, log_base=math.e, **FAST
    )
    for key in ("cka", "nse", "nse_reference", "pai_bits", "csai_frame_bits", "h_p", "ce_s_given_pz"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert got["log_base"] == math.e
    assert 0.0 < got["cka"] < 1.0


def test_entropy_allocation_card_example(eval_dir):
    # the example of the metric card: Z carries the phoneme only, 3 one-phoneme words (homophones) per phoneme
    rng = np.random.default_rng(0)
    phonemes = rng.integers(0, 20, 5000)
    units = phonemes * 3 + rng.integers(0, 3, 5000)
    utts = np.repeat(np.arange(50), 100)
    z = np.eye(20)[phonemes] + 0.05 * rng.standard_normal((5000, 20))
    out = _load(eval_dir, "entropy_allocation").compute(
        encoder_states=z, phonemes=phonemes, units=units, utterance_ids=utts, pronunciations=phonemes
    )
    assert out["pai_normalised"] > 0.98
    assert abs(out["csai_bits"]) < 0.05 and abs(out["csai_frame_bits"]) < 0.05
    assert out["ce_s_given_pron"] == pytest.approx(math.log2(3), abs=0.05)


def test_entropy_allocation_unknown_config(eval_dir):
    with pytest.raises(KeyError, match="config_name"):
        _load(eval_dir, "entropy_allocation", "cka_only")


def test_asr_error_rate_module_matches_library(eval_dir):
    preds = ["Hello world", "我用iphone打了电话", "the cat sat"]
    refs = ["hello, World!", "我用 iPhone 打电话。", "a cat sat down"]
    metric = _load(eval_dir, "asr_error_rate")
    for language in ("auto", "en", "zh", "mixed"):
        got = metric.compute(predictions=preds, references=refs, language=language)
        assert got == error_rate(preds, refs, language=language)
    got = metric.compute(predictions=preds, references=refs, return_per_sample=True)
    assert got["metric"] == "mer" and len(got["per_sample"]) == 3
    names = [["World"], [], ["cat"]]
    got = metric.compute(predictions=preds, references=refs, bias_phrases=names)
    assert got == {**error_rate(preds, refs), **biased_error_rate(preds, refs, names, language="mixed")}
    assert got["biased"]["error_rate"] == 0.0 and got["biased"]["reference_length"] == 2


@pytest.mark.parametrize(
    "module, math_file, libraries",
    [
        ("entropy_allocation", "allocation", {"datasets", "evaluate", "numpy"}),
        ("asr_error_rate", "scoring", {"datasets", "evaluate"}),
    ],
)
def test_single_source_files_ship_with_module(eval_dir, module, math_file, libraries):
    """The script imports its math by relative import, and evaluate copies that very file."""
    imports = get_imports(str(eval_dir / module / f"{module}.py"))
    assert {name for kind, name, _, _ in imports if kind == "internal"} == {math_file}
    assert {name for kind, name, _, _ in imports if kind == "library"} == libraries
    metric = _load(eval_dir, module, "with_reference" if module == "entropy_allocation" else None)
    loaded_dir = Path(__import__(type(metric).__module__, fromlist=["_"]).__file__).parent
    assert filecmp.cmp(loaded_dir / f"{math_file}.py", eval_dir / module / f"{math_file}.py", shallow=False)
