"""Evaluation, its own concern: used by training (the evaluation hook), by the tools and by the
analysis views.

- :mod:`~detmine.evaluation.evaluator`: ``evaluate(model, loader, dataset)`` -> :class:`EvalResult`
  (predictions in original pixels, COCO stats, per-class AP, VOC mAP on VOC data);
- :mod:`~detmine.evaluation.coco_eval`: the COCO backends (faster-coco-eval, pycocotools; the same
  numbers);
- :mod:`~detmine.evaluation.voc_eval`: VOC07 / VOC2010+ average precision;
- :mod:`~detmine.evaluation.coco_table`: the printed tables.

Nothing here imports :mod:`detmine.engine` (training); see docs/architecture.md ("Layers").
"""
