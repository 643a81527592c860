"""Joint CTC / LLM decoding cost (run by `make bench`): the demo's exported model on 40 of the built-in test
clips (20 per language), greedy against the joint search at the demo's settings, seconds per clip and RTF, and
the error rates of both on those clips. It needs `make demo` to have run (the model and the corpus)."""

from __future__ import annotations

import time

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow
MODEL = REPO / "runs" / "demo-full" / "export" / "model"
DATA = REPO / "data" / "corpus-full" / "dataset"


@pytest.mark.skipif(not (MODEL.is_dir() and DATA.is_dir()), reason="needs `make demo`'s model and corpus")
@torch.inference_mode()
def test_joint_decoding_against_greedy_on_demo_clips():
    from eval.asr_error_rate.scoring import error_counts, normalize_text, tokenize
    from eval.runners.features import load_split
    from training.demo import JOINT_SETTINGS
    from training.inference import Transcriber

    transcriber = Transcriber.from_pretrained(str(MODEL))
    utterances, _ = load_split(DATA, "test", 40)
    audio_s = sum(len(u.audio) for u in utterances) / 16000
    out = {}
    for name, kwargs in (("greedy", {}), ("joint", JOINT_SETTINGS)):
        transcriber.transcribe([utterances[0].audio], with_phonemes=False, **kwargs)  # warm-up
        t0 = time.perf_counter()
        texts = [
            transcriber.transcribe([u.audio], with_phonemes=False, **kwargs)[0]["text"] for u in utterances
        ]
        seconds = time.perf_counter() - t0
        rates = {}
        for lang in ("en", "zh"):
            pairs = [(t, u.text) for t, u in zip(texts, utterances) if u.language == lang]
            counts = [
                error_counts(tokenize(normalize_text(h), lang), tokenize(normalize_text(r), lang))
                for h, r in pairs
            ]
            rates[lang] = sum(c.errors for c in counts) / max(1, sum(c.reference_length for c in counts))
        out[name] = (seconds / len(utterances), seconds / audio_s, rates)
        print(
            f"\n[bench_joint_decoding] {name}: {1000 * out[name][0]:.0f} ms per clip, RTF {out[name][1]:.3f}, "
            f"WER en {100 * rates['en']:.1f}%, CER zh {100 * rates['zh']:.1f}% ({len(utterances)} clips, batch 1, "
            f"{torch.get_num_threads()} threads)"
        )
    assert out["joint"][2]["en"] <= out["greedy"][2]["en"] and out["joint"][2]["zh"] <= out["greedy"][2]["zh"]
