"""`pipeline("automatic-speech-recognition", model=dir, trust_remote_code=True)` for EntropyASR."""

from transformers import Pipeline
from transformers.generation import LogitsProcessorList

from .modeling_entropy_asr import HotwordBias
from .processing_entropy_asr import EntropyASRProcessor  # noqa: F401  (shipped with the pipeline)


class EntropyASRPipeline(Pipeline):
    """Audio (path, array, or {"array"/"raw", "sampling_rate"}) -> {"text": transcript}.

    Call-time options: `context` (hotwords: a list or a comma-separated string), `hotword_bonus` (> 0: bias
    decoding towards them, see `HotwordBias`), `prompt_hotwords=False` (with a bonus: keep them out of the
    prompt, so they act through the bias alone), `max_new_tokens`, `num_beams`, `return_phonemes` (adds the
    greedy CTC hypothesis as "phonemes")."""

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _pipeline_calls_generate = True

    def _sanitize_parameters(
        self,
        context=None,
        max_new_tokens=None,
        num_beams=None,
        return_phonemes=None,
        hotword_bonus=None,
        prompt_hotwords=None,
        **kwargs,
    ):
        pre = {"context": context} if context is not None else {}
        if prompt_hotwords is not None:
            if not prompt_hotwords and not hotword_bonus:
                raise ValueError(
                    "prompt_hotwords=False keeps the hotwords out of the prompt: give a hotword_bonus"
                )
            pre["prompt_hotwords"] = bool(prompt_hotwords)
        fwd = {
            k: v for k, v in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)) if v is not None
        }
        if hotword_bonus:
            fwd["hotword_bonus"] = float(hotword_bonus)
        if return_phonemes:
            fwd["return_phonemes"] = True
        return pre, fwd, {}

    def preprocess(self, inputs, context=None, prompt_hotwords=True):
        model_inputs = self.processor(audio=inputs, context=context if prompt_hotwords else None)
        if isinstance(context, str):
            context = context.split(",")
        return {**model_inputs, "hotwords": [w.strip() for w in context or [] if w and w.strip()]}

    def _forward(self, model_inputs, return_phonemes=False, hotword_bonus=0.0, **generate_kwargs):
        hotwords = model_inputs.pop("hotwords", None)
        n = model_inputs["input_ids"].shape[1]
        if hotword_bonus and hotwords:
            bias = HotwordBias(self.processor.tokenizer, [hotwords], hotword_bonus, n)
            generate_kwargs["logits_processor"] = LogitsProcessorList([bias])
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
