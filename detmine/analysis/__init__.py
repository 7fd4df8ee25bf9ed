"""Facts about a dataset and its detections, computed once and shared.

- :mod:`~detmine.analysis.class_counts`: objects and images per class, from the annotations
  (never by decoding an image): the one class counter (class weights from frequencies, AP by
  class-frequency bucket, the data report).
- :mod:`~detmine.analysis.anchor_counts`: what the run's matcher makes of the annotations at
  the evaluation geometry (background / positive anchors per class): the priors of logit
  adjustment, the anchor statistics of the data report.
- :mod:`~detmine.analysis.facts`: :class:`DatasetFacts`, the lazy bundle a loss or miner
  receives (``detmine.structures.TrainingSetFacts``).
- :mod:`~detmine.analysis.background`: false positives on background (detections that touch
  no object), per image.

Floor 4 of docs/architecture.md: it reads data, matching and modeling, and nothing above.
"""

from detmine.analysis.anchor_counts import AnchorCounts, EvalGeometry, count_anchor_labels
from detmine.analysis.background import BackgroundFalsePositives, background_false_positives
from detmine.analysis.class_counts import ClassCounts, count_classes, count_classes_coco
from detmine.analysis.facts import DatasetFacts

__all__ = [
    "AnchorCounts",
    "BackgroundFalsePositives",
    "ClassCounts",
    "DatasetFacts",
    "EvalGeometry",
    "background_false_positives",
    "count_anchor_labels",
    "count_classes",
    "count_classes_coco",
]
