"""EntropyASR demo: speech recognition with hotwords and word timestamps, the CTC head's phoneme hypothesis, and
a per-token view of how much of the LLM's uncertainty the audio removed.

Transcripts come from the model's own pipeline, `pipeline("automatic-speech-recognition", model=...,
trust_remote_code=True)`, with the model's saved decoding options (the joint CTC / LLM search): the Space shows
what every other user of the model gets. Runs as a Hugging Face Space (`python app.py` in a Space repo assembled
by `entropy-asr push`: this file alone, no project code) and locally (`entropy-asr space --model DIR_OR_REPO_ID
[--port N]`). The model comes from `ENTROPY_ASR_MODEL` or `DEFAULT_MODEL_ID`; a local folder is loaded without
any network access.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import functools
import logging
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import soundfile as sf
import torch
from matplotlib import font_manager
from matplotlib.figure import Figure
from transformers import pipeline

logger = logging.getLogger(__name__)

# ---- limits and settings (the Space's whole policy in one place) ----------------------------------------
DEFAULT_MODEL_ID = "entropy-asr/entropy-asr-tiny"  # replaced with the pushed model id by `entropy-asr push`
MAX_AUDIO_SECONDS = 30.0  # longer clips are refused (the model's own limit applies if it is lower)
MAX_UPLOAD_MB = 10  # uploads above this are rejected by the server before they reach the model
QUEUE_MAX_SIZE = 32  # requests waiting beyond this are told the queue is full instead of piling up
CONCURRENCY_LIMIT = 1  # requests the model serves at once; the rest wait in the queue
SILENCE_DBFS = -50.0  # a clip whose loudest 20 ms frame is below this level counts as silence
SILENCE_FRAME_SECONDS = 0.02
MAX_HOTWORDS = 32
MAX_HOTWORD_CHARS = 64
# Hotwords act on a clip when the CTC head hears them (retrieval), through a score bonus for the tokens that
# continue one and, if asked, the prompt's context; the controls start at the model's saved decoding options.
MAX_HOTWORD_BIAS = 20.0
MAX_PLOT_TOKENS = 120  # the entropy plot shows at most this many transcript tokens
LIVE_CHUNK_SECONDS = 0.64  # the live tab: microphone audio sent (and decoded again) every this many seconds
LIVE_MAX_SECONDS = 120  # the live tab: a recording stops streaming after this long
AUDIO_FORMATS = "WAV, FLAC, OGG or MP3"
HERE = Path(__file__).resolve().parent
EXAMPLE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")

CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
)
# Without a CJK font (packages.txt installs one on the Space) Chinese tokens render as boxes; say so once.
warnings.filterwarnings("once", message=r"Glyph \d+ .* missing from font")


@dataclass
class Result:
    """Everything one request returns; `as_outputs` orders it for the Gradio outputs."""

    transcript: str = ""
    phonemes: str = ""
    words: list = field(default_factory=list)  # [[word, start, end], ...] (seconds)
    figure: Any = None
    duration_s: float | None = None
    processing_s: float | None = None
    note: str = ""
    prompt: str = ""
    entropy: dict = field(default_factory=dict)

    def as_outputs(self) -> tuple:
        return (
            self.transcript,
            self.words,
            self.phonemes,
            self.figure,
            self.duration_s,
            self.processing_s,
            self.note,
            self.prompt,
            self.entropy or None,
        )


def check_bias(bias: float | None) -> float:
    """The hotword bias of a request (the slider checks its range; `DemoBackend.run` can be called directly)."""
    bias = 0.0 if bias is None else float(bias)
    if not 0.0 <= bias <= MAX_HOTWORD_BIAS:  # also refuses NaN
        raise gr.Error(f"Hotword bias must be between 0 and {MAX_HOTWORD_BIAS:g}; got {bias:g}.")
    return bias


def loudest_frame_dbfs(wave: np.ndarray, sampling_rate: int) -> float:
    """Level (dBFS) of the loudest SILENCE_FRAME_SECONDS frame, DC removed; -inf for digital silence."""
    wave = wave.astype(np.float64) - float(wave.mean())
    frame = max(1, int(SILENCE_FRAME_SECONDS * sampling_rate))
    n = len(wave) // frame * frame
    frames = wave[:n].reshape(-1, frame) if n else wave.reshape(1, -1)
    peak_rms = float(np.sqrt((frames**2).mean(axis=1)).max())
    return 20 * np.log10(peak_rms) if peak_rms > 0 else float("-inf")


def probe_audio(path: str, max_seconds: float = MAX_AUDIO_SECONDS):
    """Read only the file's header: a readable error for a non-audio or damaged file, and the duration
    limit enforced before anything is decoded. Returns soundfile's info (frames, samplerate, duration)."""
    try:
        info = sf.info(path)
    except Exception as err:  # noqa: BLE001 - every decoder failure becomes one readable message
        reason = getattr(err, "error_string", None) or "unknown or damaged format"
        raise gr.Error(
            f"Could not read {Path(path).name!r} as audio ({reason.strip().rstrip('.')}). "
            f"Upload a {AUDIO_FORMATS} recording.",
            title="Unreadable audio file",
        ) from err
    check_duration(info.duration, max_seconds)
    return info


def check_duration(seconds: float, limit: float = MAX_AUDIO_SECONDS) -> None:
    if seconds > limit:
        raise gr.Error(
            f"The audio is {seconds:.1f} s long; this demo accepts at most {limit:g} s. "
            "Trim it or split it into shorter clips.",
            title="Audio too long",
        )


@functools.lru_cache(maxsize=1)
def _font_family() -> tuple[str, ...]:
    """DejaVu Sans for Latin text, then any installed CJK font as a fallback for Chinese tokens."""

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(name for name in CJK_FONTS if name in installed))


def entropy_figure(entropy: dict):
    """Bars of per-token LLM entropy (bits) with and without the audio in the prompt."""

    tokens = entropy["tokens"][:MAX_PLOT_TOKENS]
    with_audio = np.asarray(entropy["entropy_with_audio"][: len(tokens)])
    without = np.asarray(entropy["entropy_without_audio"][: len(tokens)])
    x = np.arange(len(tokens))
    width = max(6.0, min(16.0, 0.35 * len(tokens) + 2))  # inches
    fig = Figure(figsize=(width, 3.4))
    left, right = 0.75 / width, 1 - 0.15 / width
    rotate = len(tokens) > 12
    fig.subplots_adjust(left=left, right=right, top=0.78, bottom=0.3 if rotate else 0.14)  # fixed: one draw
    ax = fig.add_subplot()
    ax.bar(x - 0.2, without, width=0.4, label="without audio (text prior)", color="#b0b0b0")
    ax.bar(x + 0.2, with_audio, width=0.4, label="with audio", color="#2b6cb0")
    labels = [t.strip() or "\u2423" for t in tokens]  # a bare space shows as ␣
    step = max(1, len(tokens) // 60)
    ax.set_xticks(
        x[::step],
        labels[::step],
        rotation=60 if rotate else 0,
        fontsize=8,
        fontfamily=_font_family(),
    )
    ax.set_ylabel("entropy (bits)")
    ax.set_ylim(0, max(1.0, float(np.max(np.concatenate([with_audio, without])))) * 1.08)
    removed = round(entropy["mean_without_audio"] - entropy["mean_with_audio"], 2) + 0.0  # no "-0.00"
    fig.suptitle(
        f"The audio removed {removed:.2f} bits per token (mean {entropy['mean_with_audio']:.2f} with it, "
        f"{entropy['mean_without_audio']:.2f} without)",
        x=left,
        y=0.97,
        ha="left",
        fontsize=10,
    )
    fig.legend(fontsize=8, ncols=2, loc="upper right", bbox_to_anchor=(right, 0.9), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


class DemoBackend:
    """The request logic, independent of the UI: audio checks, transcription by the model's pipeline, the entropy
    view, timing."""

    def __init__(self, recognizer, model_id: str = ""):
        self.recognizer = recognizer  # the model's `pipeline("automatic-speech-recognition", ...)`
        self.model, self.processor = recognizer.model, recognizer.processor
        self.model_id = model_id
        self.max_seconds = min(MAX_AUDIO_SECONDS, float(getattr(self.processor, "max_audio_seconds", 1e9)))
        self.defaults = self.model.decoding_options()  # the model's saved decoding options

    def hotwords(self, text: str | None) -> list[str]:
        """'Zhang Wei, 稻香；Yellow Submarine' -> ['Zhang Wei', '稻香', 'Yellow Submarine'], split as the model's
        decoding options split them, within the Space's limits."""

        words = list(replace(self.defaults, hotwords=text or "", prompt_hotwords=True).hotwords)
        if len(words) > MAX_HOTWORDS:
            raise gr.Error(f"At most {MAX_HOTWORDS} hotwords are accepted; got {len(words)}.")
        too_long = [w for w in words if len(w) > MAX_HOTWORD_CHARS]
        if too_long:
            raise gr.Error(
                f"Hotwords are limited to {MAX_HOTWORD_CHARS} characters each: {too_long[0][:80]!r}."
            )
        return words

    def run(
        self,
        audio_path: str | None,
        hotwords: str | None = None,
        bias: float | None = None,
        in_prompt: bool | None = None,
        heard_only: bool | None = None,
    ) -> Result:
        """`bias`: score bonus for the tokens that continue one of the clip's hotwords; `in_prompt`: they also go
        into the prompt's context; `heard_only`: a clip's hotwords are those its phonemes were heard to contain
        (retrieval), else every one listed (None: the model's defaults for all three)."""
        start = time.perf_counter()
        words = self.hotwords(hotwords)
        bias = self.defaults.hotword_bonus if bias is None else check_bias(bias)
        in_prompt = self.defaults.prompt_hotwords if in_prompt is None else bool(in_prompt)
        heard_only = self.defaults.hotword_retrieval if heard_only is None else bool(heard_only)
        result = Result(prompt=self.processor.build_prompt(None))
        if not audio_path:
            result.note = "No audio: record with the microphone or upload a file, then press Transcribe."
            return self._finish(result, start)
        if words and not in_prompt and bias == 0:
            raise gr.Error(
                "With the hotword bias at 0 and the hotwords kept out of the prompt they would do nothing: "
                "raise the bias or tick 'Hotwords in the prompt too'.",
                title="Hotwords unused",
            )
        info = probe_audio(audio_path, self.max_seconds)
        result.duration_s = round(info.frames / info.samplerate, 3)
        if info.frames == 0:
            result.note = "The recording is empty (0 samples): nothing to transcribe."
            return self._finish(result, start)
        min_samples = self.processor.min_audio_samples()
        if info.frames * self.processor.sampling_rate / info.samplerate < min_samples:
            result.note = (
                f"The recording is too short to hold speech ({result.duration_s * 1000:.0f} ms; the model needs "
                f"at least {min_samples * 1000 / self.processor.sampling_rate:.0f} ms): nothing to transcribe."
            )
            return self._finish(result, start)
        try:  # decoded and resampled as the pipeline does with a path
            wave16 = self.processor.prepare_audio(audio_path)
        except ValueError as err:  # the processor's AudioInputError: damaged data, NaN samples, ...
            message = str(err).replace(audio_path, Path(audio_path).name)  # no server paths in messages
            raise gr.Error(message, title="Audio not usable") from err
        level = loudest_frame_dbfs(wave16.numpy(), self.processor.sampling_rate)
        if level < SILENCE_DBFS:
            result.note = (
                f"No speech detected: the loudest part of the clip is {level:.0f} dBFS, below the "
                f"{SILENCE_DBFS:g} dBFS silence threshold. Nothing was sent to the model."
            )
            return self._finish(result, start)
        has_ctc = bool(self.processor.ctc_vocab)  # timestamps and phonemes come from the CTC head
        options = {"return_timestamps": "word" if has_ctc else False, "return_phonemes": has_ctc}
        if words:
            options.update(
                hotwords=words, hotword_bonus=bias, prompt_hotwords=in_prompt, hotword_retrieval=heard_only
            )
        try:
            out = self.recognizer(wave16, **options)
        except ValueError as err:  # an option this model cannot take (e.g. retrieval without a phoneme head)
            raise gr.Error(str(err), title="Not possible with this model") from err
        result.transcript, result.phonemes = out["text"], out.get("phonemes", "")
        result.words = [
            [chunk["text"], *chunk["timestamp"]]
            for chunk in out.get("chunks", ())
            if chunk["timestamp"][0] is not None
        ]
        context = (out.get("hotwords") or None) if in_prompt else None
        result.prompt = self.processor.build_prompt(context)
        if words and heard_only:
            heard = ", ".join(out.get("hotwords") or []) or "none"
            result.note = f"Hotwords heard in the clip (the ones that acted on it): {heard}."
        if not result.transcript:
            result.note = self._no_text_note(wave16)
            return self._finish(result, start)
        try:
            result.entropy = self.model.token_entropies(self.processor, wave16, result.transcript, context)
            result.figure = entropy_figure(result.entropy)
        except Exception:  # the transcript stands even if the analysis view fails
            logger.exception("entropy view failed")
            result.note = "The entropy view could not be computed for this clip (see the server log)."
        return self._finish(result, start)

    def live(self, chunk, session):
        """One microphone chunk of the live tab ((rate, samples) as the browser sends them) into the recording's
        streaming session (`model.stream`, the model's own decoder and options; a new one for a new recording):
        (the partial transcript, the session)."""
        if session is None or session.result is not None:
            session = self.model.stream(self.processor, chunk_seconds=LIVE_CHUNK_SECONDS)
        if chunk is None:
            return session.partial, session
        rate, samples = chunk
        try:
            return session.push(samples, int(rate)), session
        except ValueError as err:  # the processor's AudioInputError: a rate change, NaN samples, ...
            raise gr.Error(str(err), title="Audio not usable") from err

    @staticmethod
    def live_end(session):
        """The recording stopped: its final transcript (the whole recording decoded once more)."""
        if session is None or session.result is not None:
            return (session.partial if session is not None else ""), None
        return session.finish(), None

    def _no_text_note(self, wave16) -> str:
        """Why the transcript is empty: the model's no-speech gate, its speech-confidence gate, or the model
        ending its turn by itself."""
        model = self.model
        inputs = self.processor(audio=[wave16]).to(model.device)
        gate = getattr(model.config, "no_speech_threshold", None)
        if gate is not None and hasattr(model, "no_speech_probability"):
            p = float(model.no_speech_probability(**inputs)[0])
            if p >= gate:
                return (
                    f"No speech detected by the model: it gives ending its turn at once a probability of {p:.3f}, "
                    f"at or above its no-speech gate ({gate:.3f}), so the transcript is empty."
                )
        least = getattr(model.config, "min_speech_confidence", None)
        if least is not None and hasattr(model, "speech_confidence"):
            c = float(model.speech_confidence(**inputs)[0])
            if c < least:
                return (
                    f"No speech detected by the encoder: its phoneme posteriors have a confidence of {c:.3f}, "
                    f"below its speech-confidence gate ({least:.3f}), so the transcript is empty."
                )
        return "The model produced no text for this clip."

    @staticmethod
    def _finish(result: Result, start: float) -> Result:
        result.processing_s = round(time.perf_counter() - start, 3)
        return result


def find_examples(folder: str | Path | None) -> list[list[str]]:
    """[[audio_path, hotwords], ...] from a folder of clips; `NAME.hotwords.txt` beside a clip gives its
    hotwords (one per line or comma-separated)."""
    if not folder or not Path(folder).is_dir():
        return []
    examples = []
    for clip in sorted(Path(folder).iterdir()):
        if clip.suffix.lower() in EXAMPLE_SUFFIXES:
            side = clip.with_name(clip.stem + ".hotwords.txt")
            words = side.read_text(encoding="utf-8").strip().replace("\n", ", ") if side.is_file() else ""
            examples.append([str(clip), words])
    return examples


def build_demo(backend: DemoBackend, examples_dir: str | Path | None = None) -> gr.Blocks:
    """The Blocks UI. Call `.queue(...)`/`.launch(...)` through `launch` to get the Space's limits."""

    def on_transcribe(audio_path, hotwords, bias, in_prompt, heard_only):
        return backend.run(audio_path, hotwords, bias, in_prompt, heard_only).as_outputs()

    with gr.Blocks(title="EntropyASR", analytics_enabled=False) as demo:
        gr.Markdown(
            "# EntropyASR: speech recognition with hotwords, word timestamps and an entropy view\n"
            f"Model `{backend.model_id}`. English and Mandarin; up to {backend.max_seconds:g} s per clip, "
            f"uploads up to {MAX_UPLOAD_MB} MB ({AUDIO_FORMATS}). Transcripts come from the model's pipeline "
            "(its joint CTC / LLM search). Hotwords (names, places, songs) act on a clip when its phonemes are "
            "heard in it: they are favoured while decoding by the hotword bias, and can go into the prompt's "
            "context too. The plot shows, for every transcript token, the LLM's uncertainty with the audio and "
            "without it: the gap is what the audio contributed."
        )
        with gr.Tab("Transcribe a clip", elem_id="clip-tab"):
            with gr.Row():
                with gr.Column(scale=1):
                    audio = gr.Audio(
                        sources=["upload", "microphone"],
                        type="filepath",
                        label="Speech",
                        buttons=["download"],
                        elem_id="audio-input",
                    )
                    hotwords = gr.Textbox(
                        label="Hotwords (optional, comma-separated)",
                        placeholder="e.g. Zhang Wei, Yellow Submarine, 稻香",
                        elem_id="hotwords",
                    )
                    bias = gr.Slider(
                        0.0,
                        MAX_HOTWORD_BIAS,
                        value=backend.defaults.hotword_bonus,
                        step=0.5,
                        label="Hotword bias",
                        info="Added to the score of tokens that continue a hotword (0 needs the box below ticked)",
                        elem_id="hotword-bias",
                    )
                    in_prompt = gr.Checkbox(
                        value=backend.defaults.prompt_hotwords,
                        label="Hotwords in the prompt too",
                        info="For a model that context SFT taught to read its prompt",
                        elem_id="hotwords-in-prompt",
                    )
                    heard_only = gr.Checkbox(
                        value=backend.defaults.hotword_retrieval,
                        label="Only hotwords heard in the clip",
                        info="A hotword acts only where the phoneme CTC head hears it (retrieval); off: every hotword "
                        "acts everywhere, and may be written where it was not said",
                        elem_id="hotwords-heard-only",
                    )
                    button = gr.Button("Transcribe", variant="primary", elem_id="transcribe-button")
                    examples = find_examples(examples_dir)
                    if examples:
                        gr.Examples(examples=examples, inputs=[audio, hotwords], cache_examples=False)
                with gr.Column(scale=1):
                    transcript = gr.Textbox(label="Transcript", lines=3, elem_id="transcript")
                    words = gr.Dataframe(
                        headers=["word", "start (s)", "end (s)"],
                        datatype=["str", "number", "number"],
                        label="Word timestamps (the CTC head's alignment of the transcript)",
                        interactive=False,
                        elem_id="word-timestamps",
                    )
                    phonemes = gr.Textbox(
                        label="Phoneme hypothesis (CTC head, greedy)", lines=2, elem_id="phonemes"
                    )
                    with gr.Row():
                        duration = gr.Number(None, label="Duration (s)", precision=2, elem_id="duration")
                        processing = gr.Number(
                            None, label="Processing time (s)", precision=2, elem_id="processing"
                        )
                    note = gr.Markdown(elem_id="note")
            plot = gr.Plot(  # the figure carries its own title; a floating label would cover it
                label="Per-token LLM entropy with vs without the audio",
                show_label=False,
                format="png",
                elem_id="entropy-plot",
            )
            with gr.Accordion("Details: prompt and entropy values", open=False):
                prompt = gr.Textbox(label="Prompt sent to the LLM (<speech> = the audio positions)", lines=4)
                entropy = gr.JSON(label="Entropy per token (bits)")
            button.click(
                on_transcribe,
                inputs=[audio, hotwords, bias, in_prompt, heard_only],
                outputs=[transcript, words, phonemes, plot, duration, processing, note, prompt, entropy],
                api_name="transcribe",
            )
        with gr.Tab("Live (microphone)", elem_id="live-tab"):
            gr.Markdown(
                f"Speak: the transcript updates every {LIVE_CHUNK_SECONDS:g} s while you talk (words the model has "
                "settled stay; the last ones may still change), and is decoded once more as a whole when you stop."
            )
            mic = gr.Audio(
                sources=["microphone"], streaming=True, type="numpy", label="Microphone", elem_id="live-audio"
            )
            live_text = gr.Textbox(label="Transcript", lines=3, elem_id="live-transcript")
            session = gr.State(None)
            mic.stream(
                backend.live,
                inputs=[mic, session],
                outputs=[live_text, session],
                stream_every=LIVE_CHUNK_SECONDS,
                time_limit=LIVE_MAX_SECONDS,
                api_name="live",
            )
            mic.stop_recording(
                backend.live_end, inputs=[session], outputs=[live_text, session], api_name=False
            )
    return demo


def load_backend(model: str, device: str | None = None) -> DemoBackend:
    """The model's pipeline from a model folder (no network) or Hub id."""

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    local = Path(model).is_dir()
    logger.info("loading %s %s on %s", "local folder" if local else "Hub model", model, device)
    source = str(Path(model).resolve()) if local else model
    recognizer = pipeline("automatic-speech-recognition", model=source, trust_remote_code=True, device=device)
    return DemoBackend(recognizer, model_id=model)


def launch(
    model: str | None = None,
    port: int | None = None,
    host: str | None = None,
    examples_dir: str | Path | None = None,
    block: bool = True,
    backend: DemoBackend | None = None,
) -> gr.Blocks:
    """Build and launch the Space with its queue and upload limits. `block=False` returns once serving."""
    model = model or os.environ.get("ENTROPY_ASR_MODEL") or DEFAULT_MODEL_ID
    backend = backend or load_backend(model)
    examples_dir = examples_dir or os.environ.get("ENTROPY_ASR_EXAMPLES") or HERE / "examples"
    demo = build_demo(backend, examples_dir)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=CONCURRENCY_LIMIT)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=f"{MAX_UPLOAD_MB}mb",
        allowed_paths=[str(examples_dir)] if Path(examples_dir).is_dir() else None,
        prevent_thread_lock=not block,
        footer_links=["api"],
        quiet=not block,
    )
    return demo


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launch()
