"""Data layer: audio decoding and resampling (`audio`), G2P and vocabularies (`g2p`), the lexicon shipped with a
model (`lexicon`), augmentation (`augment`), dataset loading (`loading`), batches for each kind of stage
(`collators`), hotwords put into prompts (`context`), evaluation splits as decoded clips (`splits`) and the
synthetic in-car corpus (`corpus`).

Submodules are imported explicitly (e.g. `from training.data.g2p import text_to_phonemes`) so importing one
does not pull in torch or datasets for the others.
"""
