"""Entropy-allocation metrics (NSE, linear CKA, PAI, CSAI): library entry point.

The math lives in `eval/entropy_allocation/allocation.py`, the file the `entropy_allocation` evaluate module
ships beside its script (evaluate copies relative imports of a local module folder); this module
re-exports it so library users and the evaluate module run the same code.
"""

from eval.entropy_allocation.allocation import (
    AllocationConfig,
    CKAAccumulator,
    CovarianceAccumulator,
    LinearProbe,
    ProbeConfig,
    ProbeData,
    csai,
    entropy,
    entropy_allocation_scores,
    linear_cka,
    linear_cka_gram,
    nse,
    pai,
    probe_cross_entropy,
    resolve_config,
    spectral_entropy,
    train_probe,
    utterance_split,
)

__all__ = [
    "AllocationConfig",
    "CKAAccumulator",
    "CovarianceAccumulator",
    "LinearProbe",
    "ProbeConfig",
    "ProbeData",
    "csai",
    "entropy",
    "entropy_allocation_scores",
    "linear_cka",
    "linear_cka_gram",
    "nse",
    "pai",
    "probe_cross_entropy",
    "resolve_config",
    "spectral_entropy",
    "train_probe",
    "utterance_split",
]
