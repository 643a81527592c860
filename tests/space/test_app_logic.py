"""The app's request logic without a server: hotword parsing, the silence threshold, example discovery, the
entropy figure, and the `entropy-asr space` command's wiring."""

from __future__ import annotations

import argparse

import gradio as gr
import numpy as np
import pytest

from space import app


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", []),
        (None, []),
        ("Zhang Wei", ["Zhang Wei"]),
        (
            "Zhang Wei, 稻香；Yellow  Submarine\n张伟、Zhang Wei",
            ["Zhang Wei", "稻香", "Yellow Submarine", "张伟"],
        ),
        (" , ;\n ", []),
    ],
)
def test_hotwords_are_split_as_the_models_options_split_them(text, words, tiny_pipeline):
    assert app.DemoBackend(tiny_pipeline).hotwords(text) == words


def test_hotword_limits_are_errors_not_truncation(tiny_pipeline):
    backend = app.DemoBackend(tiny_pipeline)
    backend.hotwords(", ".join(f"w{i}" for i in range(app.MAX_HOTWORDS)))
    with pytest.raises(gr.Error, match=f"At most {app.MAX_HOTWORDS} hotwords"):
        backend.hotwords(", ".join(f"w{i}" for i in range(app.MAX_HOTWORDS + 1)))
    with pytest.raises(gr.Error, match=f"limited to {app.MAX_HOTWORD_CHARS} characters"):
        backend.hotwords("x" * (app.MAX_HOTWORD_CHARS + 1))


@pytest.mark.parametrize("dbfs", [-60.0, -40.0, -20.0, -6.0])
def test_loudest_frame_level_of_a_sine(dbfs):
    sr = 16000
    t = np.arange(sr) / sr
    amplitude = np.sqrt(2) * 10 ** (dbfs / 20)  # a sine's RMS is amplitude / sqrt(2)
    wave = np.zeros(3 * sr)
    wave[sr : 2 * sr] = amplitude * np.sin(2 * np.pi * 200 * t)  # one loud second inside silence
    assert app.loudest_frame_dbfs(wave, sr) == pytest.approx(dbfs, abs=0.05)


def test_silence_threshold_boundary():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(16000)
    noise /= np.sqrt((noise**2).mean())
    below = noise * 10 ** ((app.SILENCE_DBFS - 3) / 20)
    above = noise * 10 ** ((app.SILENCE_DBFS + 6) / 20)
    assert app.loudest_frame_dbfs(below, 16000) < app.SILENCE_DBFS
    assert app.loudest_frame_dbfs(above, 16000) > app.SILENCE_DBFS
    assert app.loudest_frame_dbfs(np.zeros(100), 16000) == float("-inf")
    assert app.loudest_frame_dbfs(np.full(16000, 0.5), 16000) == float("-inf")  # DC offset is not sound


def test_find_examples(tmp_path):
    (tmp_path / "b.wav").write_bytes(b"")
    (tmp_path / "a.flac").write_bytes(b"")
    (tmp_path / "a.hotwords.txt").write_text("Zhang Wei\n稻香\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("ignored")
    assert app.find_examples(tmp_path) == [
        [str(tmp_path / "a.flac"), "Zhang Wei, 稻香"],
        [str(tmp_path / "b.wav"), ""],
    ]
    assert app.find_examples(tmp_path / "missing") == []
    assert app.find_examples(None) == []


def test_entropy_figure_bars_match_the_values():
    entropy = {
        "tokens": [" call", " john", "<|im_end|>"],
        "entropy_with_audio": [1.0, 0.5, 0.25],
        "entropy_without_audio": [4.0, 6.0, 2.0],
        "mean_with_audio": 0.5833,
        "mean_without_audio": 4.0,
    }
    fig = app.entropy_figure(entropy)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == [4.0, 6.0, 2.0, 1.0, 0.5, 0.25]  # without-audio bars first, then with-audio
    assert [t.get_text() for t in ax.get_xticklabels()] == ["call", "john", "<|im_end|>"]
    assert "removed 3.42 bits per token" in fig._suptitle.get_text()  # noqa: SLF001


def test_space_command_passes_its_arguments(monkeypatch):
    from training.commands import space as command

    seen = {}
    monkeypatch.setattr(app, "launch", lambda **kw: seen.update(kw))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--model", "some/model", "--port", "7999", "--examples", "ex"])
    assert command.run(args) == 0
    assert seen == {
        "model": "some/model",
        "port": 7999,
        "host": "127.0.0.1",
        "examples_dir": "ex",
        "block": True,
    }


def test_an_empty_transcript_says_when_the_no_speech_gate_made_it(
    tmp_path, monkeypatch, tiny_model_and_processor, tiny_pipeline
):
    import soundfile as sf

    from tests.conftest import synth_clip

    model, processor = tiny_model_and_processor
    backend = app.DemoBackend(tiny_pipeline)
    path = tmp_path / "clip.wav"
    clip = synth_clip(1.5, seed=5)
    sf.write(path, clip, 16000)
    p = float(model.no_speech_probability(**processor(audio=[processor.prepare_audio(str(path))]))[0])
    monkeypatch.setattr(
        model.config, "no_speech_threshold", p * 0.999
    )  # the clip is just at or above the gate
    result = backend.run(str(path))
    assert result.transcript == ""
    assert "no-speech gate" in result.note and f"{p:.3f}" in result.note
    monkeypatch.setattr(
        model.config, "no_speech_threshold", min(1.0, p * 1.5)
    )  # below the gate: text as usual
    assert backend.run(str(path)).transcript.strip()


def test_an_empty_transcript_says_when_the_speech_confidence_gate_made_it(
    tmp_path, monkeypatch, tiny_model_and_processor, tiny_pipeline
):
    import soundfile as sf

    from tests.conftest import synth_clip

    model, processor = tiny_model_and_processor
    backend = app.DemoBackend(tiny_pipeline)
    path = tmp_path / "clip.wav"
    sf.write(path, synth_clip(1.5, seed=5), 16000)
    c = float(model.speech_confidence(**processor(audio=[processor.prepare_audio(str(path))]))[0])
    monkeypatch.setattr(model.config, "no_speech_threshold", None)
    monkeypatch.setattr(model.config, "min_speech_confidence", c * 1.001)  # just above the clip's confidence
    result = backend.run(str(path))
    assert result.transcript == ""
    assert "speech-confidence gate" in result.note and f"{c:.3f}" in result.note
    monkeypatch.setattr(model.config, "min_speech_confidence", c * 0.999)  # the clip passes: text as usual
    assert backend.run(str(path)).transcript.strip()


@pytest.mark.parametrize("bad", [-0.5, float("nan"), app.MAX_HOTWORD_BIAS + 1])
def test_out_of_range_hotword_bias_is_refused(bad):
    with pytest.raises(gr.Error, match="Hotword bias must be between 0 and"):
        app.check_bias(bad)


def test_the_controls_reach_the_pipeline_only_with_hotwords(tmp_path, monkeypatch, tiny_pipeline):
    import soundfile as sf

    from tests.conftest import synth_clip

    calls = []
    model = tiny_pipeline.model
    real = type(model).transcribe
    monkeypatch.setattr(
        type(model), "transcribe", lambda self, *a, **k: calls.append(k) or real(self, *a, **k)
    )
    backend = app.DemoBackend(tiny_pipeline)
    path = tmp_path / "clip.wav"
    sf.write(path, synth_clip(1.5, seed=5), 16000)
    backend.run(str(path), "stop here", 7.5, in_prompt=True, heard_only=False)
    backend.run(str(path), "", 7.5)
    backend.run(str(path), "stop here")  # the UI's defaults: the model's own
    defaults = model.decoding_options()
    assert calls[0]["hotword_bonus"] == 7.5 and calls[0]["prompt_hotwords"] is True
    assert calls[0]["hotword_retrieval"] is False and calls[0]["hotwords"] == ["stop here"]
    assert "hotwords" not in calls[1] and "hotword_bonus" not in calls[1]
    assert (calls[2]["hotword_bonus"], calls[2]["prompt_hotwords"], calls[2]["hotword_retrieval"]) == (
        defaults.hotword_bonus,
        defaults.prompt_hotwords,
        defaults.hotword_retrieval,
    )
    assert all(k["return_timestamps"] == "word" for k in calls)
    with pytest.raises(gr.Error, match="they would do nothing"):
        backend.run(str(path), "stop here", 0.0, in_prompt=False)


def test_the_live_tab_streams_a_recording_and_ends_with_the_pipelines_transcript(tiny_pipeline):
    """The browser's microphone chunks (int16 at 48 kHz, as gradio sends them) go into one streaming session per
    recording; when the recording stops, the transcript is the pipeline's for the whole recording."""
    from tests.conftest import synth_clip

    backend = app.DemoBackend(tiny_pipeline)
    recording = np.round(synth_clip(2.6, seed=3, sr=48000) * 20000).astype(np.int16)
    step, session, partials = int(app.LIVE_CHUNK_SECONDS * 48000), None, []
    for at in range(0, recording.size, step):
        partial, session = backend.live((48000, recording[at : at + step]), session)
        partials.append(partial)
    assert len(session.decodes) == len(partials) - 1  # one decode per full chunk; the short last one waits
    final, ended = backend.live_end(session)
    assert ended is None and session.result is not None
    assert final == tiny_pipeline({"array": recording, "sampling_rate": 48000})["text"]
    again, fresh = backend.live((48000, recording[:step]), session)  # a new recording: a new session
    assert fresh is not session and fresh.seconds == pytest.approx(app.LIVE_CHUNK_SECONDS)
    with pytest.raises(gr.Error, match="push every chunk at that rate"):
        backend.live((16000, recording[:step]), fresh)
    assert backend.live_end(None) == ("", None)
