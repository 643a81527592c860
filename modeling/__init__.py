"""EntropyASR remote code: the files in this folder are exactly what a model repo on the Hub carries.

The names below are imported on first use (PEP 562), so `modeling.phonemizer_entropy_asr`, which needs only the
standard library, can be imported (e.g. by the training G2P) without loading torch and transformers.
"""

from importlib import import_module

_EXPORTS = {
    "EntropyASRConfig": "configuration_entropy_asr",
    "num_audio_tokens": "configuration_entropy_asr",
    "EntropyASRForConditionalGeneration": "modeling_entropy_asr",
    "EntropyASRModel": "modeling_entropy_asr",
    "AudioInputError": "processing_entropy_asr",
    "EntropyASRProcessor": "processing_entropy_asr",
    "Phonemizer": "phonemizer_entropy_asr",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
