"""Train/val/test assignment (``assign``: stratified, group-aware, temporal, duplicate
clusters kept together), the leakage audit of a finished split (``leakage``) and the
split stage's rules (``rules``: the method, the fold column, the audit with clean's
near-copy rule, what ``split.on_leakage`` does). May import ``pipeline.core``, the file
contracts and ``pipeline.dataquality``; no stage.
"""
