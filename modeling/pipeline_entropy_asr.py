"""`pipeline("automatic-speech-recognition", model=dir, trust_remote_code=True)` for EntropyASR."""

from transformers import Pipeline

from .processing_entropy_asr import EntropyASRProcessor  # noqa: F401  (shipped with the pipeline)


class EntropyASRPipeline(Pipeline):
    """Audio (path, array, or {"array"/"raw", "sampling_rate"}) -> {"text": transcript}.

    Call-time options: `context` (hotwords), `max_new_tokens`, `num_beams`, `return_phonemes` (adds the
    greedy CTC hypothesis as "phonemes")."""

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _pipeline_calls_generate = True

    def _sanitize_parameters(
        self, context=None, max_new_tokens=None, num_beams=None, return_phonemes=None, **kwargs
    ):
        pre = {"context": context} if context is not None else {}
        fwd = {
            k: v for k, v in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)) if v is not None
        }
        if return_phonemes:
            fwd["return_phonemes"] = True
        return pre, fwd, {}

    def preprocess(self, inputs, context=None):
        return self.processor(audio=inputs, context=context)

    def _forward(self, model_inputs, return_phonemes=False, **generate_kwargs):
        n = model_inputs["input_ids"].shape[1]
        tokens = self.model.generate(**model_inputs, do_sample=False, **generate_kwargs)[:, n:]
        out = {"tokens": tokens}
        if return_phonemes:
            out["ctc"] = self.model.ctc_greedy_decode(
                model_inputs["input_features"], model_inputs["input_features_mask"]
            )
        return out

    def postprocess(self, model_outputs):
        result = {"text": self.processor.decode(model_outputs["tokens"][0])}
        if "ctc" in model_outputs and self.processor.ctc_vocab:
            result["phonemes"] = " ".join(self.processor.decode_ctc(model_outputs["ctc"][0]))
        return result
