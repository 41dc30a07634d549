"""Texts as a modality: everything the stages need to classify texts instead of images.

Owns decoding text files and the normalised exact-copy hash (:mod:`.decoding`), the
near-copy signal of word shingles and the edited copies that calibrate it
(:mod:`.signals`), the embed stage's text pass (:mod:`.embed`), token ids in the cache
(:mod:`.cache`), and BERT-family encoders with their layer groups, token adapter and
truncation (:mod:`.model`). It may import the modality protocols, the file contracts
(cache and embed files), errors and the shared model head (``pipeline.finetuning.backbones``), and
no stage. The embed and cache stages, item reading (``pipeline.modality.itemkinds``), the pages,
predict and export import it; training, the model file and evaluation reach it through
its model kind (``TEXT_MODELS``, found by ``pipeline.modality.models``).
"""
