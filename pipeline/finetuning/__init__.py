"""Fine-tuning a pretrained backbone: backbones and weights, layer groups and freezing
(``models``), the schedule (``finetune``: phases, parameter groups, optimizer, rates),
the one loop (``engine``), the run's parts (``training``: setup, checkpoints, loss) and
the run itself (``trainrun``), ensemble members and folds (``members``) and the ``auto``
sizes (``autosize``). May import core, contracts, the modalities and scoring; no stage.
"""
