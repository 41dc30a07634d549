"""Data-quality detection: unreadable and duplicate items, conflicting labels, label issues
and outliers (``quality``, pure functions over arrays), the near-copy rule calibrated on
planted copies (``calibrate``: modality-neutral over arrays of unit rows; the image copy
model is its one special signal), and the clean stage's rules (``cleaning``: detection
from the embed stage's pass, policies, decisions, counts). May import ``pipeline.core``,
the file contracts and the modality protocols and signals; no stage.
"""
