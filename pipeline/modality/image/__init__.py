"""Images as a modality: decoding, hashing and resizing (``decoding``, the
:class:`~pipeline.modality.ItemCodec`), model input (``inputs``, the image
:class:`~pipeline.modality.BatchAdapter`), the augmented views and the per-epoch
augmentation (``augment``), and the pixel near-copy signals with the synthetic copies
that calibrate them (``signals``). The only package that imports PIL. May import the
modality protocols, ``pipeline.core`` and the file contracts; no stage.
"""
