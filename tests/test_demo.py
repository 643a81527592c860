"""The quick demo end to end (`DEMO_SIZE=tiny make demo`, 3-5 minutes on 2 cores): the report is produced and
well-formed (the numbers of a few dozen training steps mean nothing)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from eval.runners.keys import HEADLINE_KEYS, TRANSCRIPT_KEYS
from tests.conftest import REPO
from training.commands.demo import TARGETS
from training.commands.demo_report import claims, targets

STAGES = {
    "entropy-aware": ["pretrain", "align", "ia_sft", "joint_sft", "context_sft", "grpo"],
    "conventional": ["pretrain", "align", "joint_sft"],
}
KEYS = set(HEADLINE_KEYS)


def _tiny_demo(tmp_path, *args: str, timeout: int, corpus: Path | None = None) -> subprocess.CompletedProcess:
    """`entropy-asr demo --size tiny` with its runs and reports under tmp_path, and its corpus there too unless
    `corpus` is given (a built one, which the demo reads as it is)."""
    cmd = [
        sys.executable,
        "-m",
        "training.commands.cli",
        "demo",
        "--size",
        "tiny",
        "--workdir",
        str(tmp_path / "runs"),
    ]
    cmd += ["--data", str(corpus or tmp_path / "corpus"), "--reports", str(tmp_path / "reports"), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_tiny_demo_writes_a_well_formed_report(tmp_path, tiny_corpus):
    # the session's tiny corpus (seed 7, the demo's own would be seed 0): nothing below depends on which tiny
    # corpus it is, and the demo skips building one that is there
    proc = _tiny_demo(tmp_path, timeout=1200, corpus=tiny_corpus)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert set(summary["recipes"]) == set(STAGES)
    for recipe, stages in STAGES.items():
        entry = summary["recipes"][recipe]
        assert entry["final_stage"] == stages[-1] and list(entry["stages"]) == stages
        for name, scores in entry["stages"].items():
            assert set(scores) == KEYS | {
                "no_speech_threshold",
                "min_speech_confidence",
                "greedy",
                "n_utterances",
            }
            # the second column: the same clips with the LLM's greedy decoding alone
            greedy = json.loads(
                (tmp_path / "reports" / "eval" / recipe / f"{name}-greedy" / "report.json").read_text()
            )
            assert greedy["settings"]["ctc_weight"] == 0.0 and set(scores["greedy"]) == set(TRANSCRIPT_KEYS)
            assert scores["greedy"]["wer_en"] == greedy["wer_en"] and scores["greedy"]["rtf"] == greedy["rtf"]
            shipped = json.loads((tmp_path / "reports" / "eval" / recipe / name / "report.json").read_text())
            assert shipped["settings"]["ctc_weight"] == 0.3 and shipped["settings"]["beam_size"] == 2
            gate = scores["no_speech_threshold"]  # calibrated by every stage that writes transcripts
            assert gate is None if name == "pretrain" else 0.0 < gate <= 1.0
            least = scores["min_speech_confidence"]  # None too where a dev clip has no phoneme at all
            assert least is None or (name != "pretrain" and 0.0 < least <= 1.0)
            assert scores["wer_en"] >= 0.0 and scores["cer_zh"] >= 0.0  # insertions can push them above 1
            # the test rows' names and the other words (every tiny test row records its names)
            assert all(scores[k] >= 0.0 for k in ("bwer_en", "uwer_en", "bcer_zh", "ucer_zh")), scores
            if recipe == "entropy-aware":  # the phoneme head's error; a character head has none
                assert scores["per_en"] >= 0.0 and scores["per_zh"] >= 0.0
            else:
                assert scores["per_en"] is None and scores["per_zh"] is None
            for key in ("hallucination_rule", "hallucination_probe"):
                assert 0.0 <= scores[key] <= 1.0
            assert 0.0 <= scores["nse"] <= 1.0 and math.isfinite(scores["rtf"])
        assert entry["stages"]["pretrain"]["cka_to_pretrained"] == pytest.approx(1.0, abs=1e-6)
        # stage 1 ends its schedule's decay phase at a learning rate near 0 (after its constant phase at 5e-4)
        done = json.loads((tmp_path / "runs" / recipe / "pretrain" / "stage_complete.json").read_text())
        rates = [e["learning_rate"] for e in done["log_history"] if "learning_rate" in e]
        assert max(rates) == pytest.approx(5e-4) and rates[-1] < 0.05 * max(rates), rates
        # every stage's encoder scored on the final stages' utterances: one set, so no re-scored align stage
        assert "before_joint" not in entry
        assert not (tmp_path / "reports" / "eval" / recipe / "align-test").exists()
        for name in stages:
            report = json.loads((tmp_path / "reports" / "eval" / recipe / name / "report.json").read_text())
            assert report["settings"]["analysis_max_utterances"] == 8
            assert report["entropy_allocation"]["n_utterances"] == 8
        # the chosen stage on code-switched speech and on the unseen engine's, shipped decoder and greedy
        transfer = entry["transfer"]
        assert set(transfer) == {"test_codeswitch", "test_unseen_engine"}
        mixed, unseen = transfer["test_codeswitch"], transfer["test_unseen_engine"]
        assert mixed["name"] in stages and mixed["n_utterances"] == unseen["n_utterances"] == 4
        assert (
            mixed["mer_mixed"] >= 0.0 and mixed["bmer_mixed"] >= 0.0 and mixed["greedy"]["mer_mixed"] >= 0.0
        )
        assert mixed["wer_en"] is None and unseen["mer_mixed"] is None and unseen["greedy"]["wer_en"] >= 0.0
        assert unseen["wer_en"] >= 0.0 and unseen["bwer_en"] >= 0.0
        report = json.loads(
            (
                tmp_path / "reports" / "eval" / recipe / f"{mixed['name']}-test_unseen_engine" / "report.json"
            ).read_text()
        )
        assert list(report["splits"]) == ["test_unseen_engine"] and report["wer_en"] == unseen["wer_en"]
    hotwords = summary["recipes"]["entropy-aware"]["hotwords"]  # the best stage with retrieved hotwords
    assert "hotwords" not in summary["recipes"]["conventional"]
    assert not (tmp_path / "reports" / "eval" / "conventional" / "hotwords.txt").exists()
    names = {n for f in (tiny_corpus / "hotwords").glob("*.txt") for n in f.read_text().split("\n") if n}
    assert hotwords["name"] in STAGES["entropy-aware"] and hotwords["list_size"] == len(names) > 0
    assert hotwords["hotword_bonus"] == 4.0 and hotwords["prompt_hotwords"] is False
    assert hotwords["max_hotword_edits"] == 4 and hotwords["phonemes_per_edit"] == 3
    assert (
        hotwords["wer_en"] >= 0.0 and hotwords["cer_zh"] >= 0.0 and hotwords["hotwords_per_utterance"] >= 0.0
    )
    with_hotwords = json.loads(
        (
            tmp_path / "reports" / "eval" / "entropy-aware" / f"{hotwords['name']}-hotwords" / "report.json"
        ).read_text()
    )
    assert with_hotwords["settings"]["context"] == "retrieved" and list(with_hotwords["splits"]) == ["test"]
    # what every stage was scored with: the decoding options the models ship with (the tiny demo's small beam
    # over them), and greedy as the second column
    decoder = summary["decoder"]
    assert (decoder["ctc_weight"], decoder["beam_size"], decoder["ctc_candidates"]) == (0.3, 2, 8)
    assert decoder["second_column"] == "greedy" and decoder["second_column_options"] == {"ctc_weight": 0.0}
    ps = summary["pocketsphinx"]
    from training.commands.demo import SIZES, pocketsphinx_rows
    from training.data.loading import load_speech_dataset

    test = load_speech_dataset(tiny_corpus / "dataset", split="test")
    rows = pocketsphinx_rows(test, SIZES["tiny"].pocketsphinx_clips, SIZES["tiny"].final_max_utterances)
    assert ps["n_clips"] == len(rows) > 0  # both parts (one per process) counted once
    assert 0.0 <= ps["wer_en"] and 0.0 <= ps["entropy_aware_wer_en"]
    assert ps["entropy_aware_stage"] in STAGES["entropy-aware"]
    readme = (tmp_path / "reports" / "README.md").read_text()
    assert "## entropy-aware" in readme and "## conventional" in readme and "What the numbers say" in readme
    assert "| recipe | NSE before | NSE final |" in readme and "| on names en / zh |" in readme
    assert "- with the companion paper's hotword retrieval (" in readme
    assert "| greedy: WER en / CER zh |" in readme and "joint CTC / LLM beam search, CTC weight 0.3" in readme
    assert "- the same stage with the LLM's greedy decoding alone (" in readme
    assert "## Speech the recipes were not tuned on" in readme and "| entropy-aware | `" in readme
    assert "English said by flite (unseen engine)" in readme
    assert (tmp_path / "reports" / "entropy_allocation.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "export" / "model" / "README.md").is_file()


def test_best_stage_is_the_lowest_mean_error_rate():
    from training.commands.demo import best_stage

    outputs = {"entropy-aware": [Path("w/pretrain"), Path("w/align"), Path("w/joint_sft"), Path("w/grpo")]}
    stages = {
        "pretrain": {"wer_en": None, "cer_zh": None},
        "align": {"wer_en": 0.5, "cer_zh": 0.7},
        "joint_sft": {"wer_en": 0.08, "cer_zh": 0.06},
        "grpo": {"wer_en": 0.09, "cer_zh": 0.06},
    }
    summary = {"recipes": {"entropy-aware": {"stages": stages}}}
    assert best_stage(summary, outputs) == Path("w/joint_sft")
    stages["grpo"] = {"wer_en": 0.06, "cer_zh": 0.08}  # tie: the later stage
    assert best_stage(summary, outputs) == Path("w/grpo")
    stages["grpo"] = {"wer_en": None, "cer_zh": 0.01}  # a missing language counts the other one only
    assert best_stage(summary, outputs) == Path("w/grpo")


def test_targets_judge_the_best_stage_on_the_final_stages_utterances():
    from training.commands.demo import best_stage

    stages = {
        "joint_sft": {"wer_en": 0.08, "cer_zh": 0.09, "hallucination_probe": 0.0, "hallucination_rule": 0.0},
        "grpo": {"wer_en": 0.30, "cer_zh": 0.30, "hallucination_probe": 0.0, "hallucination_rule": 0.0},
    }
    entry = {"final_stage": "grpo", "stages": stages}
    summary = {"recipes": {"entropy-aware": entry}, "pocketsphinx": {"wer_en": 0.2}}
    assert "- English WER: 8.00% (target <= 10.0%): met." in targets(
        summary, TARGETS
    )  # only the subset's scores
    entry["best_stage"] = {**stages["joint_sft"], "name": "joint_sft", "wer_en": 0.25}  # all utterances
    lines = targets(summary, TARGETS)
    assert lines[0].startswith("Best stage: `joint_sft` (chosen on the per-stage subset")
    assert "- English WER: 25.00% (target <= 10.0%): MISSED by 15.00 points." in lines
    assert "- lower English WER than pocketsphinx: 25.00% vs 20.00%: MISSED." in lines
    # re-scored on the final stages' utterances, the subset's best does worse than the final stage: the final wins
    entry["best_stage"].update(wer_en=0.35, cer_zh=0.30)
    lines = targets(summary, TARGETS)
    assert lines[0].startswith("Best stage: `grpo` (`joint_sft`, the best on the per-stage subset, did not")
    assert "- English WER: 30.00% (target <= 10.0%): MISSED by 20.00 points." in lines
    outputs = {"entropy-aware": [Path("w/joint_sft"), Path("w/grpo")]}
    assert best_stage(summary, outputs) == Path("w/grpo")
    entry["best_stage"].update(wer_en=0.25)
    assert best_stage(summary, outputs) == Path("w/joint_sft")
    del entry["best_stage"]
    stages["joint_sft"].update(bwer_en=0.2, uwer_en=0.03)  # with the names' split
    assert (
        "- English WER: 8.00% (target <= 10.0%): met; on the names' words 20.00%, on the other words 3.00%."
        in targets(summary, TARGETS)
    )


def test_hotword_line_judges_the_error_rates_with_retrieval_and_reports_the_retrieval(tmp_path):
    from training.commands.demo import HOTWORD_SETTINGS, hotword_catalogue

    stages = {
        "joint_sft": {"wer_en": 0.30, "cer_zh": 0.40, "hallucination_probe": 0.0, "hallucination_rule": 0.0}
    }
    entry = {"final_stage": "joint_sft", "stages": stages}
    summary = {"recipes": {"entropy-aware": entry}, "pocketsphinx": {}}
    assert not any("hotword" in line for line in targets(summary, TARGETS))  # no entry, no line
    entry["hotwords"] = {
        "name": "joint_sft",
        "list_size": 6028,
        **HOTWORD_SETTINGS,
        "wer_en": 0.095,
        "cer_zh": 0.2,
        "hallucination_rule": 0.0,
        "recall": 0.859,
        "precision": 0.804,
        "hotwords_per_utterance": 1.09,
        "bcer_zh": 0.5,
        "ucer_zh": 0.1,
    }
    line = targets(summary, TARGETS)[-1]
    assert line.startswith(
        "- with the companion paper's hotword retrieval (`joint_sft`; the corpus's 6028 entity"
    )
    assert "with up to 4 phoneme edits, one per 3 phonemes of a name;" in line
    assert "bonus 4 and stay out of the prompt)" in line
    assert (
        "English WER 9.50% (met), Mandarin CER 20.00% (MISSED by 10.00 points; on the names' characters 50.00%, "
        "on the other characters 10.00%)" in line
    )
    assert "recall 85.90%, precision 80.40%, 1.09 names per utterance" in line and "rule 0.00%." in line
    # the list: every split's names once, sorted; none without lists
    lists = tmp_path / "corpus" / "hotwords"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("liam taylor\n张伟\n", encoding="utf-8")
    (lists / "test.txt").write_text("张伟\n\nalan martin\n", encoding="utf-8")
    out = hotword_catalogue(tmp_path / "corpus", tmp_path / "out" / "hotwords.txt")
    assert out.read_text(encoding="utf-8").splitlines() == ["alan martin", "liam taylor", "张伟"]
    assert (
        hotword_catalogue(tmp_path / "none", tmp_path / "x.txt") is None and not (tmp_path / "x.txt").exists()
    )


def test_targets_judge_the_shipped_decoder_and_say_what_greedy_gives():

    stages = {
        "grpo": {"wer_en": 0.036, "cer_zh": 0.14, "hallucination_probe": 0.0, "hallucination_rule": 0.0}
    }
    entry = {"final_stage": "grpo", "stages": stages}
    summary = {"recipes": {"entropy-aware": entry}, "pocketsphinx": {}}
    assert not any("greedy" in line for line in targets(summary, TARGETS))  # no second column, no line
    assert "- English WER: 3.60% (target <= 10.0%): met." in targets(summary, TARGETS)
    stages["grpo"]["greedy"] = {"wer_en": 0.46, "cer_zh": 0.52, "hallucination_rule": 0.0, "bwer_en": 0.9}
    stages["grpo"]["greedy"].update(uwer_en=0.3)
    line = targets(summary, TARGETS)[-1]
    assert line == (
        "- the same stage with the LLM's greedy decoding alone (`ctc_weight=0`, the second column): English WER "
        "46.00% (MISSED by 36.00 points; on the names' words 90.00%, on the other words 30.00%), Mandarin CER "
        "52.00% (MISSED by 42.00 points); test utterances hallucinated by the paper's rule 0.00%."
    )


def test_pocketsphinx_is_compared_on_the_same_clips_as_the_best_stage(tmp_path, tiny_corpus):
    from training.commands.demo import best_predictions, pocketsphinx_rows, pocketsphinx_summary
    from training.data.loading import load_speech_dataset
    from training.data.splits import subset_indices

    test = load_speech_dataset(tiny_corpus / "dataset", split="test")
    rows = pocketsphinx_rows(test, 3, 8)
    assert (
        rows == [i for i in subset_indices(len(test), 8) if test[i]["language"] == "en"][:3]
        and len(rows) == 3
    )
    parts = [
        {"ids": ["a", "c"], "refs": ["call john now", "go home"], "hyps": ["call joan now", "go home"]},
        {"ids": ["b"], "refs": ["play music"], "hyps": [""]},
    ]
    ours = {"a": "call john now", "b": "play", "c": "go home", "zh": "x"}
    ps = pocketsphinx_summary(parts, ours, "joint_sft")
    assert ps["n_clips"] == 3 and ps["wer_en"] == pytest.approx(
        3 / 7
    )  # 1 substitution + 2 deletions of 7 words
    assert ps["entropy_aware_wer_en"] == pytest.approx(1 / 7) and ps["entropy_aware_stage"] == "joint_sft"
    with pytest.raises(ValueError, match="for 1 clips, e.g. b"):
        pocketsphinx_summary(parts, {"a": "", "c": ""}, "joint_sft")
    stages = {"joint_sft": {"wer_en": 0.05, "cer_zh": 0.05}, "grpo": {"wer_en": 0.3, "cer_zh": 0.3}}
    entry = {"final_stage": "grpo", "stages": stages}
    lines = targets({"recipes": {"entropy-aware": entry}, "pocketsphinx": ps}, TARGETS)
    assert (
        "- lower English WER than pocketsphinx on the same 3 English clips: 14.29% vs 42.86%: met." in lines
    )

    def report(folder, predictions):
        path = tmp_path / "eval" / "entropy-aware" / folder / "report.json"
        path.parent.mkdir(parents=True)
        rows = [{"id": k, "prediction": v} for k, v in predictions.items()]
        path.write_text(json.dumps({"primary_split": "test", "splits": {"test": {"predictions": rows}}}))

    report("joint_sft", {"a": "subset"})
    report("joint_sft-all", {"a": "all"})
    assert best_predictions(entry, tmp_path) == ("joint_sft", {"a": "subset"})
    report("grpo", {"a": "final"})
    entry["best_stage"] = {"name": "joint_sft", "wer_en": 0.1, "cer_zh": 0.1}  # re-scored: still the better
    assert best_predictions(entry, tmp_path) == ("joint_sft", {"a": "all"})
    entry["best_stage"].update(wer_en=0.6)  # re-scored: worse than the final stage on the same utterances
    assert best_predictions(entry, tmp_path) == ("grpo", {"a": "final"})


def test_run_tasks_in_worker_processes_returns_results_and_raises_a_failure_after_the_rest(tmp_path):
    import operator

    from training.commands.demo import Task, run_tasks

    tasks = {"a": Task(operator.add, (1, 2)), "b": Task(operator.mul, (3, 4))}
    tasks["c"] = Task(operator.sub, (), after=("b", "a"))  # the results of b and a, in that order
    tasks["d"] = Task(pow, (2,), after=("a",))
    for jobs in (2, 1):  # worker processes; this process
        assert run_tasks(tasks, jobs, tmp_path / str(jobs)) == {"a": 3, "b": 12, "c": 9, "d": 8}
    assert (tmp_path / "2" / "c.log").is_file() and not (tmp_path / "1").exists()
    tasks = {
        "bad": Task(operator.truediv, (1, 0)),
        "needs-bad": Task(abs, (), after=("bad",)),
        "good": Task(Path.write_text, (tmp_path / "good.txt", "ran")),
    }
    with pytest.raises(RuntimeError, match=r"^bad failed \(log: .*bad.log\)") as err:
        run_tasks(tasks, 2, tmp_path)
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    assert (tmp_path / "good.txt").read_text() == "ran" and not (tmp_path / "needs-bad.log").exists()
    with pytest.raises(ValueError, match=r"'x' comes after \['y'\]"):
        run_tasks({"x": Task(abs, (), after=("y",)), "y": Task(abs, (1,))}, 2, tmp_path)


def test_progress_line_reads_stage_step_time_left_and_loss_from_a_worker_log(tmp_path):
    from training.commands.demo import progress_line

    log = tmp_path / "train-x.log"
    assert progress_line(log) == "starting"
    log.write_text(
        "11:00:01 INFO training.recipe: [entropy-aware-tiny] stage 1/6: pretrain (pretrain) -> runs/x/pretrain\n"
        " 50%|#####     | 450/900 [03:30<03:30,  2.14it/s]{'loss': '1.25', 'grad_norm': '2.0'}\n"
        "11:07:01 INFO training.recipe: [entropy-aware-tiny] stage 3/6: ia_sft (ia_sft) -> runs/x/ia_sft\n"
        "  1%|          | 10/800 [00:03<04:10,  3.2it/s]\r  2%|          | 17/800 [00:05<04:01,  3.2it/s]"
    )
    assert progress_line(log) == "stage 3/6 ia_sft, step 17/800, 04:01 left"  # not the previous stage's loss
    with log.open("a") as f:
        f.write("{'loss': '2.5', 'grad_norm': '1.0'}\n")
    assert progress_line(log) == "stage 3/6 ia_sft, step 17/800, 04:01 left, loss 2.500"
    with log.open("a") as f:  # the recipe's last stage is done: the evaluation's messages, not its bars
        f.write(
            "11:20:00 INFO training.recipe: [entropy-aware-tiny] stage 6/6: grpo (grpo) -> runs/x/grpo\n"
            "11:21:00 INFO training.recipe: [entropy-aware-tiny] grpo done after 21.0 min\n"
            "11:21:30 INFO eval.runners.evaluate: test: 60 utterances, en wer 40.00%\n"
            "Loading weights: 100%|##########| 225/225 [00:00<00:00, 2523.17it/s]"
        )
    assert progress_line(log) == "test: 60 utterances, en wer 40.00%"
    other = tmp_path / "evaluate-pocketsphinx.log"
    other.write_text("11:21:30 INFO training.data.loading: skipped 0 of 100 rows\n 5/9 [00:01<00:01]")
    assert progress_line(other) == "skipped 0 of 100 rows"


def test_demo_refuses_fewer_than_one_job_before_doing_anything(tmp_path):
    proc = _tiny_demo(tmp_path, "--jobs", "0", timeout=120)
    assert proc.returncode != 0 and "--jobs must be at least 1, got 0" in proc.stderr
    assert not (tmp_path / "corpus").exists()


def test_demo_seed_reaches_every_stage(monkeypatch, tmp_path, tiny_corpus, tiny_model_dir):
    import training.commands.demo as demo
    import training.recipe as recipe

    seen = {}
    monkeypatch.setattr(recipe, "run_recipe", lambda *args, **kw: seen.update(args=args, kw=kw) or [])
    for name in demo.RECIPES:
        demo.run_one_recipe(tmp_path, tiny_corpus, tiny_model_dir, demo.SIZES["tiny"], name, seed=7)
        _, configs = recipe.load_recipe(*seen["args"], **seen["kw"])
        assert len(configs) >= 3 and {c.seed for c in configs} == {7}, name


def test_demo_without_pocketsphinx_skips_the_baseline_and_says_so(monkeypatch, tmp_path):
    """pocketsphinx is in the dev extra only: without it the demo still trains and evaluates both recipes."""
    import training.commands.demo as demo

    ran = {}

    def fake_run_tasks(tasks, jobs, logs):
        ran.update(tasks)
        return {name: f"result of {name}" for name in tasks}

    monkeypatch.setattr(demo, "pocketsphinx_available", lambda: False)
    monkeypatch.setattr(demo, "run_tasks", fake_run_tasks)
    outputs, summary = demo.run_and_evaluate(tmp_path, tmp_path, tmp_path, demo.SIZES["tiny"], tmp_path, 2)
    assert sorted(ran) == [
        "evaluate-conventional",
        "evaluate-entropy-aware",
        "train-conventional",
        "train-entropy-aware",
    ]
    assert outputs == {
        "entropy-aware": "result of train-entropy-aware",
        "conventional": "result of train-conventional",
    }
    ps = summary["pocketsphinx"]
    assert ps["wer_en"] is None and ps["n_clips"] == 0 and "pip install pocketsphinx" in ps["skipped"]
    stages = {
        "joint_sft": {"wer_en": 0.3, "cer_zh": 0.4, "hallucination_probe": 0.0, "hallucination_rule": 0.0}
    }
    lines = targets(
        {"recipes": {"entropy-aware": {"final_stage": "joint_sft", "stages": stages}}, "pocketsphinx": ps},
        TARGETS,
    )
    assert lines[-1] == f"- lower English WER than pocketsphinx: not measured ({ps['skipped']})."


def test_a_report_measured_with_other_decoding_options_is_measured_again(tmp_path, monkeypatch):
    """The demo reads reports it finds instead of evaluating again, except one whose recorded decoding options
    are not those it would decode with now: the stage's saved ones (then the greedy column's, or the retrieval
    settings), e.g. a report written before the stage's options changed."""
    import eval.runners.evaluate as ev
    from modeling.generation_entropy_asr import DecodingOptions
    from training.commands.demo import GREEDY, HOTWORD_SETTINGS, DemoSize, decoding_in_effect, evaluate_recipe

    runs = []
    reports, stage = tmp_path / "reports", tmp_path / "runs" / "grpo"
    stage.mkdir(parents=True)
    shipped = DecodingOptions(beam_size=6)
    (stage / "generation_config.json").write_text(json.dumps({"decoding": shipped.to_dict()}))
    gates = {"no_speech_threshold": 0.01, "min_speech_confidence": None}

    def fake_run(config):  # writes what a report holds, with the settings the config decodes with
        runs.append(config)
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        settings = {**decoding_in_effect(stage, config.decoding), **gates}
        settings["analysis_max_utterances"] = config.analysis_max_utterances
        retrieval = {"recall": 0.6, "precision": 0.3, "hotwords_per_utterance": 2}
        report = {"wer_en": 0.2, "primary_split": "test", "settings": settings,
                  "splits": {"test": {"retrieval": retrieval} if config.context == "retrieved" else {}}}  # fmt: skip
        (out / "report.json").write_text(json.dumps(report))

    monkeypatch.setattr(ev, "run_evaluation", fake_run)
    (tmp_path / "corpus" / "hotwords").mkdir(parents=True)
    (tmp_path / "corpus" / "hotwords" / "test.txt").write_text("liam taylor\n", encoding="utf-8")
    now = {**decoding_in_effect(stage, None), **gates}
    for folder, settings, wer in (
        ("grpo", {**now, "analysis_max_utterances": 4}, 0.4),  # as the stage decodes now: read
        ("grpo-greedy", {**now, "ctc_weight": 0.3}, 0.5),  # not greedy: measured again
        ("grpo-hotwords", {**now, "max_hotword_edits": 1}, 0.35),  # other retrieval settings: again
    ):
        (reports / "eval" / "entropy-aware" / folder).mkdir(parents=True)
        report = {"wer_en": wer, "primary_split": "test", "settings": settings, "splits": {"test": {}}}
        (reports / "eval" / "entropy-aware" / folder / "report.json").write_text(json.dumps(report))
    size = DemoSize("tiny", 1.0, 1, 4, 4, 1)
    entry = evaluate_recipe("entropy-aware", [stage], tmp_path / "corpus", reports, size)
    # the stage's own report was read, the other two measured again, with their options
    assert [Path(r.out).name for r in runs] == ["grpo-greedy", "grpo-hotwords"]
    assert runs[0].decoding == GREEDY and runs[1].decoding == HOTWORD_SETTINGS
    assert entry["stages"]["grpo"]["wer_en"] == 0.4 and entry["stages"]["grpo"]["greedy"]["wer_en"] == 0.2
    assert {k: entry["hotwords"][k] for k in HOTWORD_SETTINGS} == HOTWORD_SETTINGS
    evaluate_recipe("entropy-aware", [stage], tmp_path / "corpus", reports, size)
    assert len(runs) == 2  # now they match: read, not measured again


def test_the_demo_module_loads_neither_torch_nor_numpy():
    """Its spawned workers import it before setting their thread count, which torch and numpy read on loading."""
    code = "import sys, training.commands.demo; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_target_line_carries_the_interval_the_summary_records():
    stages = {"grpo": {"wer_en": 0.0167, "wer_en_ci95": [0.009, 0.026], "cer_zh": 0.06}}
    lines = targets({"recipes": {"entropy-aware": {"final_stage": "grpo", "stages": stages}}}, TARGETS)
    assert "- English WER: 1.67% (95% interval 0.90-2.60%) (target <= 10.0%): met." in lines
    assert "- Mandarin CER: 6.00% (target <= 10.0%): met." in lines  # no interval recorded, none shown


def test_claims_say_supported_only_where_the_intervals_separate():
    """A claim reads "supported" only when the two recipes' 95% intervals do not overlap, "not separated" when
    they do, and says so when a figure has no interval; a CSAI left at its starting probe shows as such."""

    def scored(
        halluc, **figures
    ):  # figure -> (value, half width of its interval); hallucinations: no interval
        out = {"hallucination_probe": halluc}
        for key, (value, half) in figures.items():
            out |= {key: value, f"{key}_ci95": [value - half, value + half]}
        return out

    ours = scored(0.1, wer_en=(0.05, 0.02), cer_zh=(0.05, 0.02), csai=(0.0, 0.0), csai_frame=(0.9, 0.1))
    ours["csai_stopped_at_start"] = True
    theirs = scored(0.2, wer_en=(0.2, 0.05), cer_zh=(0.06, 0.02), csai=(0.4, 0.1), csai_frame=(0.5, 0.1))
    summary = {
        "recipes": {
            name: {"final_stage": "last", "stages": {"last": scores}}
            for name, scores in (("entropy-aware", ours), ("conventional", theirs))
        }
    }
    lines = {line.split(":")[0]: line for line in claims(summary)}
    assert (
        "supported by this run (the 95% intervals do not overlap)"
        in lines["- Lower English error rate at equal compute"]
    )
    assert "5.00% [3.00, 7.00]" in lines["- Lower English error rate at equal compute"]
    assert "not separated" in lines["- Lower Mandarin error rate at equal compute"]
    assert "no interval" in lines["- Fewer hallucinations on silence and noise"]
    semantic = next(line for key, line in lines.items() if key.startswith("- Less semantic anchoring"))
    assert "0.000 (stopped at start)" in semantic and "supported by this run" in semantic
    frame = next(line for key, line in lines.items() if key.startswith("- The same with the frame-phoneme"))
    assert "contradicted by this run" in frame


def test_every_stage_is_analysed_on_the_final_stages_utterances(tmp_path, monkeypatch):
    """The encoder scores of every stage come from one fixed set of test utterances (the final stages'), whatever
    subset its transcripts are scored on; so the align stage needs no re-scoring for the before/after comparison,
    and a report analysed on another set is measured again."""
    import eval.runners.evaluate as ev
    from modeling.generation_entropy_asr import DecodingOptions
    from training.commands.demo import DemoSize, decoding_in_effect, evaluate_recipe

    runs = []
    stages = [tmp_path / "runs" / name for name in ("pretrain", "align", "grpo")]
    for stage in stages:
        stage.mkdir(parents=True)
        (stage / "generation_config.json").write_text(json.dumps({"decoding": DecodingOptions().to_dict()}))

    def fake_run(config):
        runs.append(config)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        settings = {
            **decoding_in_effect(Path(config.model), config.decoding),
            "analysis_max_utterances": config.analysis_max_utterances,
            "no_speech_threshold": None,
            "min_speech_confidence": None,
        }
        report = {"wer_en": 0.1, "primary_split": "test", "settings": settings, "splits": {"test": {}}}
        (Path(config.out) / "report.json").write_text(json.dumps(report))

    monkeypatch.setattr(ev, "run_evaluation", fake_run)
    (tmp_path / "corpus" / "hotwords").mkdir(parents=True)
    size = DemoSize("tiny", 1.0, 1, 4, 6, 1)
    entry = evaluate_recipe("conventional", stages, tmp_path / "corpus", tmp_path / "reports", size)
    analysed = {Path(r.out).name: r for r in runs if r.analysis}
    assert sorted(analysed) == ["align", "grpo", "pretrain"] and "before_joint" not in entry
    assert {r.analysis_max_utterances for r in analysed.values()} == {6}
    assert [analysed[n].max_utterances for n in ("pretrain", "align", "grpo")] == [4, 4, 6]
    assert all(r.analysis_max_utterances is None for r in runs if not r.analysis)  # greedy: transcripts only
    runs.clear()
    evaluate_recipe("conventional", stages, tmp_path / "corpus", tmp_path / "reports", size)
    assert runs == []  # all read back
    evaluate_recipe(
        "conventional", stages, tmp_path / "corpus", tmp_path / "reports", DemoSize("tiny", 1.0, 1, 4, 8, 1)
    )
    assert sorted(Path(r.out).name for r in runs if r.analysis) == ["align", "grpo", "pretrain"]


def test_the_before_after_table_repeats_the_per_stage_rows(tmp_path):
    """The before/after table reads the align and final stages' own scores: the same figures as their rows."""
    from training.commands.demo import GREEDY, TARGETS
    from training.commands.demo_report import write_report

    def stage(nse, csai):
        scores = dict.fromkeys(HEADLINE_KEYS)
        return scores | {"nse": nse, "nse_ci95": [nse - 0.01, nse + 0.01], "pai": 1.0, "csai": csai}

    recipes = {
        name: {
            "final_stage": "joint_sft",
            "stages": {"align": stage(0.5, 0.2), "joint_sft": stage(0.4 + k, 0.1)},
        }
        for k, name in enumerate(("entropy-aware", "conventional"))
    }
    write_report({"recipes": recipes}, {}, tmp_path, TARGETS, GREEDY)
    sections = (tmp_path / "README.md").read_text().split("\n## ")

    def cells(section: str, first: str) -> list[str]:
        return next(line for line in section.splitlines() if line.startswith(f"| {first} |")).split(" | ")

    for name in recipes:
        section = next(s for s in sections if s.startswith(name))
        header = cells(section, "stage")
        nse, csai = header.index("NSE"), header.index("CSAI")
        align, final = cells(section, "align"), cells(section, "joint_sft")
        table = next(s for s in sections if "| recipe | NSE before |" in s)
        row = cells(table, name)
        assert row[1:3] == [align[nse], final[nse]] and row[5:7] == [align[csai], final[csai]]
        assert align[nse] == "0.500 [0.490, 0.510]"


def _two_recipes(ours: dict, theirs: dict) -> dict:
    return {
        "recipes": {
            name: {"final_stage": "last", "stages": {"last": scores}}
            for name, scores in (("entropy-aware", ours), ("conventional", theirs))
        }
    }


def _rates(wer: float, half: float, cer: float = 0.05) -> dict:
    return {
        "wer_en": wer,
        "wer_en_ci95": [wer - half, wer + half],
        "cer_zh": cer,
        "hallucination_probe": 0.0,
        "hallucination_rule": 0.0,
    }


def test_the_report_over_seeds_counts_each_claims_verdicts_and_each_seeds_targets():
    from training.commands.demo_report import VERDICT_KINDS, seeds_report

    summaries = {
        0: _two_recipes(_rates(0.02, 0.01), _rates(0.5, 0.05)),  # English: separated, ours better
        1: _two_recipes(_rates(0.04, 0.03), _rates(0.06, 0.03)),  # overlapping
        2: _two_recipes(_rates(0.30, 0.01), _rates(0.05, 0.01)),  # separated the other way; a target missed
    }
    lines, summary = seeds_report(summaries, TARGETS)
    english = summary["claims"]["wer_en"]
    assert english["per_seed"] == {0: "supported", 1: "not separated", 2: "contradicted"}
    assert [english[k] for k in VERDICT_KINDS] == [1, 1, 1, 0, 0]
    # Mandarin has no intervals here: the direction alone (equal figures), for every seed
    assert summary["claims"]["cer_zh"]["direction only"] == 3
    assert summary["claims"]["csai"]["not measurable"] == 3
    wer_target = next(t for t in TARGETS if t.key == "wer_en")
    assert [summary["per_seed"][s]["targets_met"]["wer_en"] for s in (0, 1, 2)] == [
        0.02 <= wer_target.bound,
        0.04 <= wer_target.bound,
        0.30 <= wer_target.bound,
    ]
    rows = [line for line in lines if line.startswith("| 2 |")]
    assert len(rows) == 1 and "30.00% [29.00, 31.00]" in rows[0]
    claim_row = next(line for line in lines if line.startswith("| Lower English error rate"))
    assert claim_row.endswith("| 1 | 1 | 1 | 0 | 0 |")


def test_demo_over_seeds_runs_each_seed_into_its_own_folders_then_reports_over_them(tmp_path, monkeypatch):
    import argparse

    import training.commands.demo as demo

    calls = []

    def fake_run_demo(size, workdir, corpus, reports, jobs, seed):
        calls.append((workdir.name, reports.relative_to(tmp_path).as_posix(), seed))
        reports.mkdir(parents=True)
        (reports / "summary.json").write_text(
            json.dumps(_two_recipes(_rates(0.02 * (seed + 1), 0.01), _rates(0.5, 0.05)))
        )
        return workdir / "export" / "model"

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    common = [
        "--size",
        "tiny",
        "--workdir",
        str(tmp_path / "runs" / "demo-tiny"),
        "--reports",
        str(tmp_path / "rep"),
    ]
    assert demo.run(parser.parse_args([*common, "--seeds", "3", "1"])) == 0
    assert calls == [("demo-tiny-seed-3", "rep-seeds/seed-3", 3), ("demo-tiny-seed-1", "rep-seeds/seed-1", 1)]
    summary = json.loads((tmp_path / "rep-seeds" / "summary.json").read_text())
    assert summary["seeds"] == [1, 3] and summary["claims"]["wer_en"]["supported"] == 2
    readme = (tmp_path / "rep-seeds" / "README.md").read_text()
    assert "| 1 | last | 4.00% [3.00, 5.00]" in readme and "| 3 | last | 8.00% [7.00, 9.00]" in readme
    with pytest.raises(SystemExit, match="must not repeat"):
        demo.run(parser.parse_args([*common, "--seeds", "2", "2"]))
    with pytest.raises(SystemExit):  # one seed or several, not both
        parser.parse_args([*common, "--seed", "1", "--seeds", "2"])
