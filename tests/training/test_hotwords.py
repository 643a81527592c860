"""Hotwords (modeling/generation_entropy_asr.py): retrieval by Aho-Corasick over phoneme sequences against a
brute-force scan, longest match, homophones, tones, the phonemizer path from hotword text; the bias; and the
options on the model, the pipeline and the commands."""

from __future__ import annotations

import numpy as np
import pytest

from modeling.generation_entropy_asr import HotwordBias, HotwordIndex
from tests.conftest import synth_clip


def brute_force(keys: dict[str, list[str]], query: list[str], min_phonemes: int) -> set[tuple[int, int, str]]:
    out = set()
    for word, key in keys.items():
        n = len(key)
        if n < min_phonemes:
            continue
        for s in range(len(query) - n + 1):
            if query[s : s + n] == key:
                out.add((s, s + n, word))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_matches_equal_a_brute_force_scan(seed):
    # a 3-symbol alphabet forces many overlapping keys, shared prefixes and suffix links
    rng = np.random.default_rng(seed)
    alphabet = ["A", "B", "C"]
    keys = {f"w{i}": list(rng.choice(alphabet, size=rng.integers(1, 6))) for i in range(40)}
    index = HotwordIndex.from_phonemes(keys, min_phonemes=2)
    for _ in range(20):
        query = list(rng.choice(alphabet + ["D"], size=rng.integers(0, 30)))
        got = {(m.start, m.end, w) for m in index.matches(query) for w in m.hotwords}
        assert got == brute_force(keys, query, 2)


def levenshtein(a: list, b: list) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@pytest.mark.parametrize("seed", range(3))
def test_best_alignment_equals_a_brute_force_over_substrings(seed):
    from modeling.generation_entropy_asr import _best_alignment

    rng = np.random.default_rng(seed)
    for _ in range(200):
        key = list(rng.integers(0, 4, rng.integers(1, 7)))
        window = list(rng.integers(0, 4, rng.integers(0, 10)))
        per_end = []  # for each end: the cheapest cost and the earliest start reaching it
        for b in range(len(window) + 1):
            cost, a = min((levenshtein(key, window[a:b]), a) for a in range(b + 1))
            per_end.append((cost, abs(b - a - len(key)), a, b))
        cost, _, a, b = min(per_end)
        assert _best_alignment(key, window) == (cost, a, b)


def _corrupt(rng, key: list[str], edits: int, alphabet: list[str]) -> list[str]:
    out = list(key)
    for _ in range(edits):
        kind, pos = rng.integers(0, 3), int(rng.integers(0, len(out)))
        if kind == 0:  # substitution by another symbol
            out[pos] = next(x for x in rng.permutation(alphabet) if x != out[pos])
        elif kind == 1:
            out.insert(pos, str(rng.choice(alphabet)))
        else:
            del out[pos]
    return out


@pytest.mark.parametrize(("max_edits", "per_edit"), [(1, 6), (2, 6), (2, 3)])
def test_fuzzy_retrieval_finds_every_hotword_heard_within_its_edits_and_reports_true_distances(
    max_edits, per_edit
):
    rng = np.random.default_rng(max_edits * 10 + per_edit)
    alphabet = [f"p{i}" for i in range(12)]
    shared = ["p0", "p1", "p2"]  # half the keys end alike, as names ending in -son do
    keys = {}
    for i in range(60):
        key = [str(x) for x in rng.choice(alphabet, size=rng.integers(3, 16))]
        keys[f"w{i}"] = key[:-3] + shared if i % 2 and len(key) > 5 else key
    index = HotwordIndex.from_phonemes(keys, max_edits=max_edits, phonemes_per_edit=per_edit)
    exact = HotwordIndex.from_phonemes(keys)
    for trial in range(150):
        word = f"w{trial % 60}"
        key = keys[word]
        allowed = index.allowed_edits(len(key))
        assert allowed == (0 if len(key) < 5 else min(max_edits, len(key) // per_edit))
        heard = _corrupt(rng, key, int(rng.integers(0, allowed + 1)), alphabet)
        before = [
            str(x) for x in rng.choice(alphabet + ["unk"], size=rng.integers(0, 8))
        ]  # "unk": no key has it
        query = before + heard + [str(x) for x in rng.choice(alphabet + ["unk"], size=3)]
        found = index.matches(query)
        # the pigeonhole guarantee: within the allowed edits, the hotword is found where it was heard
        here = (len(before), len(before) + len(heard))
        assert any(word in m.hotwords and m.start < here[1] and here[0] < m.end for m in found)
        for m in found:  # every match is true: its span is within the allowed edits of its key
            for w in m.hotwords:
                d = levenshtein(keys[w], query[m.start : m.end])
                assert d == m.edits <= index.allowed_edits(len(keys[w]))
        # exact matches are the exact index's; keys shorter than per_edit phonemes only ever match exactly
        assert {m for m in found if m.edits == 0} == set(exact.matches(query))
        assert all(len(keys[w]) >= max(per_edit, 5) for m in found if m.edits for w in m.hotwords)
        # no two matches of one key overlap unless both are exact
        for a in found:
            for b in found:
                if a != b and a.hotwords == b.hotwords and a.start < b.end and b.start < a.end:
                    assert a.edits == b.edits == 0


def test_a_name_heard_near_the_start_is_checked_around_every_piece_found():
    """Pieces found near the start of a hypothesis once shared one clipped window: only the first was aligned, and a
    name whose first piece lay elsewhere went unfound."""
    key = ["p5", "p0", "p1", "p11", "p5", "p10"]  # pieces p5 p0 | p1 p11 | p5 p10
    heard = ["p3", "p5", "p10", "p1", "p11", "p5", "p10", "unk"]  # p0 heard as p10: "p5 p10" occurs twice
    index = HotwordIndex.from_phonemes({"w": key}, max_edits=2, phonemes_per_edit=3)
    assert [(m.start, m.end, m.edits) for m in index.matches(heard)] == [(1, 7, 1)]


def test_names_under_five_phonemes_match_exactly_at_any_spacing():
    """A two-syllable Mandarin name with one edit would match everyday words (代艳 in 打电话)."""
    heard = [
        "d",
        "a3",
        "d",
        "ian4",
        "h",
        "ua4",
        "g",
        "ei3",
        "l",
        "in2",
        "j",
        "vn4",
        "j",
        "ie2",
    ]  # 打电话给林俊杰
    keys = {"代艳": ["d", "ai4", "ian4"], "林俊杰": ["l", "in2", "j", "vn4", "j", "ie2"]}
    index = HotwordIndex.from_phonemes(keys, max_edits=4, phonemes_per_edit=2)
    assert index.allowed_edits(4) == 0 and index.allowed_edits(5) == 2 and index.allowed_edits(6) == 3
    assert index.retrieve(heard) == ["林俊杰"]
    misheard = heard[:-1] + ["ie3"]  # a tone wrong in the longer name: one edit, found
    assert index.retrieve(misheard) == ["林俊杰"]


def test_fuzzy_retrieval_with_tones_ignored():
    keys = {"黄建军": ["h", "uang2", "j", "ian4", "j", "un1"]}
    heard = ["d", "ao4", "h", "uang3", "j", "ian4", "j", "in1"]  # a tone and a final misheard
    assert HotwordIndex.from_phonemes(keys, max_edits=1).retrieve(heard) == []  # two edits with tones
    assert HotwordIndex.from_phonemes(keys, max_edits=1, ignore_tones=True).retrieve(heard) == ["黄建军"]


def test_fuzzy_match_of_a_long_name_beats_an_exact_short_one_inside_it():
    keys = {"liberty park": "L IH B ER T IY P AA R K".split(), "park": "P AA R K".split()}
    heard = "D R AY V T UW L IH G ER T IY P AA R K P L IY Z".split()  # B heard as G
    assert HotwordIndex.from_phonemes(keys).retrieve(heard) == ["park"]
    assert HotwordIndex.from_phonemes(keys, max_edits=1).retrieve(heard) == ["liberty park"]
    with pytest.raises(ValueError, match="max_edits >= 0"):
        HotwordIndex(max_edits=-1)


def test_longest_match_wins_and_order_follows_the_hypothesis():
    index = HotwordIndex.from_phonemes(
        {
            "park": ["P", "AA", "R", "K"],
            "liberty park": "L IH B ER T IY P AA R K".split(),
            "bert": "B ER T".split(),
        }
    )
    hyp = "D R AY V T UW L IH B ER T IY P AA R K N IH R B ER T".split()
    assert [(m.start, m.end, m.hotwords) for m in index.search(hyp)] == [
        (6, 16, ("liberty park",)),
        (19, 22, ("bert",)),
    ]
    assert index.retrieve(" ".join(hyp)) == ["liberty park", "bert"]
    assert index.retrieve(hyp, max_hotwords=1) == ["liberty park"]
    assert index.retrieve("S IH L V ER".split()) == []


def test_homophones_come_back_together_and_tones_can_be_ignored():
    keys = {"张伟": ["zh", "ang1", "uei3"], "章伟": ["zh", "ang1", "uei3"], "张薇": ["zh", "ang1", "uei1"]}
    exact = HotwordIndex.from_phonemes(keys)
    hyp = ["d", "a3", "g", "ei3", "zh", "ang1", "uei3"]
    assert exact.retrieve(hyp) == ["张伟", "章伟"]
    assert exact.retrieve(["zh", "ang4", "uei3"]) == []
    toneless = HotwordIndex.from_phonemes(keys, ignore_tones=True)
    assert sorted(toneless.retrieve(["zh", "ang4", "uei3"])) == ["张伟", "张薇", "章伟"]
    assert len(exact) == 3


def test_short_hotwords_are_skipped_and_reported():
    index = HotwordIndex.from_phonemes(
        {"ok": ["OW", "K"], "okay now": "OW K EY N AW".split()}, min_phonemes=3
    )
    assert index.skipped == ["ok"]
    assert index.retrieve(["OW", "K"]) == []
    with pytest.raises(ValueError):
        HotwordIndex(min_phonemes=0)


def test_hotwords_go_through_the_models_phonemizer(tmp_path, tiny_model_and_processor):
    from modeling.generation_entropy_asr import DecodingOptions
    from training.data.g2p import phoneme_string

    phonemizer = tiny_model_and_processor[1].phonemizer
    path = tmp_path / "hotwords.txt"
    path.write_text("# contacts\nliberty park\n\njennifer green\n龚志强\n", encoding="utf-8")
    words = DecodingOptions(hotwords_file=str(path)).hotwords
    index = HotwordIndex.from_hotwords(words, lambda w: [p for p, _ in phonemizer.phonemize(w)])
    assert len(index) == 3
    assert index.retrieve(phoneme_string("drive to liberty park please")) == ["liberty park"]
    assert index.retrieve(phoneme_string("读一下龚志强发来的消息")) == ["龚志强"]
    assert index.retrieve(phoneme_string("call jennifer brown")) == []


def _planted_index(monkeypatch, model, keys: dict):
    """The model retrieves with an index over `keys` (hotword -> phonemes) whatever hotwords it is given."""
    index = HotwordIndex.from_phonemes(keys)
    monkeypatch.setattr(type(model), "_hotword_index", lambda self, processor, opts: index)


def test_retrieved_hotwords_go_into_each_clips_prompt_and_bias(monkeypatch, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    clips = [synth_clip(1.5, seed=3), synth_clip(2.0, seed=4)]
    plain = model.transcribe(clips, processor, ctc_weight=0, return_phonemes=True)
    phonemes = [r["phonemes"].split() for r in plain]
    assert len(phonemes[0]) >= 3, "the random model's CTC head should emit something on this clip"
    # a hotword heard in clip 0 only (its first three CTC phonemes), and one heard nowhere
    key = phonemes[0][:3]
    assert " ".join(key) not in " ".join(phonemes[1])
    _planted_index(monkeypatch, model, {"heard": key, "unheard": ["zz"] * 3})
    prompts = []
    original = type(processor).prompt_inputs
    monkeypatch.setattr(
        type(processor),
        "prompt_inputs",
        lambda self, counts, contexts=None, prefixes=None: (
            prompts.append(contexts) or original(self, counts, contexts, prefixes)
        ),
    )
    options = {"hotwords": ["heard", "unheard"], "ctc_weight": 0}
    results = model.transcribe(clips, processor, prompt_hotwords=True, hotword_bonus=0, **options)
    assert [r["hotwords"] for r in results] == [["heard"], []]
    assert prompts[-1] == [["heard"], None]
    # the same transcripts as those contexts given by hand
    by_hand = [model.transcribe([c], processor, prompt_hotwords=True, hotword_bonus=0, hotword_retrieval=False,
                                ctc_weight=0, hotwords=h)[0]["text"] if h else plain[i]["text"]
               for i, (c, h) in enumerate(zip(clips, (["heard"], None)))]  # fmt: skip
    assert [r["text"] for r in results] == by_hand
    # kept out of the prompt, retrieved hotwords come back and steer decoding through the bias, only where heard
    prompts.clear()
    biased = model.transcribe(clips, processor, hotword_bonus=1e4, prompt_hotwords=False, **options)
    assert [r["hotwords"] for r in biased] == [["heard"], []] and prompts[-1] is None
    assert biased[0]["text"].startswith("heard") and biased[1]["text"] == plain[1]["text"]


def test_toneless_syllabic_nasal_stays_apart_from_the_initial_n():
    index = HotwordIndex.from_phonemes({"嗯给": ["n2", "g", "ei3"]}, ignore_tones=True)
    assert index.retrieve(["n5", "g", "ei1"]) == ["嗯给"]
    assert index.retrieve(["n", "g", "ei3"]) == []  # the initial n is another sound


def test_bad_hotword_input_is_refused_clearly(tmp_path, tiny_model_dir, capsys):
    import soundfile as sf

    from eval.runners.evaluate import EvaluateConfig
    from training.commands.cli import main

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café\n".encode("latin-1"))
    clip = tmp_path / "a.wav"
    sf.write(clip, synth_clip(1.0), 16000)
    base = ["transcribe", "--model", str(tiny_model_dir), str(clip), "--ctc-weight", "0"]
    assert main([*base, "--hotwords-file", str(bad)]) == 2
    assert "--hotwords-file" in (err := capsys.readouterr().err) and "is not UTF-8" in err
    assert main([*base, "--hotwords-file", str(tmp_path / "missing.txt")]) == 2
    assert "--hotwords-file: no such file" in capsys.readouterr().err
    assert main([*base, "--max-hotwords", "0"]) == 2
    assert "--max-hotwords must be >= 1" in capsys.readouterr().err
    assert main([*base, "--hotwords", "stop here", "--hotword-bonus", "-1"]) == 2
    assert "--hotword-bonus must be >= 0" in capsys.readouterr().err
    assert main([*base, "--hotwords", "stop here", "--hotword-bonus", "0", "--no-prompt-hotwords"]) == 2
    assert "hotwords would do nothing" in capsys.readouterr().err
    assert main([*base, "--phonemes-per-edit", "1"]) == 2
    assert "--phonemes-per-edit must be >= 2" in capsys.readouterr().err
    # every hotword acting on every clip with a huge bias: the CLI's decoding writes it
    assert main([*base, "--hotwords", "stop here", "--hotword-bonus", "1e4", "--no-hotword-retrieval"]) == 0
    assert capsys.readouterr().out.split("\t")[1].startswith("stop here")
    with pytest.raises(ValueError, match="come from the context mode"):
        EvaluateConfig(model="m", data="d", out="o", decoding={"hotwords": ["a"]})
    with pytest.raises(ValueError, match="phonemes_per_edit must be >= 2"):
        EvaluateConfig(model="m", data="d", out="o", decoding={"phonemes_per_edit": 1})
    with pytest.raises(ValueError, match="needs hotwords_file"):
        EvaluateConfig(model="m", data="d", out="o", context="retrieved")
    evaluate = ["evaluate", "--model", "m", "--data", str(tmp_path), "--out", str(tmp_path / "e")]
    assert main([*evaluate, "--ctc-weight", "1.5"]) == 2


def _brute_force_targets(tokenizer, written: str, hotword: str) -> set[int]:
    """Every vocabulary token whose text, written after `written`, spells the next characters of `hotword`:
    continuing it where the transcript ends inside it (from a word boundary in English), else starting it (in
    English at a word boundary: after a space, or with one)."""
    english = not any("\u4e00" <= c <= "\u9fff" for c in hotword)
    inside = [
        k
        for k in range(1, len(hotword))
        if written.endswith(hotword[:k]) and (not english or len(written) == k or written[-k - 1] == " ")
    ]
    starts = [hotword]
    if english:
        starts = ([" " + hotword] if written.strip() else []) + (
            [hotword] if not written or written.endswith(" ") else []
        )
    out = set()
    for i in range(len(tokenizer)):
        s = tokenizer.decode([i])
        if not s or s.isspace():
            continue
        if inside:
            if any(hotword[k:].startswith(s) for k in inside):
                out.add(i)
        elif any(f.startswith(s) and not (f.startswith(" ") and s == " ") for f in starts):
            out.add(i)
    return out


@pytest.mark.parametrize(
    "written,hotword",
    [
        ("call ", "barbara stewart"),
        ("call barb", "barbara stewart"),
        ("call barbara ", "barbara stewart"),
        ("this", "sweet roses"),  # "s" ends a word here, so the hotword is not under way
        ("", "barbara stewart"),
        ("call", "josé ruiz"),  # spaced although not ASCII
        ("打电话给", "张伟"),
        ("打电话给张", "张伟"),
        ("呼叫", "萧晖"),  # no token of the test tokenizer spells these characters
    ],
)
def test_hotword_bias_favours_exactly_the_tokens_that_spell_the_hotword_on(
    tiny_model_and_processor, written, hotword
):
    tokenizer = tiny_model_and_processor[1].tokenizer
    got = HotwordBias(tokenizer, [[hotword]], 2.0, 0).targets(written, [hotword])
    assert got == _brute_force_targets(tokenizer, written, hotword)
    texts = {tokenizer.decode([i]) for i in got}
    # what each case must favour, spelled out by hand
    expected_start = {
        "call ": "b",  # after a written space: the word without one
        "call barb": "a",
        "call barbara ": "s",
        "this": " s",  # "s" ends a word here: start the hotword anew, with its space
        "": "b",  # the first word: either form
        "call": " j",
        "打电话给": "张",
        "打电话给张": "伟",
    }
    if written == "呼叫":
        assert got == set()
    else:
        assert texts and all(t.startswith(expected_start[written]) or t.startswith(" b") for t in texts), (
            texts
        )


def test_hotword_bias_steers_decoding_and_zero_changes_nothing(monkeypatch, tiny_model_and_processor):
    import torch

    from tests.conftest import spy_lean_loop

    model, processor = tiny_model_and_processor
    lean_calls = spy_lean_loop(monkeypatch)
    clips = [synth_clip(1.5, seed=3), synth_clip(2.0, seed=4)]
    words = {"hotwords": ["stop here"], "hotword_retrieval": False, "prompt_hotwords": True}
    plain = [r["text"] for r in model.transcribe(clips, processor, ctc_weight=0, hotword_bonus=0, **words)]
    # a huge bonus makes the random model spell the hotword, in the greedy loop and in the joint search
    steered = model.transcribe(clips, processor, ctc_weight=0, hotword_bonus=1e4, **words)
    assert all(r["text"].startswith("stop here") for r in steered) and plain[0] != steered[0]["text"]
    assert lean_calls == [1, 1]  # biased batches decode in the greedy loop
    searched = model.transcribe(clips[:1], processor, ctc_weight=0.01, hotword_bonus=1e4, **words)
    assert searched[0]["text"].startswith("stop here")
    # the logits processor adds the bonus to those tokens only, row by row
    tok = processor.tokenizer
    ids = torch.tensor([tok(" call", add_special_tokens=False)["input_ids"]] * 2)
    scores = torch.zeros(2, len(tok.get_vocab()))
    out = HotwordBias(tok, [["stop here"], []], 5.0, 0)(ids, scores.clone())
    expected = HotwordBias(tok, [["stop here"]], 5.0, 0).targets(" call", ["stop here"])
    assert set(out[0].nonzero().flatten().tolist()) == expected and not out[1].any()
    assert torch.all(out[0, sorted(expected)] == 5.0)
    # beam search: num_beams rows per clip, in clip order; each row gets its own clip's hotwords
    beams = HotwordBias(tok, [["stop here"], []], 5.0, 0)(
        ids.repeat_interleave(2, 0), torch.zeros(4, scores.shape[1])
    )
    assert torch.equal(beams[0], out[0]) and torch.equal(beams[1], out[0]) and not beams[2:].any()
    with pytest.raises(ValueError, match="hotwords for 2 clips, got scores for 3 rows"):
        HotwordBias(tok, [["stop here"], []], 5.0, 0)(ids[:1].repeat(3, 1), torch.zeros(3, scores.shape[1]))


def test_retrieval_settings_reach_the_index_from_both_commands(
    tmp_path, tiny_model_dir, tiny_corpus, monkeypatch
):
    """`--max-hotword-edits` and `--phonemes-per-edit` of `transcribe` and `evaluate` build the hotword index with
    those settings, and the evaluation report records them."""
    import json
    import sys

    import soundfile as sf

    from training import inference
    from training.commands.cli import main

    built = []
    load = inference.load_pipeline

    def loading(*args, **kwargs):  # the commands decode with the folder's own code: spy on its index
        pipe = load(*args, **kwargs)
        module = sys.modules[
            type(pipe.model).__module__.replace("modeling_entropy_asr", "generation_entropy_asr")
        ]
        original = module.HotwordIndex.from_hotwords.__func__

        def spy(cls, hotwords, phonemize, **options):
            index = original(cls, hotwords, phonemize, **options)
            built.append((options.get("max_edits"), index.phonemes_per_edit))
            return index

        if not getattr(module.HotwordIndex.from_hotwords, "spied", False):  # one module for every load
            spy.spied = True
            monkeypatch.setattr(module.HotwordIndex, "from_hotwords", classmethod(spy))
        return pipe

    monkeypatch.setattr(inference, "load_pipeline", loading)
    words = tmp_path / "hotwords.txt"
    words.write_text("liberty park\n", encoding="utf-8")
    clip = tmp_path / "a.wav"
    sf.write(clip, synth_clip(1.0), 16000)
    retrieval = ["--hotwords-file", str(words), "--max-hotword-edits", "2", "--ctc-weight", "0"]
    base = ["transcribe", "--model", str(tiny_model_dir), str(clip), *retrieval]
    assert main([*base, "--phonemes-per-edit", "5"]) == 0
    assert main(base) == 0
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(tiny_model_dir), "--data", str(tiny_corpus / "dataset"), "--splits", "test",
            "--max-utterances", "2", "--no-analysis", "--out", str(out), "--context", "retrieved", *retrieval,
            "--phonemes-per-edit", "4"]  # fmt: skip
    assert main(args) == 0
    from modeling.generation_entropy_asr import DecodingOptions

    assert built == [(2, 5), (2, DecodingOptions().phonemes_per_edit), (2, 4)]  # the default without the flag
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert (
        settings["phonemes_per_edit"] == 4
        and settings["max_hotword_edits"] == 2
        and settings["hotwords"] == 1
    )


def test_every_decoding_option_has_one_command_line_flag():
    """The CLI's flags are the decoding options (the outputs have their own flags: --timestamps, --phonemes)."""
    from modeling.generation_entropy_asr import DecodingOptions
    from training.commands import DECODING_FLAGS

    outputs = {"return_timestamps", "return_phonemes"}
    assert set(DECODING_FLAGS) == set(DecodingOptions.names()) - outputs
    flags = [flag for flag, _, _ in DECODING_FLAGS.values()]
    assert len(set(flags)) == len(flags) and all(flag.startswith("--") for flag in flags)
