"""Scoring a trained model: metrics with intervals, calibration by temperature
(``metrics``, pure functions) and the evaluation of a model on the test split
(``evaluation``). May import core, contracts and finetuning; no stage.
"""
