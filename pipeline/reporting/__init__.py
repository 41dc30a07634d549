"""What people read: the report's figures and HTML (``report``), clean's review page,
split's leakage page, their shared HTML pieces (``pages``), the closing summary and the
offline ``dvc plots`` pages. May import core, contracts and the modalities; no stage.
"""
