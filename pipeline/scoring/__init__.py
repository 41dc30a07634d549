"""Scoring trained models: metrics with intervals, calibration by temperature
(``metrics``, pure functions), the evaluation of a model on the test split
(``evaluation``) and the ensembles of members and folds (``ensembles``). May import core,
contracts, the modalities and finetuning; no stage.
"""
