"""Entropy allocation: encoder-side metrics NSE, PAI, CSAI and linear CKA as an `evaluate` metric."""

import datasets
import evaluate
import numpy as np

from .allocation import entropy_allocation_scores

_CITATION = """\
@article{xie2026rethinking,
  title   = {Rethinking Entropy Allocation in LLM-based ASR: Understanding the Dynamics between Speech
             Encoders and LLMs},
  author  = {Xie and others},
  journal = {arXiv preprint arXiv:2604.08003},
  year    = {2026}
}
@inproceedings{kornblith2019similarity,
  title     = {Similarity of Neural Network Representations Revisited},
  author    = {Kornblith, Simon and Norouzi, Mohammad and Lee, Honglak and Hinton, Geoffrey},
  booktitle = {ICML},
  year      = {2019}
}
@inproceedings{xu2020theory,
  title     = {A Theory of Usable Information under Computational Constraints},
  author    = {Xu, Yilun and Zhao, Shengjia and Song, Jiaming and Stewart, Russell and Ermon, Stefano},
  booktitle = {ICLR},
  year      = {2020}
}
"""

_DESCRIPTION = """\
Entropy-allocation metrics of a speech encoder's output frames Z (N x d), pooled over an evaluation set,
with a phoneme P and a semantic unit S (word or character id) per frame from CTC forced alignment:

- NSE, normalised spectral entropy of the centred covariance of Z, in [0, 1] (low = compressed).
- PAI = H(P) - CE(P | Z): phonetic information a linear probe can read from Z (bits per frame), and
  PAI / H(P).
- CSAI = CE(S | onehot(pron)) - CE(S | [onehot(pron), Z]), pron = the pronunciation of the frame's unit (its
  phoneme string): lexical information in Z beyond how the unit sounds, e.g. which of two homophones was said
  (high = semantic anchoring in the encoder). Needs `pronunciations`.
- Frame-phoneme CSAI = CE(S | onehot(P)) - CE(S | [onehot(P), Z]), conditioned on the frame's own phoneme only:
  phonetic context (the neighbouring phonemes) counts as lexical information here.
- Linear CKA between Z and reference frames of another encoder snapshot on the same frames (config
  "with_reference").

CEs are held-out cross-entropies of multinomial logistic-regression probes trained on other utterances.
"""

_KWARGS_DESCRIPTION = """
Args:
    encoder_states (`list` of `list` of `float`): one d-dim encoder output vector per frame.
    phonemes (`list` of `int`): phoneme id per frame.
    units (`list` of `int`): semantic unit id (word / character) per frame.
    utterance_ids (`list` of `str` or `int`): utterance of each frame; the probes' held-out split is by
        utterance.
    reference_states (`list` of `list` of `float`, config "with_reference" only): reference encoder's
        vector per frame (same frames), for CKA.
    pronunciations (`list` of `int`, optional, passed to `compute` beside the options, not to `add_batch`):
        id of the pronunciation (phoneme string) of each frame's unit; homophones share one. Without it
        csai_bits is None and only the frame-phoneme CSAI is measured.
    Options (keyword arguments of `compute`): any field of `AllocationConfig` or `ProbeConfig`, e.g.
        log_base (2), heldout_fraction (0.2), validation_fraction (0.1), split_seed (0),
        entropy_split ("heldout"), standardize (True), unseen_units ("drop"), min_unit_count (1),
        max_unit_classes (None), optimizer ("adam"), epochs (2), min_steps (300), batch_size (1024),
        learning_rate (0.05), l2 ((1e-3, 1e-2): chosen on validation), eval_every (steps / 10), seed (0), device ("cpu"), num_threads.
Returns:
    nse (`float`): normalised spectral entropy of Z, in [0, 1].
    spectral_entropy (`float`): un-normalised spectral entropy (log_base units).
    pai_bits (`float`), pai_normalised (`float`): PAI per frame and PAI / H(P).
    csai_bits (`float` or None): CSAI per frame (None without pronunciations).
    csai_frame_bits (`float`): frame-phoneme CSAI per frame.
    nse_ci95, pai_ci95, pai_normalised_ci95, csai_ci95, csai_frame_ci95, cka_ci95 (`[low, high]`): 95%
        bootstrap intervals (unless bootstrap_resamples=0); PAI's and CSAI's resample the held-out frames'
        losses of the probes as trained once.
    pai_stopped_at_start, csai_stopped_at_start, csai_frame_stopped_at_start (`bool` or None): early stopping
        kept the probe's starting point (the marginal, the probe without Z), so the score is its null value by
        construction (CSAI exactly 0): "no gain found", not a measured 0.
    h_p, ce_p_given_z, ce_p_prior, ce_s_given_pron, ce_s_given_pron_z, ce_s_given_p, ce_s_given_pz, h_s
        (`float`): the entropies behind the scores (log_base units per frame; ce_p_prior is the train
        marginal's CE on held-out frames).
    n_frames, dim, n_train_frames, n_validation_frames, n_heldout_frames, n_phoneme_classes,
        n_unit_classes, n_pronunciation_classes, n_pai_heldout_dropped, n_csai_heldout_dropped (`int`): sizes.
    cka (`float`), nse_reference (`float`): with config "with_reference" only.
Examples:
    >>> metric = evaluate.load("eval/entropy_allocation")
    >>> out = metric.compute(encoder_states=z, phonemes=p, units=s, utterance_ids=u)
    >>> round(out["pai_normalised"], 2)
    0.99
"""

_CONFIGS = ("default", "with_reference")


def _features(with_reference: bool, id_type: str) -> datasets.Features:
    columns = {
        "encoder_states": datasets.Sequence(datasets.Value("float32")),
        "phonemes": datasets.Value("int64"),
        "units": datasets.Value("int64"),
        "utterance_ids": datasets.Value(id_type),
    }
    if with_reference:
        columns["reference_states"] = datasets.Sequence(datasets.Value("float32"))
    return datasets.Features(columns)


def _matrix(rows) -> np.ndarray:
    """Stack per-frame vectors into (N, d) float32 (the numpy formatter may give an object array)."""
    rows = np.asarray(rows) if not isinstance(rows, np.ndarray) else rows
    if rows.dtype == object:
        rows = np.stack([np.asarray(r, dtype=np.float32) for r in rows])
    return rows.astype(np.float32, copy=False)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EntropyAllocation(evaluate.Metric):
    def _info(self):
        if self.config_name not in _CONFIGS:
            raise KeyError(f"config_name must be one of {list(_CONFIGS)}, got {self.config_name!r}")
        with_reference = self.config_name == "with_reference"
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[_features(with_reference, "string"), _features(with_reference, "int64")],
            reference_urls=["https://arxiv.org/abs/2604.08003", "https://arxiv.org/abs/1905.00414"],
        )
        # Read the cached frames back as numpy ((N, d) arrays) instead of Python lists of floats (8x the
        # memory, slow). Set after construction: MetricInfo only accepts a format with scalar features,
        # but datasets' numpy formatter handles fixed-length float lists.
        info.format = "numpy"
        return info

    def _compute(
        self,
        encoder_states,
        phonemes,
        units,
        utterance_ids,
        reference_states=None,
        pronunciations=None,
        **options,
    ):
        if pronunciations is not None:
            pronunciations = np.asarray(pronunciations)
            if pronunciations.ndim != 1 or not np.issubdtype(pronunciations.dtype, np.integer):
                raise TypeError(
                    "pronunciations must be one integer id per frame (the pronunciation of the frame's unit), "
                    f"got shape {pronunciations.shape} and dtype {pronunciations.dtype}"
                )
        return entropy_allocation_scores(
            _matrix(encoder_states),
            np.asarray(phonemes),
            np.asarray(units),
            np.asarray(utterance_ids),
            reference_states=None if reference_states is None else _matrix(reference_states),
            pronunciations=pronunciations,
            **options,
        )
