"""`entropy-asr demo` (what `make demo` runs): the method at laptop scale on the built-in corpus.

What it runs, how much and what it checks are set in configs/demo.yaml; the report is written by
`training.commands.demo_report`.

1. build the corpus (and its text corpus); 2. initialise the tiny model and pretrain its LLM on text;
3. run both recipes of configs/demo.yaml (`entropy-aware-tiny`, `conventional-tiny`) on the same data
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

`--size tiny` is the quick variant (the tiny corpus, 3% of the steps, small evaluation subsets).

Imports of torch, numpy and what imports them stay inside the functions that need them: the spawned worker
processes import this module before `_worker_init` sets their thread count (OMP_NUM_THREADS, which torch's and
numpy's BLAS read when they load; with numpy loaded first, the demo's CKA figures differed in the last digit).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.asr_error_rate.scoring import error_rate
from eval.runners.keys import HEADLINE_KEYS, TRANSCRIPT_KEYS
from training.commands.cli import configure_logging
from training.commands.demo_report import Target, best_stage_name, chosen_stage, seeds_report, write_report
from training.config import REPO_ROOT, parse_yaml

logger = logging.getLogger(__name__)
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


@dataclass
class DemoSize:
    """How much one size of the demo trains and scores (configs/demo.yaml `sizes`)."""

    corpus: str
    step_scale: float
    text_lm_steps: int
    max_utterances: int | None  # per split, for every stage's evaluation (None = all)
    final_max_utterances: int | None  # for the final stages, and every stage's encoder scores (one fixed set)
    pocketsphinx_clips: int
    batch_size: int | None = None  # overrides every stage's batch size when set
    allocation_options: dict | None = None  # entropy-allocation probe options (resolve_config)
    # clips of each TRANSFER_SPLITS split each recipe's chosen stage is scored on (None: all)
    transfer_max_utterances: int | None = None
    # decoding options over the models' own in every evaluation (None: the shipped decoder as it is)
    decoding: dict | None = None


def load_settings(path: Path = DEMO_CONFIG) -> dict[str, Any]:
    """configs/demo.yaml: `recipes`, `sizes` (as DemoSize), `hotwords`, `greedy`, `targets` (as Target)."""
    data = parse_yaml(Path(path).read_text(encoding="utf-8"))
    expected = {"recipes", "sizes", "hotwords", "greedy", "targets"}
    if set(data) != expected:
        raise ValueError(f"{path}: expected the keys {sorted(expected)}, got {sorted(data)}")
    data["sizes"] = {name: DemoSize(**size) for name, size in data["sizes"].items()}
    data["targets"] = tuple(Target(**t) for t in data["targets"])
    return data


SETTINGS = load_settings()
RECIPES: dict[str, str] = SETTINGS["recipes"]
SIZES: dict[str, DemoSize] = SETTINGS["sizes"]
HOTWORD_SETTINGS: dict[str, Any] = SETTINGS["hotwords"]
GREEDY: dict[str, Any] = SETTINGS["greedy"]
TARGETS: tuple[Target, ...] = SETTINGS["targets"]
RETRIEVAL_KEYS = ("recall", "precision", "hotwords_per_utterance")


def _step(name: str, t0: float) -> None:
    logger.info("=== demo: %s (%.1f min elapsed)", name, (time.time() - t0) / 60)


def build_corpus_once(out: Path, size: str, seed: int) -> Path:
    # lazy: see the module docstring (torch and numpy after the workers' thread count)
    from training.data.corpus import build_corpus

    if not (out / "dataset" / "dataset_dict.json").is_file():
        build_corpus(out, size=size, seed=seed, workers=2)
    return out


def init_and_text_lm(
    workdir: Path, corpus: Path, steps: int, batch_size: int | None = None, seed: int = 0
) -> Path:
    # lazy: see the module docstring (torch and numpy after the workers' thread count)
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
    # lazy: see the module docstring (torch and numpy after the workers' thread count)
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
    # lazy: see the module docstring (torch and numpy after the workers' thread count)
    import torch

    torch.set_num_threads(threads)


def _in_worker(log: Path, fn: Callable[..., Any], args: tuple) -> Any:
    """Runs `fn(*args)` with this process's stdout, stderr (progress bars) and logging going to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1, encoding="utf-8") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)

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


# the splits each recipe's chosen stage is also scored on (when the corpus has them): code-switched requests,
# and English said by a synthesizer no training clip comes from (training.data.corpus)
TRANSFER_SPLITS = ("test_codeswitch", "test_unseen_engine")

# `analysis_max_utterances` for "every utterance" (an evenly spaced subset at least as large as the split is all of it)
ALL_UTTERANCES = 10**9


def evaluate_recipe(
    recipe: str,
    stages: list[Path],
    corpus: Path,
    reports: Path,
    size: DemoSize,
    label_model: Path | None = None,
) -> dict[str, Any]:
    """Every stage of one recipe: `{"final_stage", "stages": {name: HEADLINE_KEYS}}`, + for the entropy-aware recipe
    when its best stage is not the final one, "best_stage" (that stage re-scored on the final stages' utterances),
    when those differ from the per-stage subset, and for the entropy-aware recipe "hotwords": its best stage again
    with hotword retrieval from the corpus's entity names (`HOTWORD_SETTINGS`; HEADLINE_KEYS, RETRIEVAL_KEYS, the
    settings and the list's size), and "transfer": `{split: {"name", HEADLINE_KEYS, "greedy"}}`, the chosen stage on
    each TRANSFER_SPLITS split the corpus has (`size.transfer_max_utterances` of its clips). Every stage's encoder
    scores (NSE, PAI, CSAI, CKA) come from one fixed set of test utterances, the final stages'
    (`analysis_max_utterances`), whatever subset its transcripts are scored on: the per-stage table and the
    before/after comparison agree by construction. Reports go to
    REPORTS/eval/RECIPE/STAGE; a stage whose report is there is read, not re-evaluated, unless it was measured
    with other decoding options or on another analysis set."""
    # lazy: see the module docstring (torch and numpy after the workers' thread count)
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
        """The HEADLINE_KEYS of `stage`'s evaluation report in `out` (evaluated first unless it is there), and with
        retrieved hotwords (`options`: more EvaluateConfig fields) the RETRIEVAL_KEYS of its primary split.
        `decoding`: decoding options overriding the stage's own. A report measured with other decoding options
        than these is measured again."""
        decoding = {**(size.decoding or {}), **(decoding or {})}
        if options.get("analysis", True):
            options = {"analysis_max_utterances": analysis_set, **options}
        path = out / "report.json"
        report = json.loads(path.read_text()) if path.is_file() else None
        if report is not None:
            measured = report.get("settings", {})
            wanted = decoding_in_effect(stage, decoding)
            changed = {k: measured.get(k) for k, v in wanted.items() if measured.get(k, v) != v}
            if (
                "analysis_max_utterances" in options
                and measured.get("analysis_max_utterances") != analysis_set
            ):
                changed["analysis_max_utterances"] = measured.get("analysis_max_utterances")
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
                **{k: report.get(k) for k in HEADLINE_KEYS},
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
        return {
            **{k: report.get(k) for k in HEADLINE_KEYS},
            **gates,
            "n_utterances": report.get("n_utterances"),
        }

    # the encoder scores' one set of utterances: the final stages' (None: all of them)
    analysis_set = size.final_max_utterances if size.final_max_utterances is not None else ALL_UTTERANCES
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
        entry["stages"][stage.name]["greedy"] = {k: greedy.get(k) for k in TRANSCRIPT_KEYS}
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
            "greedy": {k: greedy.get(k) for k in TRANSCRIPT_KEYS},
        }
    name = chosen_stage(entry)[0]
    if name is None:
        return entry
    chosen = next(p for p in stages if p.name == name)

    def again(suffix: str, split: str = "test", subset: int | None = None, **options: Any) -> dict:
        """The chosen stage scored again on `split` (the final stages' test utterances; `subset`: an evenly spaced
        subset of that many), with other decoding `options`."""
        out = reports / "eval" / recipe / f"{name}-{suffix}"
        subset = size.final_max_utterances if subset is None else subset
        return scores(chosen, out, subset, False, [split], analysis=False, **options)

    # speech the recipes were not tuned on: code-switched requests, and another synthesizer's English
    listed = corpus / "dataset" / "dataset_dict.json"  # what `save_to_disk` wrote: the split names
    available = json.loads(listed.read_text())["splits"] if listed.is_file() else []
    for split in [s for s in TRANSFER_SPLITS if s in available]:
        greedy = again(f"{split}-greedy", split, size.transfer_max_utterances, decoding=GREEDY)
        entry.setdefault("transfer", {})[split] = {
            "name": name,
            **again(split, split, size.transfer_max_utterances),
            "greedy": {k: greedy.get(k) for k in TRANSCRIPT_KEYS},
        }

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
    # lazy: see the module docstring (torch and numpy after the workers' thread count)
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

    return importlib.util.find_spec("pocketsphinx") is not None


def pocketsphinx_rows(test, n: int, max_utterances: int | None) -> list[int]:
    """Rows of the test split `test` (a Dataset) for the pocketsphinx baseline: the first `n` English clips among
    the utterances the final stages are evaluated on (`training.data.splits.subset_indices` of `max_utterances`)."""
    # lazy: see the module docstring (torch and numpy after the workers' thread count)
    from training.data.splits import subset_indices

    languages = test["language"]
    return [i for i in subset_indices(len(test), max_utterances) if languages[i] == "en"][:n]


def pocketsphinx_part(
    corpus: Path, n: int, max_utterances: int | None, part: int = 0, parts: int = 1
) -> dict[str, list[str]]:
    """The classical recogniser (its bundled US-English model) on part `part` of `parts` (every parts-th clip)
    of `pocketsphinx_rows`: `{"ids", "refs", "hyps"}`."""
    # lazy: see the module docstring (torch and numpy after the workers' thread count)
    import numpy as np
    from pocketsphinx import Decoder

    # lazy: see the module docstring (torch and numpy after the workers' thread count)
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


def best_stage(
    summary: dict[str, Any], outputs: dict[str, list[Path]], recipe: str = "entropy-aware"
) -> Path:
    """The recipe's stage output folder chosen by `chosen_stage` (the last stage if none has rates)."""
    name, _, _ = chosen_stage(summary["recipes"][recipe])
    return next((p for p in outputs[recipe] if p.name == name), outputs[recipe][-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--workdir", default=None, help="default: runs/demo-SIZE")
    parser.add_argument("--data", default=None, help="corpus folder, default: data/corpus-SIZE")
    parser.add_argument(
        "--reports", default=None, help="default: reports/demo (reports/demo-tiny for --size tiny)"
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seed", type=int, default=0, help="seeds the corpus, the model's initial weights and every stage"
    )
    seeds.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="run the whole comparison once per seed, one after the other, on one corpus (built with the first "
        "seed), each into runs/demo-SIZE-seed-N and REPORTS-seeds/seed-N, then report over the seeds in "
        "REPORTS-seeds (`make reproduce`: 0 1 2)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes for the two recipes and their evaluations (default: one per recipe, at most one per "
        "CPU core; 1 runs everything in this process)",
    )


def run(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, got {args.jobs}")
    size = SIZES[args.size]
    corpus = Path(args.data or REPO_ROOT / f"data/corpus-{args.size}")
    reports = Path(
        args.reports or REPO_ROOT / ("reports/demo" if args.size == "full" else f"reports/demo-{args.size}")
    )
    jobs = args.jobs or default_jobs(len(RECIPES))
    workdir = Path(args.workdir or REPO_ROOT / f"runs/demo-{args.size}")
    if args.seeds is None:
        export = run_demo(size, workdir, corpus, reports, jobs, args.seed)
        print(f"\nReport: {reports / 'README.md'}")
        print(f"Transcribe a file:  .venv/bin/entropy-asr transcribe --model {export} some.wav")
        print(f"Start the Space:    .venv/bin/entropy-asr space --model {export}")
        return 0
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds must not repeat a seed, got {args.seeds}")
    together = reports.with_name(reports.name + "-seeds")
    summaries = {}
    t0 = time.time()
    for seed in args.seeds:
        logger.info("=== demo over seeds: seed %d (%.1f min elapsed)", seed, (time.time() - t0) / 60)
        folder = together / f"seed-{seed}"
        run_demo(size, workdir.with_name(f"{workdir.name}-seed-{seed}"), corpus, folder, jobs, seed)
        summaries[seed] = json.loads((folder / "summary.json").read_text())
    lines, summary = seeds_report(summaries, TARGETS)
    (together / "summary.json").write_text(json.dumps(summary, indent=2))
    (together / "README.md").write_text("\n".join(lines))
    logger.info("demo over %d seeds done in %.1f min", len(args.seeds), (time.time() - t0) / 60)
    print(f"\nReport over the seeds: {together / 'README.md'}")
    return 0


def run_demo(size: DemoSize, workdir: Path, corpus: Path, reports: Path, jobs: int, seed: int) -> Path:
    """The whole comparison for one seed: the corpus (once), both recipes and their evaluations, the report, the
    export of the best entropy-aware stage (returned)."""
    t0 = time.time()
    _step(f"corpus ({size.corpus})", t0)
    build_corpus_once(corpus, size.corpus, seed)
    _step("tiny model + text-only LLM pretraining", t0)
    start = init_and_text_lm(workdir, corpus, size.text_lm_steps, size.batch_size, seed=seed)
    _step("recipes, evaluation of every stage, pocketsphinx baseline", t0)
    outputs, summary = run_and_evaluate(workdir, corpus, start, size, reports, jobs, seed)
    write_report(summary, outputs, reports, TARGETS, GREEDY)
    _step("export", t0)
    # lazy: see the module docstring (torch and numpy after the workers' thread count)
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
    logger.info("demo done in %.1f min: %s", (time.time() - t0) / 60, reports / "README.md")
    return folders.model
