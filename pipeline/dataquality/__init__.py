"""Data-quality detection, pure functions over arrays: unreadable and duplicate items,
conflicting labels, label issues and outliers (``quality``), and the near-copy rule
calibrated on planted copies (``calibrate``), which is modality-neutral: each modality
gives its signals and copies. May import ``pipeline.core``; no file contract, no stage.
"""
