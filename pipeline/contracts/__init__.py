"""The files stages hand on, each read and written by one module only: the manifest, the
embed stage's features and signals, the cache, the near-copy rule, the label tables, the
trained model (``models/model.pt``), and the user's source as prepare and ``init`` read
it. May import ``pipeline.core`` and the modality protocols; no stage, no training.
"""
