"""`entropy-asr evaluate` on the tiny corpus with the random tiny model: the report's documented keys,
and every number in it recomputed from the predictions it saved (the model's quality is irrelevant)."""

from __future__ import annotations

import json
import math

import pytest

from eval.asr_error_rate.scoring import bootstrap_interval, error_rate, normalize_text
from eval.hallucination import is_hallucination
from eval.runners.evaluate import default_splits, is_probe_split
from eval.runners.keys import HEADLINE_KEYS
from training.commands.cli import main

SPLITS = ["test", "probe_silence"]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, tiny_corpus, tiny_model_dir):
    out = tmp_path_factory.mktemp("evaluate")
    code = main(
        [
            "evaluate",
            "--model", str(tiny_model_dir),
            "--data", str(tiny_corpus / "dataset"),
            "--splits", *SPLITS,
            "--max-utterances", "4",
            "--analysis-max-utterances", "6",  # the encoder scores on their own fixed set
            "--batch-size", "3",
            "--device", "cpu",
            "--reference-model", str(tiny_model_dir),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


@pytest.mark.parametrize(
    "available, expected",
    [
        (["train", "dev", "test", "probe_silence"], ["test", "probe_silence"]),
        (["train", "dev", "probe_white"], ["dev", "probe_white"]),
        (["train"], []),
    ],
)
def test_default_splits(available, expected):
    assert default_splits(available) == expected


def test_probe_split_detection():
    assert is_probe_split("probe_music", ["anything"])
    assert is_probe_split("noise", ["", " ", "。"])  # empty after normalisation
    assert not is_probe_split("test", ["", "hello"])


def test_report_has_the_documented_keys(evaluation):
    out, report = evaluation
    assert report["schema"] == "entropy-asr/evaluate" and report["schema_version"] == 1
    for key in (*HEADLINE_KEYS, "decode_seconds", "audio_seconds", "n_utterances", "splits", "settings"):
        assert key in report, key
    assert report["primary_split"] == "test"
    assert list(report["splits"]) == SPLITS
    assert [report["splits"][s]["kind"] for s in SPLITS] == ["speech", "probe"]
    for key in ("wer_en", "cer_zh", "nse", "pai", "csai", "rtf"):
        assert report[key] is None or math.isfinite(report[key])
    assert report["wer_en"] >= 0 and report["cer_zh"] >= 0 and report["mer_mixed"] is None
    for key in ("wer_en", "cer_zh"):  # seeded bootstrap intervals around the rates
        low, high = report[f"{key}_ci95"]
        assert low <= report[key] <= high
        assert report["splits"]["test"]["error_rates"][key[-2:]]["ci95"] == [low, high]
    assert report["mer_mixed_ci95"] is None
    for key in ("per_en", "per_zh"):  # the phoneme head's error, with the same bootstrap over utterances
        low, high = report[f"{key}_ci95"]
        assert low <= report[key] <= high
    assert report["nse_ci95"][0] <= report["nse"] <= report["nse_ci95"][1]
    assert report["cka_to_pretrained_ci95"] == pytest.approx([1.0, 1.0], abs=1e-6)  # its own encoder
    for key in ("hallucination_rule", "hallucination_probe"):  # with the Wilson intervals of the proportions
        assert 0.0 <= report[f"{key}_ci95"][0] <= report[key] <= report[f"{key}_ci95"][1] <= 1.0
        assert report[f"{key}_ci95"][1] > 0  # informative at 0 of n too
    assert report["hallucination_probe_ci95"] == report["splits"]["probe_silence"]["hallucination"]["ci95"]
    assert 0.0 <= report["nse"] <= 1.0
    assert report["cka_to_pretrained"] == pytest.approx(1.0, abs=1e-6)  # its own encoder as reference
    assert report["entropy_allocation"]["nse"] == report["nse"]
    assert report["entropy_allocation"]["label_source"] == "own_phoneme_head"
    # 4 utterances decoded, the encoder scored on its own 6 (the first, the last and 4 between)
    assert (
        report["splits"]["test"]["n_utterances"] == 4 and report["settings"]["analysis_max_utterances"] == 6
    )
    assert report["entropy_allocation"]["n_utterances"] == 6
    for key in ("pai", "csai", "csai_frame"):  # each with its interval or the flag that it stopped at start
        assert report[f"{key}_ci95"] is not None or report[f"{key}_stopped_at_start"], key


def test_readme_and_plots(evaluation):
    out, report = evaluation
    readme = (out / "README.md").read_text()
    for heading in ("## Headline", "## Error rates", "## Hallucination", "## Speed", "## Entropy allocation"):
        assert heading in readme
    links = [line.split("](")[1].rstrip(")") for line in readme.splitlines() if line.startswith("![")]
    assert len(links) == 3
    for link in links:
        assert (out / link).read_bytes()[:4] == b"\x89PNG"
    assert (out / "entropy_allocation" / "scores.json").is_file()
    for split in SPLITS:
        assert f"### {split}" in readme


def test_probe_rate_matches_saved_predictions(evaluation):
    _, report = evaluation
    probe = report["splits"]["probe_silence"]
    preds = probe["predictions"]
    assert len(preds) == probe["n_utterances"] == 4
    assert all(p["reference"] == "" for p in preds)
    nonempty = [p["id"] for p in preds if normalize_text(p["prediction"])]
    assert probe["hallucination"]["rate"] == len(nonempty) / len(preds)
    assert probe["hallucination"]["flagged_ids"] == nonempty
    assert report["hallucination_probe"] == probe["hallucination"]["rate"]  # the only probe split
    assert [w["id"] for w in probe["worst"]] == sorted(
        nonempty, key=lambda i: -len(normalize_text(next(p["prediction"] for p in preds if p["id"] == i)))
    )[:10]


def test_speech_numbers_match_saved_predictions(evaluation):
    _, report = evaluation
    test = report["splits"]["test"]
    preds = test["predictions"]
    assert len(preds) == test["n_utterances"] == 4
    for lang, key in (("en", "wer_en"), ("zh", "cer_zh")):
        rows = [p for p in preds if p["scoring_language"] == lang]
        assert rows and all(p["language"] == lang for p in rows)
        expected = error_rate([p["prediction"] for p in rows], [p["reference"] for p in rows], language=lang)
        assert report[key] == pytest.approx(expected["error_rate"])
        assert test["error_rates"][lang]["reference_length"] == expected["reference_length"]
        assert (
            sum(p["errors"] for p in rows)
            == expected["substitutions"] + expected["deletions"] + expected["insertions"]
        )
    flags = [is_hallucination(p["prediction"], p["reference"]) for p in preds]
    assert [p["hallucination"] for p in preds] == flags
    assert report["hallucination_rule"] == sum(flags) / len(flags)
    rates = [w["error_rate"] for w in test["worst"]]
    assert rates == sorted(rates, reverse=True) and len(rates) == min(10, len(preds))


def test_biased_rates_match_saved_predictions_and_each_rows_names(evaluation, tiny_corpus):
    from eval.asr_error_rate.scoring import biased_error_rate
    from training.data.splits import load_split

    out, report = evaluation
    test = report["splits"]["test"]
    names = {u.id: u.hotwords for u in load_split(tiny_corpus / "dataset", "test", 4)[0]}
    assert any(names.values())
    for lang, (b_key, u_key) in (("en", ("bwer_en", "uwer_en")), ("zh", ("bcer_zh", "ucer_zh"))):
        rows = [p for p in test["predictions"] if p["scoring_language"] == lang]
        expected = biased_error_rate(
            [p["prediction"] for p in rows],
            [p["reference"] for p in rows],
            [names[p["id"]] for p in rows],
            language=lang,
        )
        assert test["biased_error_rates"][lang] == expected
        assert (report[b_key], report[u_key]) == (
            expected["biased"]["error_rate"],
            expected["unbiased"]["error_rate"],
        )
        both = expected["biased"]["reference_length"] + expected["unbiased"]["reference_length"]
        assert both == test["error_rates"][lang]["reference_length"]
    assert "biased_error_rates" not in report["splits"]["probe_silence"]
    assert "| test | en | B-WER |" in (out / "README.md").read_text()


def test_timing_is_consistent(evaluation):
    _, report = evaluation
    splits = report["splits"].values()
    assert report["audio_seconds"] == pytest.approx(sum(s["audio_seconds"] for s in splits))
    assert report["audio_seconds"] == pytest.approx(
        sum(p["seconds"] for s in splits for p in s["predictions"])
    )
    assert report["rtf"] == pytest.approx(report["decode_seconds"] / report["audio_seconds"])
    assert report["n_utterances"] == 8 and report["utterances_per_second"] > 0


@pytest.mark.parametrize(
    ("mode", "bias_only"), [("entities", False), ("retrieved", False), ("entities", True)]
)
def test_context_modes_reach_the_prompt(tmp_path, tiny_corpus, tiny_model_dir, monkeypatch, mode, bias_only):
    """--context entities gives each clip its own entity names (every one acting: no retrieval); --context
    retrieved looks the hotword file up in each clip's CTC hypothesis (a hotword made of the first clip's own
    hypothesis is found there); with --no-prompt-hotwords they act through the bias alone."""
    from eval.runners import analyze
    from modeling.generation_entropy_asr import HotwordIndex
    from training.data.splits import load_split
    from training.inference import load_pipeline

    utterances, _ = load_split(tiny_corpus / "dataset", "test", 4)
    by_length = {len(u.audio): u for u in utterances}
    assert len(by_length) == 4 and any(u.hotwords for u in utterances)
    pipe = load_pipeline(str(tiny_model_dir), "cpu")
    model_class, processor_class = type(pipe.model), type(pipe.processor)
    first = utterances[0]
    prompt_flag = ["--hotword-bonus", "2.5", "--no-prompt-hotwords"] if bias_only else ["--prompt-hotwords"]
    args = ["--context", mode, "--ctc-weight", "0", *prompt_flag]
    if mode == "retrieved":
        phonemes = pipe(first.audio, ctc_weight=0, return_phonemes=True)["phonemes"].split()
        assert len(phonemes) >= 3
        (tmp_path / "hotwords.txt").write_text("heard\n", encoding="utf-8")
        args += ["--hotwords-file", str(tmp_path / "hotwords.txt")]
        # the file's words would go through the phonemizer; here the hotword is the first clip's own hypothesis
        index = HotwordIndex.from_phonemes({"heard": phonemes[:3]})
        monkeypatch.setattr(model_class, "_hotword_index", lambda self, processor, opts: index)
    seen: dict[int, tuple] = {}  # clip length -> (hotwords given, result)
    options_seen = []
    original = model_class.transcribe

    def spy(self, audio, processor, options=None, **changes):
        opts = self.decoding_options(options, **changes)
        options_seen.append((opts.hotword_bonus, opts.prompt_hotwords, opts.hotword_retrieval))
        results = original(self, audio, processor, options, **changes)
        for wave, result in zip(audio, results):
            seen[len(wave)] = (list(opts.hotwords) or None, result)
        return results

    monkeypatch.setattr(model_class, "transcribe", spy)
    monkeypatch.setattr(analyze, "load_recognizer", lambda model, device: pipe)
    prompts: list[list] = []
    prompt_inputs = processor_class.prompt_inputs
    monkeypatch.setattr(
        processor_class,
        "prompt_inputs",
        lambda self, counts, contexts=None, prefixes=None: (
            prompts.extend(contexts or [None] * len(counts))
            or prompt_inputs(self, counts, contexts, prefixes)
        ),
    )
    out = tmp_path / "out"
    code = main(
        ["evaluate", "--model", str(tiny_model_dir), "--data", str(tiny_corpus / "dataset"), "--splits", "test",
         "--max-utterances", "4", "--batch-size", "2", "--device", "cpu", "--no-analysis", "--out", str(out), *args]
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / "report.json").read_text())
    settings, split = result["settings"], result["splits"]["test"]
    assert (
        settings["context"] == mode and settings["no_speech_threshold"] is None
    )  # the tiny model has no gate
    expected = (2.5, False) if bias_only else (pipe.model.decoding_options().hotword_bonus, True)
    assert (settings["hotword_bonus"], settings["prompt_hotwords"]) == expected
    assert {o[:2] for o in options_seen} == {expected}
    assert {o[2] for o in options_seen} == ({True} if mode == "retrieved" else {False})
    # what the prompts had: the hotwords (some clips have none), or none of them for the bias alone
    assert len(prompts) == 4 and any(prompts) is not bias_only
    assert set(seen) == set(by_length)
    contexts = {row["id"]: row["context"] for row in split["predictions"]}  # each clip's hotwords
    if mode == "entities":
        assert {n: c for n, (c, _) in seen.items()} == {n: u.hotwords or None for n, u in by_length.items()}
        assert contexts == {u.id: u.hotwords for u in utterances} and "retrieval" not in split
    else:
        assert seen[len(first.audio)][1]["hotwords"] == ["heard"]
        assert contexts == {u.id: seen[len(u.audio)][1]["hotwords"] for u in utterances}
        assert contexts[first.id] == ["heard"]
        retrieved = sum(len(c) for c in contexts.values())
        names = sum(len(set(u.hotwords)) for u in utterances)
        assert split["retrieval"] == {
            "recall": 0.0,  # "heard" is none of the clips' entity names
            "precision": 0.0,
            "hotwords_per_utterance": retrieved / 4,
            "names": names,
            "retrieved": retrieved,
            "found": 0,
        }
        assert "## Hotword retrieval" in (out / "README.md").read_text()


def test_retrieval_scores_count_names_found_among_the_hotwords_each_clip_got():
    import numpy as np

    from eval.runners.evaluate import Decoded, retrieval_scores
    from training.data.splits import Utterance

    def utt(i, names):
        return Utterance(f"u{i}", np.zeros(1600, np.float32), "x", "en", i, names)

    utts = [utt(0, ["ann lee", "bo"]), utt(1, ["cy"]), utt(2, [])]
    context = [["ann lee", "zed"], ["bo"], []]  # "bo" is the first clip's name, not the second's
    assert retrieval_scores(Decoded(utts, ["", "", ""], 1.0, 0, context)) == {
        "recall": 1 / 3,
        "precision": 1 / 3,
        "hotwords_per_utterance": 1.0,
        "names": 3,
        "retrieved": 3,
        "found": 1,
    }
    assert retrieval_scores(Decoded(utts, ["", "", ""], 1.0, 0, None)) is None
    probe = retrieval_scores(Decoded([utt(3, [])], [""], 1.0, 0, [["bo"]]))
    assert probe["recall"] is None and probe["precision"] is None and probe["hotwords_per_utterance"] == 1.0


def test_retrieved_context_needs_a_hotword_file(tmp_path, tiny_corpus, tiny_model_dir):
    args = [
        "evaluate",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tiny_corpus / "dataset"),
        "--out",
        str(tmp_path),
    ]
    assert main([*args, "--context", "retrieved"]) == 2
    assert main([*args, "--hotwords-file", str(tmp_path / "h.txt")]) == 2


def test_phoneme_error_rates_count_edits_per_language_against_the_rows_phonemes():
    import numpy as np

    from eval.runners.evaluate import phoneme_error_rates
    from training.data.splits import Utterance

    class Heads:  # a CTC head that "hears" fixed hypotheses, one per clip length
        def __init__(self, hyps):
            self.hyps, self.calls = hyps, 0

        def ctc_hypotheses(self, audios):
            self.calls += 1
            return [self.hyps[len(a)] for a in audios]

    def utt(n, text, language, phonemes):
        return Utterance(f"u{n}", np.zeros(n, np.float32), text, language, n, phonemes=phonemes)

    utterances = [
        utt(10, "hi", "en", "HH AY"),  # an AH inserted
        utt(11, "play", "en", "P L EY"),  # L deleted, EY -> IY
        utt(
            12, "好", "cmn", ["h", "ao3"]
        ),  # ao3 -> ao4; a list column, a label other than "zh": scored as zh
        utt(13, "go", "en", None),  # no phonemes column: the g2p of the text (G OW), heard as G OW
    ]
    heads = Heads({10: ["HH", "AY", "AH"], 11: ["P", "IY"], 12: ["h", "ao4"], 13: ["G", "OW"]})
    rates = phoneme_error_rates(heads.ctc_hypotheses, utterances, batch_size=2)
    assert heads.calls == 2  # batched
    assert rates["en"] == {
        "metric": "per",
        "error_rate": pytest.approx(3 / 7),
        "ci95": bootstrap_interval([1, 2, 0], [2, 3, 2]),  # each utterance's edits and reference phonemes
        "substitutions": 1,
        "deletions": 1,
        "insertions": 1,
        "hits": 5,
        "reference_length": 7,
        "num_samples": 3,
    }
    assert rates["zh"]["error_rate"] == pytest.approx(1 / 2) and rates["zh"]["substitutions"] == 1
    assert rates["zh"]["ci95"] is None  # one utterance
    assert phoneme_error_rates(None, utterances, batch_size=2) is None  # a character head: no phoneme error


def test_phoneme_error_in_the_report_is_the_models_own_ctc_hypotheses(
    evaluation, tiny_corpus, tiny_model_dir
):
    from eval.asr_error_rate.scoring import error_counts
    from eval.runners.evaluate import ctc_hypotheses
    from training.data.splits import load_split
    from training.inference import load_pipeline

    _, report = evaluation
    test = report["splits"]["test"]
    utterances, _ = load_split(tiny_corpus / "dataset", "test", 4)
    hyps = ctc_hypotheses(load_pipeline(str(tiny_model_dir), "cpu"))([u.audio for u in utterances])
    for lang, key in (("en", "per_en"), ("zh", "per_zh")):
        pairs = [(h, u.phonemes.split()) for h, u in zip(hyps, utterances) if u.language == lang]
        edits = sum(
            c.substitutions + c.deletions + c.insertions for c in (error_counts(h, r) for h, r in pairs)
        )
        assert pairs and report[key] == pytest.approx(edits / sum(len(r) for _, r in pairs))
        assert test["phoneme_error_rates"][lang]["num_samples"] == len(pairs)
    assert "phoneme_error_rates" not in report["splits"]["probe_silence"]
    assert "| test | en | PER |" in (evaluation[0] / "README.md").read_text()


def test_the_readme_names_the_decoder_the_report_measured():
    from eval.runners.keys import decoder_text

    options = {"ctc_weight": 0.3, "beam_size": 8, "ctc_candidates": 50, "unit_bonus": 2.0}
    assert decoder_text({**options, "ctc_weight": 0.0}) == "greedy decoding"
    assert decoder_text(options) == (
        "joint CTC / LLM beam search, CTC weight 0.3, 8 hypotheses, 50 LLM proposals each, length bonus 2 per "
        "word or Hanzi"
    )
    retrieved = decoder_text({**options, "context": "retrieved"})
    assert retrieved.endswith("per word or Hanzi, hotwords retrieved per clip")
