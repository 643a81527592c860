"""Joint CTC / LLM decoding cost (run by `make bench`): the demo's exported model on 40 of the built-in test
clips (20 per language), greedy against the joint search at the demo's settings, seconds per clip and RTF, and
the error rates of both on those clips. Where CUDA is present the same runs on the GPU as well, which must give
the same transcripts. It needs `make demo` to have run (the model and the corpus)."""

from __future__ import annotations

import time

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow
MODEL = REPO / "runs" / "demo-full" / "export" / "model"
DATA = REPO / "data" / "corpus-full" / "dataset"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _decode_all(transcriber, utterances, device: str, name: str, kwargs: dict) -> tuple[list[str], dict]:
    """Transcripts of the clips one at a time, with seconds per clip, RTF and error rates per language."""
    from eval.asr_error_rate.scoring import error_counts, normalize_text, tokenize

    transcriber.transcribe([utterances[0].audio], with_phonemes=False, **kwargs)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    texts = [transcriber.transcribe([u.audio], with_phonemes=False, **kwargs)[0]["text"] for u in utterances]
    _sync(device)
    seconds = time.perf_counter() - t0
    rates = {}
    for lang in ("en", "zh"):
        counts = [
            error_counts(tokenize(normalize_text(t), lang), tokenize(normalize_text(u.text), lang))
            for t, u in zip(texts, utterances)
            if u.language == lang
        ]
        rates[lang] = sum(c.errors for c in counts) / max(1, sum(c.reference_length for c in counts))
    audio_s = sum(len(u.audio) for u in utterances) / 16000
    figures = {"s_per_clip": seconds / len(utterances), "rtf": seconds / audio_s, "rates": rates}
    print(
        f"\n[bench_joint_decoding] {device} {name}: {1000 * figures['s_per_clip']:.0f} ms per clip, RTF "
        f"{figures['rtf']:.3f}, WER en {100 * rates['en']:.1f}%, CER zh {100 * rates['zh']:.1f}% "
        f"({len(utterances)} clips, batch 1, {torch.get_num_threads()} CPU threads)"
    )
    return texts, figures


@pytest.mark.skipif(not (MODEL.is_dir() and DATA.is_dir()), reason="needs `make demo`'s model and corpus")
@torch.inference_mode()
def test_joint_decoding_against_greedy_on_demo_clips():
    from eval.runners.features import load_split
    from training.demo import JOINT_SETTINGS
    from training.inference import Transcriber

    utterances, _ = load_split(DATA, "test", 40)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    texts, out = {}, {}
    for device in devices:
        transcriber = Transcriber.from_pretrained(str(MODEL), device=device)
        for name, kwargs in (("greedy", {}), ("joint", JOINT_SETTINGS)):
            texts[device, name], out[device, name] = _decode_all(
                transcriber, utterances, device, name, kwargs
            )
    joint, greedy = out["cpu", "joint"]["rates"], out["cpu", "greedy"]["rates"]
    assert joint["en"] <= greedy["en"] and joint["zh"] <= greedy["zh"]
    for name in ("greedy", "joint"):  # the GPU decodes what the CPU decodes
        assert all(texts[d, name] == texts["cpu", name] for d in devices)
