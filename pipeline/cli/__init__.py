"""Command-line helpers behind ``python -m pipeline``: ``init`` (look at a user's data
and point params.yaml at it) and ``sweep`` (trials as DVC experiments). May import any
library package; no stage.
"""
