"""`entropy-asr demo` (what `make demo` runs): the method at laptop scale on the built-in corpus.

1. build the corpus (and its text corpus); 2. initialise the tiny model and pretrain its LLM on text;
3. run `configs/recipes/entropy-aware-tiny.yaml` and `configs/recipes/conventional-tiny.yaml` on the same data
with the same number of optimizer steps; 4. evaluate every stage's output of both (error rates, hallucination
by rule and on the probes, NSE/PAI/CSAI, CKA to the stage-1 encoder, RTF); 5. run pocketsphinx on English test
clips of the final evaluation and score the best entropy-aware stage on the same clips, and score that stage
again with the companion paper's hotword retrieval (the corpus's entity names as the list); 6. write
`reports/demo/summary.json` and `reports/demo/README.md`; 7. export the best model with `push --dry-run`. Every
step skips work already done, so an interrupted demo resumes.

The two recipes train at the same time, one process each with its share of the CPU cores (`--jobs`, default:
one per recipe while there are cores for it): small models use two cores badly (a stage-1 step takes 550 ms on
2 threads, 850 ms on 1 thread with the other recipe beside it, i.e. 1.3x the throughput). Each recipe is
evaluated in the process that trained it as soon as it is done (the conventional one also needs the
entropy-aware stage 1), and the pocketsphinx baseline, split in two parts per process, takes the processes as
they become free (small parts, so that both processes end at about the same time). Each task writes its log to
WORKDIR/logs/TASK.log; the demo prints one status line per running task (stage, step, time left, loss; or what
its evaluation is doing) every 30 s.

`--size tiny` is the quick variant (the tiny corpus, 5% of the steps, small evaluation subsets).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
RECIPES = {
    "entropy-aware": "configs/recipes/entropy-aware-tiny.yaml",
    "conventional": "configs/recipes/conventional-tiny.yaml",
}
STAGE_KEYS = (
    "wer_en",
    "cer_zh",
    "per_en",
    "per_zh",
    "bwer_en",
    "uwer_en",
    "bcer_zh",
    "ucer_zh",
    "hallucination_rule",
    "hallucination_probe",
    "nse",
    "pai",
    "csai",
    "cka_to_pretrained",
    "rtf",
)


@dataclass
class DemoSize:
    corpus: str
    step_scale: float
    text_lm_steps: int
    max_utterances: int | None  # per split, for every stage's evaluation (None = all)
    final_max_utterances: int | None  # for the final stages
    pocketsphinx_clips: int
    batch_size: int | None = None  # overrides every stage's batch size when set
    allocation_options: dict | None = (
        None  # entropy-allocation probe options (eval.entropy_allocation.allocation.resolve_config)
    )
    # decoding options over the models' own in every evaluation (None: the shipped decoder as it is)
    decoding: dict | None = None


# The companion paper's hotword retrieval, scored on the best entropy-aware stage: every entity name of the
# corpus (its hotwords/*.txt lists, all splits: 6 028 names in the full corpus, 391 of them in the test split) is the
# hotword list, looked up in each test clip's phoneme hypothesis, and the names found bias decoding. The settings
# were the best on dev utterances (docs/experiments.md "Hotwords"): bonus 4, the hotwords kept out of the prompt, names heard
# with phoneme errors found too, one per 3 phonemes of a name, at most 4 (300 dev utterances with run 15's GRPO
# model: WER / CER 29.0% / 34.9%, retrieval recall 60.8%; one edit per 6 phonemes at most 1: 42.9% / 43.3%, 30.9%).
HOTWORD_SETTINGS = {
    "hotword_bonus": 4.0,
    "prompt_hotwords": False,
    "max_hotword_edits": 4,
    "phonemes_per_edit": 3,
}
RETRIEVAL_KEYS = ("recall", "precision", "hotwords_per_utterance")

# Every stage is scored with the decoder it ships with (its saved decoding options: the joint CTC / LLM search of
# configs/model/tiny.yaml), and again with the LLM's greedy decoding alone as a second column.
GREEDY = {"ctc_weight": 0.0}
GREEDY_KEYS = (
    "wer_en", "cer_zh", "bwer_en", "uwer_en", "bcer_zh", "ucer_zh", "hallucination_rule", "hallucination_probe", "rtf"
)  # fmt: skip

SIZES = {
    "full": DemoSize("full", 1.0, 300, 60, 300, 100),
    # the quick variant scores with a small beam: its barely trained models write until their duration bound
    "tiny": DemoSize(
        "tiny",
        0.03,
        20,
        6,
        8,
        5,
        batch_size=4,
        allocation_options={"min_steps": 40},
        decoding={"beam_size": 2, "ctc_candidates": 8},
    ),
}


def _step(name: str, t0: float) -> None:
    logger.info("=== demo: %s (%.1f min elapsed)", name, (time.time() - t0) / 60)


def build_corpus_once(out: Path, size: str, seed: int) -> Path:
    from training.data.corpus import build_corpus

    if not (out / "dataset" / "dataset_dict.json").is_file():
        build_corpus(out, size=size, seed=seed, workers=2)
    return out


def init_and_text_lm(
    workdir: Path, corpus: Path, steps: int, batch_size: int | None = None, seed: int = 0
) -> Path:
    from training.build import build_model_and_processor, load_yaml, resolve_path, save_model_folder
    from training.config import load_stage_config
    from training.stages.lifecycle import run_stage

    init = workdir / "init"
    if not (init / "config.json").is_file():
        texts = (corpus / "text_corpus.txt").read_text(encoding="utf-8").splitlines()
        model, processor = build_model_and_processor(
            load_yaml(resolve_path("configs/model/tiny.yaml")), texts, seed=seed
        )
        save_model_folder(model, processor, init)
    base = load_yaml(resolve_path("configs/stages/text_lm.yaml"))
    base.update(model=str(init), output_dir=str(workdir / "text_lm"))
    base["data"] = {"text_corpus": str(corpus / "text_corpus.txt")}
    base["training"] = {**base.get("training", {}), "max_steps": steps, "save_steps": max(steps, 1)}
    if batch_size:
        base["training"]["per_device_train_batch_size"] = batch_size
    return run_stage(load_stage_config(base))


def run_one_recipe(
    workdir: Path, corpus: Path, start: Path, size: DemoSize, name: str, seed: int = 0
) -> list[Path]:
    from training.build import resolve_path
    from training.recipe import run_recipe

    overrides = {
        "workdir": str(workdir / name),
        "model": str(start),
        "defaults": {"data": {"path": str(corpus / "dataset")}},
    }
    stage_overrides: dict = {"seed": seed}
    if size.batch_size:
        stage_overrides["training"] = {"per_device_train_batch_size": size.batch_size}
    return run_recipe(
        resolve_path(RECIPES[name]), overrides, step_scale=size.step_scale, stage_overrides=stage_overrides
    )


# ----------------------------------------------------------------------------------------------
# Running the recipes (and their evaluations) side by side
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """`fn(*args, *results of the tasks in after)`, run once the tasks named in `after` have finished."""

    fn: Callable[..., Any]
    args: tuple = ()
    after: tuple[str, ...] = ()


_STAGE_RE = re.compile(r"\[[^\]]+\] stage (\d+)/(\d+): (\S+)")
_BAR_RE = re.compile(r"(\d+)/(\d+) \[[\d:]+<([\d:?]+)")
_LOSS_RE = re.compile(r"'loss': '?([-\d.e]+)")
_INFO_RE = re.compile(
    r"^\d\d:\d\d:\d\d INFO \S+: (.*)$", re.MULTILINE
)  # training.commands.cli.configure_logging


def default_jobs(n_tasks: int) -> int:
    """One process per task while there is a core for each (1 = everything in this process)."""
    return max(1, min(n_tasks, os.cpu_count() or 1))


def progress_line(log: Path) -> str:
    """What a worker's log says it is doing: while a recipe stage trains, the stage, the progress bar's step and
    time left, and the last logged loss; otherwise (evaluating) its last INFO message."""
    if not log.is_file():
        return "starting"
    text = log.read_text(encoding="utf-8", errors="replace")
    stages = _STAGE_RE.findall(text)
    if stages and not (stages[-1][0] == stages[-1][1] and f"] {stages[-1][2]} done after" in text):
        i, n, name = stages[-1]
        text = text[text.rindex(f"stage {i}/{n}: {name}") :]
        parts = [f"stage {i}/{n} {name}"]
        bars = _BAR_RE.findall(text)
        if bars:
            step, total, left = bars[-1]
            parts.append(f"step {step}/{total}, {left} left")
        losses = _LOSS_RE.findall(text)
        if losses:
            parts.append(f"loss {float(losses[-1]):.3f}")
        return ", ".join(parts)
    messages = _INFO_RE.findall(text)
    return messages[-1][:120] if messages else "starting"


def _worker_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _in_worker(log: Path, fn: Callable[..., Any], args: tuple) -> Any:
    """Runs `fn(*args)` with this process's stdout, stderr (progress bars) and logging going to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1, encoding="utf-8") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        from training.commands.cli import configure_logging

        configure_logging(stream=sys.stderr, force=True)
        return fn(*args)


def run_tasks(tasks: dict[str, Task], jobs: int, logdir: Path) -> dict[str, Any]:
    """`{name: result}` for every task, each started once the tasks it comes `after` have finished (a task may
    only come after tasks named before it; among the tasks ready to start, the first named starts first).

    With jobs > 1 the tasks run in `jobs` worker processes with cores // jobs torch threads each, logs in
    LOGDIR/NAME.log and a status line per running task every 30 s here. A failed task is reported at once; the
    tasks that do not need it run to the end (their finished stages are kept), then its error is raised."""
    names = list(tasks)
    for i, (name, task) in enumerate(tasks.items()):
        unknown = [a for a in task.after if a not in names[:i]]
        if unknown:
            raise ValueError(f"task {name!r} comes after {unknown}, which are not tasks named before it")
    if jobs <= 1:
        results: dict[str, Any] = {}
        for name, task in tasks.items():
            results[name] = task.fn(*task.args, *(results[a] for a in task.after))
        return results
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    logs = {name: logdir / f"{name}.log" for name in tasks}
    logger.info(
        "%d tasks in %d processes (%d torch thread(s) each); logs in %s", len(tasks), jobs, threads, logdir
    )
    results, failed, waiting = {}, {}, list(names)
    with ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
    ) as pool:
        running: dict[Future, str] = {}
        while waiting or running:
            for name in list(waiting):
                task = tasks[name]
                lost = [a for a in task.after if a in failed]
                if lost:
                    waiting.remove(name)
                    failed[name] = RuntimeError(f"not run: {lost[0]} failed")
                    logger.error("%s not run: it needs %s, which failed", name, lost[0])
                elif len(running) < jobs and all(a in results for a in task.after):
                    waiting.remove(name)
                    args = (*task.args, *(results[a] for a in task.after))
                    running[pool.submit(_in_worker, logs[name], task.fn, args)] = name
                    logger.info("%s: started (log: %s)", name, logs[name])
            if not running:
                break
            done, _ = wait(running, timeout=30, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    results[name] = future.result()
                    logger.info("%s: done", name)
                except Exception as err:  # noqa: BLE001 -- reported with its log, raised once the others end
                    failed[name] = err
                    logger.error("%s failed: %r; its log: %s", name, err, logs[name])
            for name in running.values():
                logger.info("%s: %s", name, progress_line(logs[name]))
    if failed:
        name, err = next(iter(failed.items()))
        raise RuntimeError(f"{name} failed (log: {logs[name]})") from err
    return {name: results[name] for name in tasks}


def evaluate_recipe(
    recipe: str,
    stages: list[Path],
    corpus: Path,
    reports: Path,
    size: DemoSize,
    label_model: Path | None = None,
) -> dict[str, Any]:
    """Every stage of one recipe: `{"final_stage", "stages": {name: STAGE_KEYS}}`, + "before_joint" (the align
    stage on the final stages' test utterances) and, for the entropy-aware recipe when its best stage is not the
    final one, "best_stage" (that stage re-scored on the final stages' utterances), when those differ from the
    per-stage subset, and for the entropy-aware recipe "hotwords": its best stage again with hotword retrieval from
    the corpus's entity names (`HOTWORD_SETTINGS`; STAGE_KEYS, RETRIEVAL_KEYS, the settings and the list's size).
    Reports go to REPORTS/eval/RECIPE/STAGE; a stage whose report is there is read, not re-evaluated."""
    from eval.runners.evaluate import EvaluateConfig, run_evaluation
    from training.callbacks.no_speech import GATE_KEYS

    def scores(
        stage: Path,
        out: Path,
        max_utterances: int | None,
        final: bool,
        splits: list[str] | None = None,
        decoding: dict[str, Any] | None = None,
        **options: Any,
    ) -> dict:
        """The STAGE_KEYS of `stage`'s evaluation report in `out` (evaluated first unless it is there), and with
        retrieved hotwords (`options`: more EvaluateConfig fields) the RETRIEVAL_KEYS of its primary split.
        `decoding`: decoding options overriding the stage's own. A report measured with other decoding options
        than these is measured again."""
        decoding = {**(size.decoding or {}), **(decoding or {})}
        path = out / "report.json"
        report = json.loads(path.read_text()) if path.is_file() else None
        if report is not None:
            measured = report.get("settings", {})
            wanted = decoding_in_effect(stage, decoding)
            changed = {k: measured.get(k) for k, v in wanted.items() if measured.get(k, v) != v}
            if changed:
                logger.info("%s was measured with %s; measuring it again with %s", out, changed, wanted)
                report = None
        if report is None:
            run_evaluation(
                EvaluateConfig(
                    model=str(stage),
                    data=str(corpus / "dataset"),
                    out=str(out),
                    splits=splits,
                    max_utterances=max_utterances,
                    reference_model=str(stages[0]),  # the recipe's stage 1
                    label_model=None if label_model is None else str(label_model),
                    decoder_entropy=final,
                    allocation_options=dict(size.allocation_options or {}),
                    decoding=dict(decoding or {}),
                    **options,
                )
            )
            report = json.loads(path.read_text())
        retrieval = (report["splits"].get(report.get("primary_split")) or {}).get("retrieval")
        if retrieval is not None:  # the settings it was measured with, not the current code's
            measured = {k: report.get("settings", {}).get(k) for k in HOTWORD_SETTINGS}
            return {
                **{k: report.get(k) for k in STAGE_KEYS},
                **{k: retrieval.get(k) for k in RETRIEVAL_KEYS},
                **measured,
            }
        settings = report.get("settings", {})
        # the gates the report was measured with (reports written before any was recorded: the config's; a
        # report that records the no-speech gate only was measured before the speech-confidence gate existed)
        if "no_speech_threshold" in settings:
            gates = {k: settings.get(k) for k in GATE_KEYS}
        else:
            saved = json.loads((stage / "config.json").read_text())
            gates = {k: saved.get(k) for k in GATE_KEYS}
        return {**{k: report.get(k) for k in STAGE_KEYS}, **gates}

    # what every stage is scored with: the decoding options the models ship with; greedy is the second column
    entry: dict[str, Any] = {
        "final_stage": stages[-1].name,
        "stages": {},
        "decoder": decoding_in_effect(stages[-1], size.decoding),
    }
    for stage in stages:
        final = stage == stages[-1]
        subset = size.final_max_utterances if final else size.max_utterances
        entry["stages"][stage.name] = scores(stage, reports / "eval" / recipe / stage.name, subset, final)
        greedy = scores(
            stage,
            reports / "eval" / recipe / f"{stage.name}-greedy",
            subset,
            False,
            analysis=False,
            decoding=GREEDY,
        )
        entry["stages"][stage.name]["greedy"] = {k: greedy.get(k) for k in GREEDY_KEYS}
    before = next((p for p in stages if p.name == "align"), None)
    if before is not None and size.max_utterances != size.final_max_utterances:
        # the encoder before joint training, on the final stages' utterances: the probes behind PAI and CSAI
        # score higher with more frames, so the before/after comparison needs the same utterances
        entry["before_joint"] = {
            "name": before.name,
            **scores(
                before, reports / "eval" / recipe / "align-test", size.final_max_utterances, False, ["test"]
            ),
        }
    name = best_stage_name(entry["stages"])
    if (
        recipe == "entropy-aware"
        and name not in (None, entry["final_stage"])
        and size.max_utterances != size.final_max_utterances
    ):  # the targets are judged on the final stages' utterances, not on the smaller per-stage subset
        stage = next(p for p in stages if p.name == name)
        greedy = scores(
            stage, reports / "eval" / recipe / f"{name}-all-greedy", size.final_max_utterances, False,
            analysis=False, decoding=GREEDY,
        )  # fmt: skip
        entry["best_stage"] = {
            "name": name,
            **scores(stage, reports / "eval" / recipe / f"{name}-all", size.final_max_utterances, False),
            "greedy": {k: greedy.get(k) for k in GREEDY_KEYS},
        }
    name = chosen_stage(entry)[0]
    if name is None:
        return entry
    chosen = next(p for p in stages if p.name == name)

    def again(suffix: str, **options: Any) -> dict:
        """The chosen stage scored again on the final stages' test utterances, with other decoding `options`."""
        out = reports / "eval" / recipe / f"{name}-{suffix}"
        return scores(chosen, out, size.final_max_utterances, False, ["test"], analysis=False, **options)

    catalogue = (
        hotword_catalogue(corpus, reports / "eval" / recipe / "hotwords.txt")
        if recipe == "entropy-aware"
        else None
    )
    if catalogue is not None:
        entry["hotwords"] = {
            "name": name,
            "list_size": len(catalogue.read_text(encoding="utf-8").splitlines()),
            **again("hotwords", context="retrieved", hotwords_file=str(catalogue), decoding=HOTWORD_SETTINGS),
        }
    return entry


def decoding_in_effect(model_dir: Path, decoding: dict[str, Any] | None) -> dict[str, Any]:
    """The decoding options a model folder decodes with (its saved ones, then `decoding`), as an evaluation
    report's settings record them (the gates and the hotword list are recorded apart)."""
    from modeling.generation_entropy_asr import DecodingOptions

    saved = json.loads((model_dir / "generation_config.json").read_text()).get("decoding")
    options = DecodingOptions.from_dict(saved).replace(**(decoding or {})).to_dict()
    for key in (
        "hotwords",
        "no_speech_threshold",
        "min_speech_confidence",
        "return_timestamps",
        "return_phonemes",
    ):
        options.pop(key)
    return options


def hotword_catalogue(corpus: Path, out: Path) -> Path | None:
    """Every entity name in the corpus's hotword lists (`hotwords/*.txt`, one per split), one per line, written to
    `out`; None when the corpus has no such list."""
    names = {
        line.strip()
        for path in sorted((corpus / "hotwords").glob("*.txt"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    if not names:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(sorted(names)) + "\n", encoding="utf-8")
    return out


def evaluate_trained(
    recipe: str,
    corpus: Path,
    reports: Path,
    size: DemoSize,
    stages: list[Path],
    labels: list[Path] | None = None,
) -> dict[str, Any]:
    """`evaluate_recipe` for the stage outputs of a training task (frame labels from `labels`' stage 1)."""
    return evaluate_recipe(recipe, stages, corpus, reports, size, None if labels is None else labels[0])


def run_and_evaluate(
    workdir: Path,
    corpus: Path,
    start: Path,
    size: DemoSize,
    reports: Path,
    jobs: int = 1,
    seed: int = 0,
) -> tuple[dict[str, list[Path]], dict[str, Any]]:
    """Both recipes' stage outputs and the summary (`{"recipes": {recipe: evaluate_recipe(...)},
    "pocketsphinx": pocketsphinx_summary(...)}`). With `jobs` > 1 the recipes train side by side; each recipe
    is evaluated as soon as it has trained (the conventional one uses the entropy-aware stage 1's phoneme head
    for its frame labels, so it also waits for that recipe's training), and pocketsphinx, split in 2 * `jobs`
    parts, takes the processes that become free."""
    parts = 2 * jobs if jobs > 1 else 1  # small parts: the processes end at about the same time
    tasks = {
        f"train-{name}": Task(run_one_recipe, (workdir, corpus, start, size, name, seed)) for name in RECIPES
    }
    tasks["evaluate-entropy-aware"] = Task(
        evaluate_trained, ("entropy-aware", corpus, reports, size), after=("train-entropy-aware",)
    )
    tasks["evaluate-conventional"] = Task(
        evaluate_trained,
        ("conventional", corpus, reports, size),
        after=("train-conventional", "train-entropy-aware"),  # its frame labels: the entropy-aware stage 1
    )
    baseline = pocketsphinx_available()
    if not baseline:
        logger.warning("the demo runs without the pocketsphinx baseline: %s", PS_MISSING)
    for part in range(parts if baseline else 0):
        tasks[f"pocketsphinx-{part + 1}"] = Task(
            pocketsphinx_part, (corpus, size.pocketsphinx_clips, size.final_max_utterances, part, parts)
        )
    results = run_tasks(tasks, jobs, workdir / "logs")
    outputs = {name: results[f"train-{name}"] for name in RECIPES}
    recipes = {name: results[f"evaluate-{name}"] for name in RECIPES}
    if baseline:
        stage, ours = best_predictions(recipes["entropy-aware"], reports)
        ps = pocketsphinx_summary([results[f"pocketsphinx-{p + 1}"] for p in range(parts)], ours, stage)
    else:
        ps = {"wer_en": None, "n_clips": 0, "skipped": PS_MISSING}
    return outputs, {"recipes": recipes, "pocketsphinx": ps}


PS_MISSING = "pocketsphinx is not installed; `pip install pocketsphinx` (the dev extra) adds the baseline"


def pocketsphinx_available() -> bool:
    """Whether the classical baseline can run (pocketsphinx is in the dev extra, not a dependency)."""
    import importlib.util

    return importlib.util.find_spec("pocketsphinx") is not None


def pocketsphinx_rows(test, n: int, max_utterances: int | None) -> list[int]:
    """Rows of the test split `test` (a Dataset) for the pocketsphinx baseline: the first `n` English clips among
    the utterances the final stages are evaluated on (`training.data.splits.subset_indices` of `max_utterances`)."""
    from training.data.splits import subset_indices

    languages = test["language"]
    return [i for i in subset_indices(len(test), max_utterances) if languages[i] == "en"][:n]


def pocketsphinx_part(
    corpus: Path, n: int, max_utterances: int | None, part: int = 0, parts: int = 1
) -> dict[str, list[str]]:
    """The classical recogniser (its bundled US-English model) on part `part` of `parts` (every parts-th clip)
    of `pocketsphinx_rows`: `{"ids", "refs", "hyps"}`."""
    import numpy as np
    from pocketsphinx import Decoder

    from training.data.loading import SpeechDataset, load_speech_dataset

    test = load_speech_dataset(corpus / "dataset", split="test")
    ds = test.select(pocketsphinx_rows(test, n, max_utterances)[part::parts])
    decoder = Decoder(samprate=16000, loglevel="FATAL")
    out: dict[str, list[str]] = {"ids": [], "refs": [], "hyps": []}
    for row in SpeechDataset(ds):
        pcm = (np.clip(row["audio"], -1, 1) * 32767).astype(np.int16).tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        out["ids"].append(row["id"])
        out["refs"].append(row["text"])
        out["hyps"].append(hyp.hypstr if hyp is not None else "")
    return out


def pocketsphinx_summary(
    parts: list[dict[str, list[str]]], ours: dict[str, str] | None = None, stage: str | None = None
) -> dict[str, Any]:
    """WER over the clips of all `pocketsphinx_part` results: `{"wer_en", "n_clips", "examples"}`, and with
    `ours` (utterance id -> the entropy-aware model's transcript, from stage `stage`) its WER on the same clips
    (`"entropy_aware_wer_en"`, `"entropy_aware_stage"`)."""
    from eval.asr_error_rate.scoring import error_rate

    ids = [i for p in parts for i in p["ids"]]
    refs = [r for p in parts for r in p["refs"]]
    hyps = [h for p in parts for h in p["hyps"]]
    out = {
        "wer_en": float(error_rate(hyps, refs, language="en")["error_rate"]),
        "n_clips": len(refs),
        "examples": list(zip(refs, hyps))[:5],
    }
    if ours is not None:
        missing = [i for i in ids if i not in ours]
        if missing:
            raise ValueError(
                f"no transcript of the entropy-aware model for {len(missing)} clips, e.g. {missing[0]}"
            )
        mine = [ours[i] for i in ids]
        out["entropy_aware_wer_en"] = float(error_rate(mine, refs, language="en")["error_rate"])
        out["entropy_aware_stage"] = stage
    return out


def best_predictions(entry: dict[str, Any], reports: Path, recipe: str = "entropy-aware") -> tuple[str, dict]:
    """(stage name, {utterance id: transcript}) of the recipe's best stage on the final stages' utterances (its
    re-scored report when it has one), from the evaluation reports `evaluate_recipe` wrote."""
    name, _, rescored = chosen_stage(entry)
    name = name or entry["final_stage"]
    folder = f"{name}-all" if rescored else name
    report = json.loads((reports / "eval" / recipe / folder / "report.json").read_text())
    rows = report["splits"][report["primary_split"]]["predictions"]
    return name, {row["id"]: row["prediction"] for row in rows}


def _before_joint(entry: dict[str, Any]) -> dict[str, Any]:
    """A recipe's encoder scores before joint training: the align stage re-scored on the final stages'
    utterances, or its per-stage scores when it was not re-scored ({} without an align stage)."""
    return entry.get("before_joint") or entry["stages"].get("align", {})


def write_report(summary: dict[str, Any], outputs: dict[str, list[Path]], reports: Path) -> None:
    """summary.json and README.md with the per-stage tables, the Figure-1-style plot and the CKA curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports.mkdir(parents=True, exist_ok=True)
    recipes = summary["recipes"]
    summary["decoder"] = {  # every stage's headline figures; greedy is the second column
        **recipes["entropy-aware"].get("decoder", {}),
        "second_column": "greedy",
        "second_column_options": GREEDY,
    }
    (reports / "summary.json").write_text(json.dumps(summary, indent=2))

    # Figure 1 style: encoder scores before joint training (after align) vs the final model, both recipes, on
    # the final stages' utterances
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    for ax, key in zip(axes, ("nse", "pai", "csai")):
        labels, before, after = [], [], []
        for name, entry in recipes.items():
            stages = entry["stages"]
            labels.append(name)
            before.append(_before_joint(entry).get(key) or 0.0)
            after.append(stages[entry["final_stage"]].get(key) or 0.0)
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], before, 0.4, label="before joint (align)")
        ax.bar([i + 0.2 for i in x], after, 0.4, label="final")
        ax.set_xticks(list(x), labels)
        ax.set_title(key.upper())
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(reports / "entropy_allocation.png", dpi=120)
    plt.close(fig)
    cka_png = None
    for stage in outputs.get("entropy-aware", []):
        if (stage / "hot_swap_cka.png").is_file():
            cka_png = reports / "ia_sft_cka.png"
            shutil.copy2(stage / "hot_swap_cka.png", cka_png)

    from training.config import NoSpeechConfig

    gate = NoSpeechConfig()  # the recipes calibrate with the defaults

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def num(v):
        return "n/a" if v is None else f"{v:.3f}"

    def per(s):  # the phoneme CTC head's error (none for a character head or an old report)
        en, zh = s.get("per_en"), s.get("per_zh")
        return "n/a" if en is None and zh is None else f"{pct(en)} / {pct(zh)}"

    def names(s):  # B-WER / B-CER: the words (characters) of the names each test row records
        en, zh = s.get("bwer_en"), s.get("bcer_zh")
        return "n/a" if en is None and zh is None else f"{pct(en)} / {pct(zh)}"

    lines = [
        "# entropy-asr demo report",
        "",
        "Built by `make demo` on the built-in corpus; rates in percent.",
        "",
    ]
    for name, entry in recipes.items():
        lines += [
            f"## {name}",
            "",
            "| stage | WER en | CER zh | greedy: WER en / CER zh | on names en / zh | PER en / zh | halluc. rule | "
            "halluc. probes | NSE | PAI | CSAI | CKA to stage 1 | RTF | no-speech gate | speech-confidence gate |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for stage, s in entry["stages"].items():
            g = s.get("greedy") or {}
            lines.append(
                f"| {stage} | {pct(s['wer_en'])} | {pct(s['cer_zh'])} | {pct(g.get('wer_en'))} / "
                f"{pct(g.get('cer_zh'))} | {names(s)} | {per(s)} | "
                f"{pct(s['hallucination_rule'])} | "
                f"{pct(s['hallucination_probe'])} | {num(s['nse'])} | {num(s['pai'])} | {num(s['csai'])} | "
                f"{num(s['cka_to_pretrained'])} | {num(s['rtf'])} | {num(s.get('no_speech_threshold'))} | "
                f"{num(s.get('min_speech_confidence'))} |"
            )
        lines += [
            "",
            f"No-speech gate: each stage that writes transcripts calibrated `no_speech_threshold` on {gate.samples} "
            f"dev clips ({1 + gate.margin:g} x the highest probability of ending the turn at once on speech, at least "
            f"{gate.floor:g}); its model answers a clip with nothing when that probability reaches the threshold. "
            + (
                f"The speech-confidence gate (`min_speech_confidence`, {1 - gate.confidence_margin:g} x the lowest "
                "speech confidence on the same clips: the mean probability of the phoneme-CTC head's best label "
                "where it is not blank) answers with nothing when the encoder's posteriors are flatter than that. "
                if gate.confidence_margin is not None
                else ""
            )
            + "The rates above are with the gates. Every stage decodes with the decoder it ships with (its saved "
            "decoding options: "
            + decoder_text(summary)
            + "); greedy: the LLM's greedy decoding alone (`ctc_weight=0`), on the same clips. On names: WER (CER) on the words (characters) of the entity names "
            "each test utterance records (B-WER / B-CER; the test names never occur in training). PER: greedy "
            "phoneme error of the phoneme CTC head (what the encoder hears, before the LLM; n/a for a character "
            "head).",
            "",
        ]
    ps = summary.get("pocketsphinx", {})
    line = f"pocketsphinx on {ps.get('n_clips', 0)} English test clips: WER {pct(ps.get('wer_en'))}"
    if ps.get("skipped"):
        line = f"pocketsphinx baseline not run: {ps['skipped']}"
    if ps.get("entropy_aware_wer_en") is not None:
        line += f"; the entropy-aware `{ps['entropy_aware_stage']}` on the same clips: {pct(ps['entropy_aware_wer_en'])}"
    lines += [line + ".", ""]
    lines += [
        "Encoder before and after joint training, on the final stages' utterances (the per-stage tables score the "
        "intermediate stages on a smaller subset, where the PAI and CSAI probes, trained on fewer frames, score "
        "lower):",
        "",
        "| recipe | NSE before | NSE final | PAI before | PAI final | CSAI before | CSAI final |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in recipes.items():
        b = _before_joint(entry)
        f = entry["stages"][entry["final_stage"]]
        cells = [f"{num(b.get(k))} | {num(f.get(k))}" for k in ("nse", "pai", "csai")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "![entropy allocation](entropy_allocation.png)", ""]
    if cka_png:
        lines += [
            "IA-SFT: CKA of each pretraining snapshot to the encoder in use, hot-swaps marked:",
            "",
            "![CKA](ia_sft_cka.png)",
            "",
        ]
    lines += ["## Targets (entropy-aware, best stage)", "", *targets(summary), ""]
    lines += ["## What the numbers say", "", *claims(summary), ""]
    (reports / "README.md").write_text("\n".join(lines))


TARGETS = (  # key, bound, text (issue targets for the entropy-aware model on the built-in test split)
    ("wer_en", 0.10, "English WER"),
    ("cer_zh", 0.10, "Mandarin CER"),
    ("hallucination_probe", 0.01, "clips with output on the silence and noise probes"),
    ("hallucination_rule", 0.005, "test utterances hallucinated by the paper's rule"),
)


def targets(summary: dict[str, Any]) -> list[str]:
    """One line per target: the entropy-aware recipe's best stage (lowest mean error rate) against it."""
    entry = summary["recipes"]["entropy-aware"]
    name, best, rescored = chosen_stage(entry)
    if name is None:
        return ["- no stage produced transcripts."]
    out = [f"Best stage: `{name}`."]
    if rescored:
        out = [
            f"Best stage: `{name}` (chosen on the per-stage subset, and better than the final stage on the "
            "utterances of the final stages; the figures below are its scores on those)."
        ]
    elif entry.get("best_stage", {}).get("name") not in (None, name):
        out = [
            f"Best stage: `{name}` (`{entry['best_stage']['name']}`, the best on the per-stage subset, did not do "
            "better on the utterances of the final stages)."
        ]
    for key, bound, text in TARGETS:
        value = best.get(key)
        if value is None:
            out.append(f"- {text}: not measured (target <= {100 * bound:.1f}%).")
        elif value <= bound:
            out.append(
                f"- {text}: {100 * value:.2f}% (target <= {100 * bound:.1f}%): met{_by_names(best, key)}."
            )
        else:
            out.append(
                f"- {text}: {100 * value:.2f}% (target <= {100 * bound:.1f}%): MISSED by "
                f"{100 * (value - bound):.2f} points{_by_names(best, key)}."
            )
    ps = summary.get("pocketsphinx", {})
    mine = ps.get("entropy_aware_wer_en", best.get("wer_en"))
    if ps.get("wer_en") is not None and mine is not None:
        verdict = "met" if mine < ps["wer_en"] else "MISSED"
        clips = f" on the same {ps['n_clips']} English clips" if "entropy_aware_wer_en" in ps else ""
        out.append(
            f"- lower English WER than pocketsphinx{clips}: {100 * mine:.2f}% vs {100 * ps['wer_en']:.2f}%: "
            f"{verdict}."
        )
    elif ps.get("skipped"):
        out.append(f"- lower English WER than pocketsphinx: not measured ({ps['skipped']}).")
    if entry.get("hotwords"):
        out.append(hotword_line(entry["hotwords"]))
    greedy = best.get("greedy") or {}
    if greedy:
        rule = greedy.get("hallucination_rule")
        out.append(
            "- the same stage with the LLM's greedy decoding alone (`ctc_weight=0`, the second column): "
            + ", ".join(_verdicts(greedy))
            + f"; test utterances hallucinated by the paper's rule {'n/a' if rule is None else f'{100 * rule:.2f}%'}."
        )
    return out


def _verdicts(scores: dict[str, Any]) -> list[str]:
    """ "English WER 9.50% (met; on the names' words ...)" for the two error-rate targets."""
    rates = []
    for key, bound, text in TARGETS[:2]:
        value = scores.get(key)
        verdict = (
            "not measured"
            if value is None
            else "met"
            if value <= bound
            else f"MISSED by {100 * (value - bound):.2f} points"
        )
        shown = "n/a" if value is None else f"{100 * value:.2f}%"
        rates.append(f"{text} {shown} ({verdict}{_by_names(scores, key)})")
    return rates


def decoder_text(summary: dict[str, Any]) -> str:
    """The shipped decoder in words, from the summary's "decoder" entry."""
    d = summary.get("decoder") or {}
    if not d.get("ctc_weight"):
        return "greedy decoding"
    return (
        f"joint CTC / LLM beam search, CTC weight {d['ctc_weight']:g}, {d['beam_size']} hypotheses, "
        f"{d['ctc_candidates']} LLM proposals each, length bonus {d['unit_bonus']:g} per word or Hanzi"
    )


NAME_SPLIT = {"wer_en": ("bwer_en", "uwer_en", "words"), "cer_zh": ("bcer_zh", "ucer_zh", "characters")}


def _by_names(scores: dict[str, Any], key: str) -> str:
    """ "; on the names' words 95.0%, on the other words 14.0%" for an error-rate key with its B-/U- split."""
    biased, unbiased, unit = NAME_SPLIT.get(key, (None, None, ""))
    b, u = scores.get(biased), scores.get(unbiased)
    if b is None or u is None:
        return ""
    return f"; on the names' {unit} {100 * b:.2f}%, on the other {unit} {100 * u:.2f}%"


def hotword_line(hw: dict[str, Any]) -> str:
    """The error-rate targets again with hotword retrieval (`evaluate_recipe`'s "hotwords" entry)."""

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    rates = _verdicts(hw)
    edits = hw.get("max_hotword_edits", 0)
    per_edit = hw.get("phonemes_per_edit")
    return (
        f"- with the companion paper's hotword retrieval (`{hw['name']}`; the corpus's {hw['list_size']} entity names "
        f"as the list, looked up in each test clip's phoneme hypothesis"
        + (f" with up to {edits} phoneme edit{'s' if edits != 1 else ''}" if edits else "")
        + (f", one per {per_edit} phonemes of a name" if edits and per_edit else "")
        + f"; the names found bias decoding with bonus {hw.get('hotword_bonus', 0):g}"
        + ("" if hw.get("prompt_hotwords", True) else " and stay out of the prompt")
        + f"): {', '.join(rates)}; retrieval recall {pct(hw.get('recall'))}, precision {pct(hw.get('precision'))}, "
        f"{hw.get('hotwords_per_utterance') or 0:.2f} names per utterance; test utterances hallucinated by the "
        f"paper's rule {pct(hw.get('hallucination_rule'))}."
    )


def claims(summary: dict[str, Any]) -> list[str]:
    """One sentence per claim of the paper, stating whether these numbers support it."""
    ea, cv = (summary["recipes"][k] for k in ("entropy-aware", "conventional"))
    fa, fc = ea["stages"][ea["final_stage"]], cv["stages"][cv["final_stage"]]
    out = []

    def compare(key, lower_is_better, text):
        a, c = fa.get(key), fc.get(key)
        if a is None or c is None:
            out.append(f"- {text}: not measurable here ({key} missing).")
            return
        better = a < c if lower_is_better else a > c
        out.append(
            f"- {text}: entropy-aware {a:.3f} vs conventional {c:.3f}: {'supported' if better else 'not supported'} by this run."
        )

    compare("wer_en", True, "Lower English error rate at equal compute")
    compare("cer_zh", True, "Lower Mandarin error rate at equal compute")
    compare("hallucination_probe", True, "Fewer hallucinations on silence and noise")
    compare("csai", True, "Less semantic anchoring in the encoder (lower CSAI)")
    compare("cka_to_pretrained", False, "Less encoder drift from its pretrained state (higher CKA)")
    out.append(
        "- Scale caveat: a ~7M-parameter model trained for minutes on synthetic speech; the paper's claims are about 2.3B models on real data."
    )
    return out


def best_stage_name(stages: dict[str, dict[str, Any]]) -> str | None:
    """The stage with the lowest mean of English WER and Mandarin CER (those measured; ties: the later
    stage); None when no stage has either."""

    def mean_rate(name: str) -> float:
        rates = [stages[name].get(k) for k in ("wer_en", "cer_zh")]
        rates = [r for r in rates if r is not None]
        return sum(rates) / len(rates) if rates else float("inf")

    ranked = [n for n in reversed(list(stages)) if mean_rate(n) < float("inf")]
    return min(ranked, key=mean_rate, default=None)


def best_stage(
    summary: dict[str, Any], outputs: dict[str, list[Path]], recipe: str = "entropy-aware"
) -> Path:
    """The recipe's stage output folder chosen by `chosen_stage` (the last stage if none has rates)."""
    name, _, _ = chosen_stage(summary["recipes"][recipe])
    return next((p for p in outputs[recipe] if p.name == name), outputs[recipe][-1])


def chosen_stage(entry: dict[str, Any]) -> tuple[str | None, dict[str, Any], bool]:
    """(name, scores, re-scored) of a recipe's best stage: the lowest mean error rate on the per-stage subset
    (`best_stage_name`); when that stage was re-scored on the final stages' utterances (`entry["best_stage"]`),
    the better of it and the final stage there (ties: the final stage), with the scores on those utterances."""
    name = best_stage_name(entry["stages"])
    if name is None:
        return None, {}, False
    again = entry.get("best_stage")
    if not again or again.get("name") != name:
        return name, entry["stages"][name], False
    final = entry["final_stage"]
    if best_stage_name({name: again, final: entry["stages"][final]}) == final:
        return final, entry["stages"][final], False
    return name, again, True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--workdir", default=None, help="default: runs/demo-SIZE")
    parser.add_argument("--data", default=None, help="corpus folder, default: data/corpus-SIZE")
    parser.add_argument(
        "--reports", default=None, help="default: reports/demo (reports/demo-tiny for --size tiny)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the corpus, the model's initial weights and every stage"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes for the two recipes and their evaluations (default: one per recipe, at most one per "
        "CPU core; 1 runs everything in this process)",
    )


def run(args: argparse.Namespace) -> int:
    from training.build import REPO_ROOT

    if args.jobs is not None and args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, got {args.jobs}")
    size = SIZES[args.size]
    workdir = Path(args.workdir or REPO_ROOT / f"runs/demo-{args.size}")
    corpus = Path(args.data or REPO_ROOT / f"data/corpus-{args.size}")
    reports = Path(
        args.reports or REPO_ROOT / ("reports/demo" if args.size == "full" else f"reports/demo-{args.size}")
    )
    t0 = time.time()
    _step(f"corpus ({size.corpus})", t0)
    build_corpus_once(corpus, size.corpus, args.seed)
    _step("tiny model + text-only LLM pretraining", t0)
    start = init_and_text_lm(workdir, corpus, size.text_lm_steps, size.batch_size, seed=args.seed)
    jobs = args.jobs or default_jobs(len(RECIPES))
    _step("recipes, evaluation of every stage, pocketsphinx baseline", t0)
    outputs, summary = run_and_evaluate(workdir, corpus, start, size, reports, jobs, args.seed)
    write_report(summary, outputs, reports)
    _step("export", t0)
    from training.commands.release import assemble_release

    best = best_stage(summary, outputs)
    logger.info("exporting %s (lowest mean of English WER and Mandarin CER)", best)
    folders = assemble_release(
        best,
        workdir / "export",
        "entropy-asr/entropy-asr-tiny",
        space_id="entropy-asr/entropy-asr-demo",
        metric_id="entropy-asr/entropy_allocation",
        report=reports / "summary.json",
        examples=corpus / "dataset",
    )
    export = folders.model
    logger.info("demo done in %.1f min: %s", (time.time() - t0) / 60, reports / "README.md")
    print(f"\nReport: {reports / 'README.md'}")
    print(f"Transcribe a file:  .venv/bin/entropy-asr transcribe --model {export} some.wav")
    print(f"Start the Space:    .venv/bin/entropy-asr space --model {export}")
    return 0
