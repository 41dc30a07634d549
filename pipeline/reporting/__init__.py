"""What people read: the report page assembled from what the stages wrote (``page``), its
figures and HTML pieces (``report``), clean's review page, split's leakage page, the
shared HTML pieces (``pages``: thumbnails, text snippets, another modality's codec
thumbnails), the closing summary and the offline ``dvc plots`` pages. May import core,
contracts and the modalities; no stage.
"""
