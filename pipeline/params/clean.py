"""params.yaml section clean: data-quality checks and their policies.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.params.fields import in_range


@dataclass(frozen=True)
class MaxRates:
    """Largest acceptable share of images per issue type; above it the clean stage fails."""

    unreadable: float = field(metadata=in_range(ge=0, le=1))
    exact_duplicate: float = field(metadata=in_range(ge=0, le=1))
    near_duplicate: float = field(metadata=in_range(ge=0, le=1))
    conflicting_labels: float = field(metadata=in_range(ge=0, le=1))
    label_issue: float = field(metadata=in_range(ge=0, le=1))
    outlier: float = field(metadata=in_range(ge=0, le=1))


@dataclass(frozen=True)
class CleanConfig:
    """Data-quality checks and what to do with what they find."""

    exact_duplicates: Literal["drop", "flag"]  # drop all but one member of each cluster
    near_duplicates: Literal["drop", "flag"]  # drop all but one member of each cluster
    # cosine similarity of embeddings; auto: calibrated on synthetic copies of the user's
    # images over embeddings and pixel signals (pipeline.dataquality.calibrate)
    near_duplicate_threshold: float | Literal["auto"] = field(metadata=in_range(gt=0, le=1))
    # auto: the largest acceptable estimated share of images linked to a distinct image
    max_false_rate: float = field(metadata=in_range(ge=0, le=1))
    conflicting_labels: Literal["drop", "flag"]  # drop every member of a mixed-label cluster
    label_issues: Literal["flag", "drop"]  # likely label errors (cleanlab)
    label_method: Literal["prune_by_noise_rate", "prune_by_class", "both",
                          "confident_learning", "predicted_neq_given"]  # cleanlab filter_by
    label_folds: int = field(metadata=in_range(ge=2, le=100))  # K of the out-of-fold probe
    # the out-of-fold probe: logistic | lda | a leave-one-out k-NN vote over the
    # embeddings' or the thumbnails' neighbours; auto: the one most accurate on the given
    # labels of logistic (lda above exact_search_max images) and both votes
    label_probe: Literal["auto", "logistic", "lda", "knn_embedding", "knn_thumbnail"]
    # principal components the lda probe sees
    probe_dims: int = field(metadata=in_range(ge=2, le=100_000))
    outliers: Literal["flag", "drop"]
    # mean cosine distance; auto: 0.65 for images, for texts the data's own spread
    # (pipeline.dataquality.quality.text_outliers)
    outlier_threshold: float | Literal["auto"] = field(metadata=in_range(gt=0, le=2))
    neighbours: int = field(metadata=in_range(ge=1, le=100))  # k of the neighbour search
    # images; above: k-means cell search
    exact_search_max: int = field(metadata=in_range(ge=1, le=10**9))
    # cells each image is compared with
    search_probes: int = field(metadata=in_range(ge=1, le=100_000))
    max_rate: MaxRates  # gates: fail when an issue type exceeds its share

    def probes_for(self, n: int, votes: tuple[str, ...]) -> tuple[str, ...]:
        """The probes label_probe means for ``n`` images with neighbour searches of the
        signals ``votes`` (auto: the linear probe, lda only for large sets where the
        logistic probe's K fits take minutes, then a k-NN vote per search)."""
        if self.label_probe != "auto":
            return (self.label_probe,)
        linear = "lda" if n > self.exact_search_max else "logistic"
        return (linear,) + tuple(f"knn_{name}" for name in votes)
