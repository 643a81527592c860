"""EntropyASR remote code: the files in this folder are exactly what a model repo on the Hub carries."""

from .configuration_entropy_asr import EntropyASRConfig, num_audio_tokens
from .modeling_entropy_asr import EntropyASRForConditionalGeneration, EntropyASRModel
from .processing_entropy_asr import AudioInputError, EntropyASRProcessor

__all__ = [
    "EntropyASRConfig",
    "EntropyASRForConditionalGeneration",
    "EntropyASRModel",
    "EntropyASRProcessor",
    "AudioInputError",
    "num_audio_tokens",
]
