"""Images as a modality: the file suffixes (``suffixes``), decoding, hashing and resizing
(``decoding``, the :class:`~pipeline.modality.ItemCodec`), model input (``inputs``, the
image :class:`~pipeline.modality.BatchAdapter`), the classifier kind and its per-epoch
augmentation (``model``, the :class:`~pipeline.modality.ModelKind`), the cached
augmented views (``augment``), the pixel near-copy signals and the synthetic copies that
calibrate them (``signals``), the embed stage's pass (``embed``), the cache writer
(``cache``) and the digits demo (``demo``). The only package that imports PIL. May
import the modality protocols, ``pipeline.core``, the file contracts and the backbones;
no stage.
"""
