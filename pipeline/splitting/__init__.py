"""Train/val/test assignment (``assign``: stratified, group-aware, temporal, duplicate
clusters kept together) and the leakage audit of a finished split (``leakage``). Pure
functions over rows; may import ``pipeline.core`` and ``pipeline.dataquality``.
"""
