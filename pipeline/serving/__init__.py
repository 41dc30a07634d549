"""Using a trained model outside the stages: ``predict`` (files, folders, manifests),
the prediction server (``serve``) and the TorchScript/ONNX export with its check
(``exporting``). May import everything below the stages; no stage.
"""
