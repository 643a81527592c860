"""Assemble the three release folders that `entropy-asr push` uploads to the Hub:

- model/: a self-contained transformers folder (safetensors with any LoRA adapter merged, config.json with
  auto_map, the remote-code files from modeling/, processor/tokenizer files, generation_config.json) and a
  model card README.md whose YAML metadata carries a model-index read from an evaluation report;
- space/: the Gradio demo (space/) with the model id filled in (it needs nothing of the project: it calls the
  model's own pipeline);
- metric/: the `evaluate` module eval/entropy_allocation/ as a Gradio Space (`evaluate.load("USER/NAME")`).

Everything here is local; uploading lives in training/commands/push.py.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
from datasets import load_from_disk
from huggingface_hub import EvalResult, ModelCard, ModelCardData, SpaceCard, metadata_load, metadata_save
from peft import PeftModel
from safetensors import safe_open

from modeling import EntropyASRForConditionalGeneration, EntropyASRProcessor
from training.build import REMOTE_CODE_FILES, save_model_folder
from training.config import REPO_ROOT

logger = logging.getLogger(__name__)

# Files a training run leaves in a model folder that do not belong in a release.
TRAINING_LEFTOVERS = re.compile(
    r"^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|"
    r"README\.md|.*\.(bin|pt|pth|ckpt))$"
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_DATASETS = ("entropy-asr/synthetic-in-car-en-zh",)
DEFAULT_DATASET_NAME = "entropy-asr built-in in-car corpus (synthetic, English/Mandarin)"

# summary key (`eval.runners.evaluate.HEADLINE_KEYS`) -> (model-index metric type, display name, stored as a fraction -> shown in %)
REPORT_METRICS: dict[str, tuple[str, str, bool]] = {
    "wer_en": ("wer", "WER, English (%)", True),
    "cer_zh": ("cer", "CER, Mandarin (%)", True),
    "mer_mixed": ("mer", "Mixed error rate, code-switch (%)", True),
    "hallucination_rule": ("hallucination_rate", "Hallucination rate, paper's rule (%)", True),
    "hallucination_probe": ("hallucination_rate", "Clips with output on silence/noise probes (%)", True),
    "nse": ("nse", "NSE of encoder frames", False),
    "pai": ("pai", "PAI (bits/frame)", False),
    "pai_normalised": ("pai_normalised", "PAI / H(P)", False),
    "csai": ("csai", "CSAI beyond the unit's pronunciation (bits/frame)", False),
    "csai_frame": ("csai_frame", "Frame-phoneme CSAI (bits/frame)", False),
    "cka_to_pretrained": ("cka", "CKA to the pretrained encoder", False),
    "rtf": ("rtf", "Real-time factor", False),
}
# the names the evaluate modules give the same figures (asr_error_rate's metric ids; entropy_allocation's outputs)
REPORT_ALIASES = {
    "wer": "wer_en",
    "cer": "cer_zh",
    "mer": "mer_mixed",
    "pai_bits": "pai",
    "csai_bits": "csai",
    "csai_frame_bits": "csai_frame",
    "cka": "cka_to_pretrained",
}

METRIC_APP = '''"""Card and a small live example of the `{name}` evaluate metric."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path

import evaluate
import gradio as gr
import numpy as np

HERE = Path(__file__).resolve().parent
metric = evaluate.load(str(HERE / "{name}.py"))


def example(frames_per_utterance: int = 200):
    """Scores for synthetic frames that encode their phoneme and which of two homophones was said (the last
    dimension): CSAI counts the latter, beyond the unit's pronunciation."""
    rng = np.random.default_rng(0)
    n_utt, dim, n_ph = 12, 32, 8
    phonemes = rng.integers(0, n_ph, n_utt * frames_per_utterance)
    units = phonemes // 2 * 10 + rng.integers(0, 2, phonemes.size)
    states = np.eye(dim)[phonemes] * 2.0 + 0.5 * rng.standard_normal((phonemes.size, dim))
    states[:, -1] += units % 10
    utterances = np.repeat(np.arange(n_utt), frames_per_utterance)
    return metric.compute(encoder_states=states.astype("float32"), phonemes=phonemes, units=units,
                          utterance_ids=utterances, pronunciations=units // 10, min_steps=100, epochs=2)


card = (HERE / "README.md").read_text(encoding="utf-8").split("---", 2)[-1]
with gr.Blocks(title="{name}") as demo:
    gr.Markdown(card)
    button = gr.Button("Compute on a synthetic example")
    button.click(lambda: example(), outputs=gr.JSON(label="scores"), api_name="example")

if __name__ == "__main__":
    demo.launch()
'''
METRIC_REQUIREMENTS = "evaluate>=0.4.6\ndatasets>=3\nnumpy\ntorch\n"


@dataclass
class ReleaseFolders:
    """Where `assemble_release` wrote each folder (None: skipped, with the reason in `skipped`)."""

    model: Path
    space: Path | None
    metric: Path | None
    skipped: dict[str, str] = field(default_factory=dict)


# ---- model folder ---------------------------------------------------------------------------------------
def has_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def assemble_model(model_dir: str | Path, out: str | Path) -> Path:
    """A self-contained model folder in `out`. A folder with a peft adapter (adapter_config.json at the top,
    trained on the whole EntropyASR model; base weights in the same folder or at the adapter's
    `base_model_name_or_path`) is loaded, merged and re-saved; any other folder is copied, without training
    leftovers, with the remote code refreshed from modeling/."""
    model_dir, out = Path(model_dir), Path(out)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model folder {model_dir} does not exist.")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    complete = all((model_dir / f).is_file() for f in ("config.json", "generation_config.json")) and any(
        model_dir.glob("model*.safetensors")
    )
    if has_adapter(model_dir) or not complete:
        _merge_and_save(model_dir, out)
    else:
        _copy_folder(model_dir, out)
    _check_model_folder(out)
    return out


def _merge_and_save(model_dir: Path, out: Path) -> None:
    base = model_dir
    if has_adapter(model_dir) and not any(model_dir.glob("model*.safetensors")):
        cfg = json.loads((model_dir / "adapter_config.json").read_text())
        base = Path(cfg.get("base_model_name_or_path") or "")
        if not (base / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir} holds a LoRA adapter without base weights, and its base_model_name_or_path "
                f"{str(base)!r} is not a local model folder."
            )
    model = _load_without_adapter(EntropyASRForConditionalGeneration, base)
    if has_adapter(model_dir):
        logger.info("merging the LoRA adapter of %s into its base weights", model_dir)
        model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    has_processor = (model_dir / "processor_config.json").is_file()
    processor = EntropyASRProcessor.from_pretrained(model_dir if has_processor else base)
    save_model_folder(model.eval(), processor, out)


def _load_without_adapter(model_class, folder: Path):
    """Base weights only: transformers would otherwise attach an adapter_config.json it finds in the folder
    through its own peft integration (and then save only the adapter)."""

    with tempfile.TemporaryDirectory() as tmp:
        for item in folder.iterdir():
            if item.is_file() and item.name not in ADAPTER_FILES:
                (Path(tmp) / item.name).symlink_to(item.resolve())
        return model_class.from_pretrained(tmp)


def _copy_folder(model_dir: Path, out: Path) -> None:
    for item in sorted(model_dir.iterdir()):
        if item.is_file() and not TRAINING_LEFTOVERS.match(item.name):
            shutil.copy2(item, out / item.name)
    src = REPO_ROOT / "modeling"
    for name in REMOTE_CODE_FILES:
        old = out / name
        if old.is_file() and old.read_bytes() != (src / name).read_bytes():
            logger.warning(
                "%s in %s differs from modeling/%s; releasing the modeling/ version", name, model_dir, name
            )
        shutil.copy2(src / name, old)


def _check_model_folder(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    if "AutoModel" not in (config.get("auto_map") or {}):
        raise ValueError(
            f"{folder}/config.json has no auto_map: not an EntropyASR folder (see save_model_folder)."
        )
    missing = [
        n
        for n in ("generation_config.json", "processor_config.json", *REMOTE_CODE_FILES)
        if not (folder / n).is_file()
    ]
    if missing or not any(folder.glob("model*.safetensors")):
        raise ValueError(f"{folder} is incomplete; missing {missing or ['model.safetensors']}")


# ---- evaluation report -> card metadata ------------------------------------------------------------------
def read_report(path: str | Path, recipe: str | None = None) -> dict[str, Any]:
    """Scores from an evaluation report JSON: {canonical key: value, "dataset": name?, "source": where}.

    Accepts the demo summary ({"recipes": {name: {"final_stage", "stages": {stage: {...}}}}}; `recipe`, else
    "entropy-aware", else the first), or any mapping holding the keys of REPORT_METRICS (or their aliases)
    at any depth; where a key occurs more than once, the occurrence under a "test" key wins, then the
    shallowest. Error rates are fractions."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    source = Path(path).name
    if isinstance(data.get("recipes"), dict) and data["recipes"]:
        recipes = data["recipes"]
        name = recipe or ("entropy-aware" if "entropy-aware" in recipes else next(iter(recipes)))
        if name not in recipes:
            raise KeyError(f"{path}: no recipe {name!r}; it has {sorted(recipes)}")
        stages = recipes[name].get("stages") or {}
        stage = recipes[name].get("final_stage") or (list(stages)[-1] if stages else None)
        source = f"{source}: recipe {name}, stage {stage}"
        data = {**stages.get(stage, {}), "dataset": data.get("dataset")}
    found: dict[str, tuple[tuple[int, int], float]] = {}
    for keys, value in _numeric_leaves(data):
        key = REPORT_ALIASES.get(keys[-1], keys[-1])
        if key in REPORT_METRICS:
            rank = (0 if "test" in keys[:-1] else 1, len(keys))
            if key not in found or rank < found[key][0]:
                found[key] = (rank, float(value))
    scores: dict[str, Any] = {k: v for k, (_, v) in found.items()}
    if isinstance(data.get("dataset"), str):
        scores["dataset"] = data["dataset"]
    scores["source"] = source
    return scores


def _numeric_leaves(obj: Any, keys: tuple = ()) -> Iterable[tuple[tuple, float]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numeric_leaves(v, (*keys, str(k)))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and keys:
        yield keys, obj


# ---- model card -----------------------------------------------------------------------------------------
def usage_snippet(model_id: str) -> str:
    """The card's usage code (Python), runnable as written given a recording `speech.wav`."""
    return f'''from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model="{model_id}", trust_remote_code=True)
# speech.wav: any WAV/FLAC/OGG/MP3 recording (resampled to 16 kHz); decoded with the model's saved options (the
# joint CTC / LLM search)
print(asr("speech.wav")["text"])

# Hotwords (names, places, songs) act where the CTC head hears them; word timestamps come from its alignment;
# return_phonemes adds its greedy phoneme hypothesis.
print(asr("speech.wav", hotwords=["Zhang Wei", "Yellow Submarine"], return_timestamps="word", return_phonemes=True))
# Every decoding option can be given per call: ctc_weight=0 is the LLM's greedy decoding alone.
print(asr("speech.wav", ctc_weight=0)["text"])

# The same decoder with the model and processor directly (batched):
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{model_id}", trust_remote_code=True)
print([r["text"] for r in model.transcribe(["speech.wav", "speech.wav"], processor)])
'''


def _model_summary(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    n_params = 0
    for shard in folder.glob("model*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                n_params += n
    return {
        "encoder": (config.get("encoder_config") or {}).get("model_type", "?"),
        "llm": (config.get("text_config") or {}).get("model_type", "?"),
        "stack_factor": config.get("stack_factor", "?"),
        "max_seconds": config.get("max_audio_seconds", "?"),
        "params_m": n_params / 1e6,
    }


def write_model_card(
    folder: str | Path,
    model_id: str,
    scores: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
    dataset_name: str | None = None,
    space_id: str | None = None,
    metric_id: str | None = None,
) -> Path:
    """README.md with YAML metadata (license, languages, pipeline tag, tags, datasets, model-index from
    `scores`) and a usage section whose code runs as written."""

    folder, scores = Path(folder), dict(scores or {})
    datasets = list(datasets or DEFAULT_DATASETS)
    dataset_name = dataset_name or scores.get("dataset") or DEFAULT_DATASET_NAME
    name = model_id.split("/")[-1]
    results, rows = [], []
    for key, (metric_type, display, percent) in REPORT_METRICS.items():
        if key not in scores:
            continue
        value = round(scores[key] * 100, 2) if percent else round(scores[key], 4)
        rows.append(f"| {display} | {value} |")
        results.append(
            EvalResult(
                task_type="automatic-speech-recognition",
                task_name="Automatic Speech Recognition",
                dataset_type=datasets[0],
                dataset_name=dataset_name,
                dataset_split="test",
                metric_type=metric_type,
                metric_name=display,
                metric_value=value,
            )
        )
    data = ModelCardData(
        model_name=name,
        license="apache-2.0",
        language=["en", "zh"],
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        tags=["speech", "asr", "llm-based-asr", "entropy-allocation", "hotwords", "ctc", "custom_code"],
        datasets=datasets,
        metrics=sorted({r.metric_type for r in results} & {"wer", "cer", "mer"}) or None,  # evaluate ids
        eval_results=results or None,
    )
    info = _model_summary(folder)
    evaluation = (
        f"Test split of {dataset_name} (from `{scores['source']}`):\n\n| Metric | Value |\n|---|---|\n"
        + "\n".join(rows)
        if rows
        else "No evaluation report was given when this card was written "
        "(`entropy-asr push --report REPORT.json` adds one)."
    )
    links = "".join(
        f"\n- {label}: [{rid}](https://huggingface.co/spaces/{rid})"
        for label, rid in (("Demo Space", space_id), ("Entropy-allocation metric", metric_id))
        if rid
    )
    body = f"""
# {name}

An LLM-based speech recogniser for English and Mandarin: a `{info["encoder"]}` speech encoder, a
frame-stacking adaptor ({info["stack_factor"]} frames per LLM position) and a decoder-only `{info["llm"]}`
language model, with a phoneme CTC head on the encoder ({info["params_m"]:.1f}M parameters in all). It was
trained with the entropy-asr recipes, which watch how the work of recognition is split between the encoder
and the LLM ("entropy allocation"). Hotwords can be given as context in the prompt.{links}

## Usage

The model ships its own code (`trust_remote_code=True`): configuration, model, processor and pipeline.

```python
{usage_snippet(model_id).rstrip()}
```

## Evaluation

{evaluation}

Error rates are on normalised text (case, punctuation and full/half-width forms). NSE, PAI and CSAI describe
the encoder's output frames (low NSE = compressed; PAI = phonetic information a linear probe reads; CSAI =
lexical information beyond the phonemes); CKA compares the final encoder with the pretrained one.

## Limitations

- Clips longer than {info["max_seconds"]} s are refused; split long recordings first.
- English and Mandarin only. Like any LLM-based recogniser it can produce fluent text that was not said,
  most often on noise or silence; check the hallucination rates above before relying on it.
- Hotwords act on a clip only where its phoneme CTC head hears them (retrieval, with a few phoneme errors
  tolerated); a name heard by mistake can still be written: compare with and without them on your own clips.
- A no-speech gate (`no_speech_threshold` in config.json, calibrated on dev speech) returns an empty transcript
  when the model would end its turn at once with at least that probability, and a speech-confidence gate
  (`min_speech_confidence`, calibrated alongside) when the phoneme-CTC posteriors are too flat for speech
  (babble, noise); set either to null to turn it off.
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")  # parses the metadata: fails here if malformed
    path = folder / "README.md"
    card.save(path)
    return path


# ---- Space folders --------------------------------------------------------------------------------------
def assemble_space(
    out: str | Path, model_id: str, examples: str | Path | None = None, max_examples: int = 6
) -> Path:
    """space/ (app.py alone: it decodes with the model's own pipeline), with `DEFAULT_MODEL_ID` and the card's `models` set to `model_id`;
    `examples` (a folder of clips, or a corpus folder holding dataset/) adds example clips."""

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(
        REPO_ROOT / "space", out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "flagged")
    )
    app = out / "app.py"
    text, n = re.subn(
        r'^DEFAULT_MODEL_ID = "[^"]*"',
        f"DEFAULT_MODEL_ID = {json.dumps(model_id)}",
        app.read_text(),
        flags=re.M,
    )
    if n != 1:
        raise ValueError("space/app.py must define DEFAULT_MODEL_ID exactly once")
    app.write_text(text, encoding="utf-8")
    card = SpaceCard.load(out / "README.md")
    card.data.models = [model_id]
    card.save(out / "README.md")
    if examples:
        export_examples(examples, out / "examples", max_examples)
    return out


def export_examples(source: str | Path, out: str | Path, max_examples: int = 6) -> int:
    """Copy up to `max_examples` clips (with NAME.hotwords.txt sidecars) from a folder of clips, or write
    them from the test split of a corpus folder made by `entropy-asr make-corpus` (its dataset/)."""
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (source / "dataset").is_dir():
        return _export_corpus_examples(source / "dataset", out, max_examples)
    clips = sorted(p for p in source.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)[:max_examples]
    for clip in clips:
        shutil.copy2(clip, out / clip.name)
        side = clip.with_name(clip.stem + ".hotwords.txt")
        if side.is_file():
            shutil.copy2(side, out / side.name)
    return len(clips)


def _export_corpus_examples(dataset_dir: Path, out: Path, max_examples: int) -> int:
    splits = load_from_disk(str(dataset_dir))
    split = splits["test"] if "test" in splits else splits[next(iter(splits))]
    per_language: dict[str, int] = {}
    written = 0
    for row in split:
        lang = row.get("language") or "xx"
        if written >= max_examples or per_language.get(lang, 0) >= max(1, max_examples // 2):
            continue
        audio = row["audio"]
        wave, sr = sf.read(
            io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio["path"], dtype="float32"
        )
        stem = f"{lang}_{written:02d}"
        sf.write(out / f"{stem}.wav", wave, sr, subtype="PCM_16")
        if row.get("entities"):
            (out / f"{stem}.hotwords.txt").write_text(", ".join(row["entities"]) + "\n", encoding="utf-8")
        per_language[lang] = per_language.get(lang, 0) + 1
        written += 1
    return written


def assemble_metric(metric_dir: str | Path, out: str | Path, metric_id: str | None = None) -> Path:
    """An evaluate metric module folder as a Gradio Space: the script named after the repo (evaluate loads
    `NAME.py` from `USER/NAME`), the card's YAML with sdk/app_file, an app.py and requirements.txt if the
    module has none."""

    metric_dir, out = Path(metric_dir), Path(out)
    script = metric_dir / f"{metric_dir.name}.py"
    if not script.is_file() or not (metric_dir / "README.md").is_file():
        raise FileNotFoundError(
            f"{metric_dir} is not an evaluate module folder (needs {script.name} and README.md)"
        )
    name = (metric_id or metric_dir.name).split("/")[-1]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(
            f"Metric repo name {name!r} must be a Python identifier (evaluate imports {name}.py)"
        )
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(metric_dir, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if name != metric_dir.name:
        (out / script.name).rename(out / f"{name}.py")
    meta = metadata_load(out / "README.md") or {}
    sdk_version = (metadata_load(REPO_ROOT / "space" / "README.md") or {}).get("sdk_version")
    for key, value in (("sdk", "gradio"), ("sdk_version", sdk_version), ("app_file", "app.py")):
        meta.setdefault(key, value)
    meta.setdefault("title", name.replace("_", " ").title())
    metadata_save(out / "README.md", meta)
    if not (out / "app.py").is_file():
        (out / "app.py").write_text(METRIC_APP.replace("{name}", name), encoding="utf-8")
    if not (out / "requirements.txt").is_file():
        (out / "requirements.txt").write_text(METRIC_REQUIREMENTS, encoding="utf-8")
    return out


def assemble_release(
    model_dir: str | Path,
    out: str | Path,
    repo_id: str,
    space_id: str | None = None,
    metric_id: str | None = None,
    report: str | Path | None = None,
    report_recipe: str | None = None,
    datasets: list[str] | None = None,
    dataset_name: str | None = None,
    examples: str | Path | None = None,
    metric_dir: str | Path | None = None,
) -> ReleaseFolders:
    """OUT/model, OUT/space and OUT/metric (the metric is skipped, with a reason, if its folder is absent)."""
    out = Path(out)
    model = assemble_model(model_dir, out / "model")
    scores = read_report(report, report_recipe) if report else None
    write_model_card(model, repo_id, scores, datasets, dataset_name, space_id, metric_id)
    logger.info("model folder: %s", model)
    space = assemble_space(out / "space", repo_id, examples)
    logger.info("Space folder: %s", space)
    metric_dir = Path(metric_dir) if metric_dir else REPO_ROOT / "eval" / "entropy_allocation"
    folders = ReleaseFolders(model=model, space=space, metric=None)
    if metric_dir.is_dir():
        folders.metric = assemble_metric(metric_dir, out / "metric", metric_id)
        logger.info("metric Space folder: %s", folders.metric)
    else:
        folders.skipped["metric"] = f"{metric_dir} does not exist (the evaluation issue has not landed yet)"
        logger.warning("metric Space skipped: %s", folders.skipped["metric"])
    return folders
