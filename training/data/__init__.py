"""Data layer: audio decoding (`audio`), G2P and vocabularies (`g2p`), augmentation (`augment`), dataset
loading (`loading`) and the synthetic in-car corpus (`corpus`, the `make-corpus` command).

Submodules are imported explicitly (e.g. `from training.data.g2p import text_to_phonemes`) so importing one
does not pull in torch or datasets for the others.
"""
