"""Facts about a dataset and its detections, computed once and shared.

- :mod:`~detmine.analysis.class_counts`: objects and images per class, from the annotations
  (never by decoding an image): the one class counter (class weights from frequencies, AP by
  class-frequency bucket, the data report).
- :mod:`~detmine.analysis.anchor_counts`: what the run's matcher makes of the annotations at
  the evaluation geometry, in one matching pass (:func:`match_annotations`): background /
  positive anchors per class (the priors of logit adjustment), per image positive / negative /
  ignored anchors, per ground-truth box its best anchor IoU and positive anchors.
- :mod:`~detmine.analysis.coverage`: those per-box records by COCO size and class (boxes below
  the foreground threshold, boxes without a positive anchor), anchor labels per image.
- :mod:`~detmine.analysis.mining_quota`: what a miner keeps per image by its quota rule;
  :mod:`~detmine.analysis.mining_replay`: what it really selects, a model and criterion run
  over a split.
- :mod:`~detmine.analysis.data_report` and :mod:`~detmine.analysis.plots`: the data report of
  ``tools/analyze_data.py`` (Markdown, pictures, scalars).
- :mod:`~detmine.analysis.facts`: :class:`DatasetFacts`, the lazy bundle a loss or miner
  receives (``detmine.structures.TrainingSetFacts``).
- :mod:`~detmine.analysis.background`: false positives on background (detections that touch
  no object), per image.

Floor 4 of docs/architecture.md: it reads data, matching, mining and modeling, and nothing above.
"""

from detmine.analysis.anchor_counts import (
    AnchorCounts,
    AnchorMatches,
    EvalGeometry,
    count_anchor_labels,
    match_annotations,
)
from detmine.analysis.background import BackgroundFalsePositives, background_false_positives
from detmine.analysis.class_counts import ClassCounts, count_classes, count_classes_coco
from detmine.analysis.coverage import CoverageRow, coverage_by_class, coverage_by_size, size_index
from detmine.analysis.facts import DatasetFacts
from detmine.analysis.mining_quota import MinerQuota, miner_quota
from detmine.analysis.mining_replay import MiningReplay, replay_mining

__all__ = [
    "AnchorCounts",
    "AnchorMatches",
    "BackgroundFalsePositives",
    "ClassCounts",
    "CoverageRow",
    "DatasetFacts",
    "EvalGeometry",
    "MinerQuota",
    "MiningReplay",
    "background_false_positives",
    "count_anchor_labels",
    "count_classes",
    "count_classes_coco",
    "coverage_by_class",
    "coverage_by_size",
    "match_annotations",
    "miner_quota",
    "replay_mining",
    "size_index",
]
