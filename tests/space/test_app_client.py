"""End to end through gradio_client against the app on 127.0.0.1: transcripts equal the model's pipeline's, with
word timestamps; hotwords reach the model's prompt, silence and empty recordings give an empty transcript and a note, and
over-long, damaged or oversized uploads are refused with messages that say why."""

from __future__ import annotations

import os

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from space import app
from tests.conftest import synth_clip
from tests.space.conftest import write_wave

OUTPUTS = ("transcript", "words", "phonemes", "plot", "duration", "processing", "note", "prompt", "entropy")


def predict(
    client, path, hotwords: str = "", bias: float = 0.0, in_prompt: bool = True, heard_only: bool = False
) -> dict:
    out = client.predict(
        handle_file(str(path)), hotwords, bias, in_prompt, heard_only, api_name="/transcribe"
    )
    return dict(zip(OUTPUTS, out))


def expected(space_server, path, **options) -> dict:
    """What the model's own pipeline gives for the clip, with the Space's outputs asked for."""
    return space_server.backend.recognizer(
        str(path), return_timestamps="word", return_phonemes=True, **options
    )


def test_startup_made_no_network_access(space_server):
    assert space_server.attempts == []
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert space_server.demo.analytics_enabled is False


def test_queue_is_bounded(space_server):
    assert space_server.demo._queue.max_size == app.QUEUE_MAX_SIZE  # noqa: SLF001
    assert app.QUEUE_MAX_SIZE >= 20  # the concurrency test below must fit


def test_clip_transcribes_like_the_pipeline_with_word_timestamps(client, space_server, clips):
    backend = space_server.backend
    pipeline_out = expected(space_server, clips["nav"])
    out = predict(client, clips["nav"])
    assert out["transcript"] == pipeline_out["text"] and out["transcript"]
    assert out["phonemes"] == pipeline_out["phonemes"]
    stamped = [[c["text"], *c["timestamp"]] for c in pipeline_out["chunks"] if c["timestamp"][0] is not None]
    assert out["words"]["data"] == stamped and stamped
    starts = [row[1] for row in stamped]
    assert starts == sorted(starts) and all(row[1] <= row[2] for row in stamped)
    import soundfile as sf

    assert out["duration"] == pytest.approx(sf.info(str(clips["nav"])).duration, abs=0.01)
    assert 0 < out["processing"] < 120
    assert out["note"] == ""
    assert out["plot"]["type"] == "matplotlib" and out["plot"]["plot"].startswith("data:image/")
    wave = backend.processor.prepare_audio(str(clips["nav"]))
    entropy = backend.model.token_entropies(backend.processor, wave, pipeline_out["text"])
    assert out["entropy"]["tokens"] == entropy["tokens"]
    np.testing.assert_allclose(out["entropy"]["entropy_with_audio"], entropy["entropy_with_audio"], atol=1e-4)
    np.testing.assert_allclose(
        out["entropy"]["entropy_without_audio"], entropy["entropy_without_audio"], atol=1e-4
    )


def test_hotwords_reach_the_prompt(client, space_server, clips):
    spy = space_server.spy
    spy.calls.clear()
    out = predict(client, clips["call"], "John Smith， 稻香; Yellow Submarine")
    words = ["John Smith", "稻香", "Yellow Submarine"]
    # transcription (1st prompt) and the with-audio entropy pass (2nd) both carried the hotwords to the model
    assert [c["context"] for c in spy.calls] == [[words], [words]]
    for call in spy.calls:
        assert "Contextual hints: John Smith, 稻香, Yellow Submarine." in call["prompt"]
    assert "Contextual hints: John Smith, 稻香, Yellow Submarine." in out["prompt"]
    options = {"hotwords": words, "hotword_bonus": 0.0, "prompt_hotwords": True, "hotword_retrieval": False}
    assert out["transcript"] == expected(space_server, clips["call"], **options)["text"]

    spy.calls.clear()
    predict(client, clips["call"], "")
    assert spy.calls[0]["context"] is None and "Contextual hints" not in spy.calls[0]["prompt"]


def test_hotwords_act_only_where_heard_by_default(client, space_server, clips):
    """With retrieval (the model's default) a hotword the CTC head does not hear in the clip does nothing: not
    in the prompt, not biased; the note says which were heard."""
    spy = space_server.spy
    spy.calls.clear()
    defaults = space_server.backend.defaults
    out = predict(client, clips["call"], "stop here", defaults.hotword_bonus, True, True)
    assert "Hotwords heard in the clip (the ones that acted on it): none." in out["note"]
    assert not any("Contextual hints" in c["prompt"] for c in spy.calls)
    assert out["transcript"] == predict(client, clips["call"])["transcript"]


def test_hotword_bias_steers_the_transcript_towards_the_hotwords(client, space_server, clips):
    # the random tiny model never writes "stop here" by itself; a strong bias makes it
    plain = predict(client, clips["call"], "stop here")["transcript"]
    assert not plain.startswith("stop here")
    out = predict(client, clips["call"], "stop here", 20.0)
    options = {
        "hotwords": ["stop here"],
        "hotword_bonus": 20.0,
        "prompt_hotwords": True,
        "hotword_retrieval": False,
    }
    assert out["transcript"] == expected(space_server, clips["call"], **options)["text"]
    assert out["transcript"].startswith("stop here")
    # without hotwords the bias has nothing to favour
    no_hotwords = predict(client, clips["call"], "", 20.0)["transcript"]
    assert no_hotwords == predict(client, clips["call"])["transcript"]
    # the API refuses what the slider cannot send (the slider's own check); the defaults are the model's
    with pytest.raises(AppError, match="less than minimum value"):
        predict(client, clips["call"], "stop here", -1.0)
    with pytest.raises(AppError, match="greater than maximum value"):
        predict(client, clips["call"], "stop here", app.MAX_HOTWORD_BIAS + 1)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/transcribe"]
    defaults = space_server.backend.defaults
    assert api["parameters"][2]["parameter_default"] == defaults.hotword_bonus
    assert api["parameters"][3]["parameter_default"] is defaults.prompt_hotwords
    assert api["parameters"][4]["parameter_default"] is defaults.hotword_retrieval is True


def test_hotwords_can_act_through_the_bias_alone(client, space_server, clips):
    spy = space_server.spy
    spy.calls.clear()
    out = predict(client, clips["call"], "stop here", 20.0, in_prompt=False)
    # neither the transcription nor the entropy pass put the hotwords in the prompt
    assert len(spy.calls) == 2 and not any("Contextual hints" in c["prompt"] for c in spy.calls)
    assert "Contextual hints" not in out["prompt"]
    options = {
        "hotwords": ["stop here"],
        "hotword_bonus": 20.0,
        "prompt_hotwords": False,
        "hotword_retrieval": False,
    }
    reference = expected(space_server, clips["call"], **options)["text"]
    assert out["transcript"] == reference and reference.startswith("stop here")
    with pytest.raises(AppError, match="they would do nothing"):
        predict(client, clips["call"], "stop here", 0.0, in_prompt=False)


@pytest.mark.parametrize(
    ("name", "wave", "note"),
    [
        ("digital_silence", np.zeros(32000), "No speech detected"),
        (
            "room_tone_-70dBFS",
            10 ** (-70 / 20) * np.random.default_rng(0).standard_normal(48000),
            "No speech",
        ),
        ("empty", np.zeros(0), "empty (0 samples)"),
        ("click_5ms", 0.5 * np.ones(80), "too short"),
    ],
)
def test_silence_and_empty_recordings_give_an_empty_transcript(
    client, space_server, tmp_path, name, wave, note
):
    space_server.spy.calls.clear()
    out = predict(client, write_wave(tmp_path / f"{name}.wav", wave))
    assert out["transcript"] == "" and out["phonemes"] == ""
    assert note in out["note"]
    assert out["plot"] is None
    assert space_server.spy.calls == []  # nothing reached the model: no chance of invented text


def test_over_long_clip_is_refused_naming_the_limit(client, space_server, tmp_path):
    limit = space_server.backend.max_seconds
    path = write_wave(tmp_path / "long.wav", synth_clip(limit + 1.0, seed=3))
    with pytest.raises(AppError) as err:
        predict(client, path)
    assert f"at most {limit:g} s" in str(err.value)
    assert f"{limit + 1.0:.1f} s long" in str(err.value)


@pytest.mark.parametrize(
    ("filename", "content"),
    [("garbage.wav", os.urandom(4096)), ("notes.flac", b"just some text, not audio\n" * 50)],
)
def test_corrupt_file_gives_a_readable_error(client, tmp_path, filename, content):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(AppError) as err:
        predict(client, path)
    message = str(err.value)
    assert f"Could not read '{filename}' as audio" in message
    assert "Upload a WAV, FLAC, OGG or MP3 recording." in message
    assert "Traceback" not in message


def test_upload_over_the_size_limit_is_rejected(client, space_server, tmp_path):
    import httpx

    limit = app.MAX_UPLOAD_MB * 2**20
    seconds = limit / (16000 * 4) + 5  # float32 mono at 16 kHz, just over the limit
    path = write_wave(tmp_path / "big.wav", np.zeros(int(seconds * 16000)))
    assert path.stat().st_size > limit
    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {limit} bytes"):
        predict(client, path)  # gradio_client reads the server's limit and refuses before uploading
    # the server enforces it too, for clients that do not check
    with open(path, "rb") as f:
        response = httpx.post(
            f"{space_server.url}gradio_api/upload", files={"files": ("big.wav", f)}, timeout=60
        )
    assert response.status_code == 413, response.text


def test_twenty_concurrent_requests_all_complete(client, space_server, tmp_path):
    paths = [write_wave(tmp_path / f"c{i}.wav", synth_clip(1.0, seed=i)) for i in range(4)]
    texts = [
        space_server.backend.recognizer(str(p))["text"] for p in paths
    ]  # one clip per call, like the app
    jobs = [client.submit(handle_file(str(paths[i % 4])), "", api_name="/transcribe") for i in range(20)]
    results = [job.result(timeout=300) for job in jobs]
    assert len(results) == 20
    for i, result in enumerate(results):
        assert result[0] == texts[i % 4], i
