"""Prediction on new images and videos with a trained detector (``tools/predict.py``).

- :mod:`~detmine.predict.inputs`: files, folders, glob patterns and videos turned into what to
  read (images through the hard-negative miner's ``ImageFolder``, video frames one by one);
- :mod:`~detmine.predict.runner`: the loop (``DenseDetector.predict`` at the evaluation
  geometry), pictures and annotated videos;
- :mod:`~detmine.predict.drawing`: one image's detections drawn, one colour per class;
- :mod:`~detmine.predict.results`: ``results.json`` (COCO results, original category ids) and
  ``index.json``;
- :mod:`~detmine.predict.command`: the run from a checked config (engine builders, per-class
  thresholds, checks before the work).

Floor 7 of docs/architecture.md (above engine: it builds the detector through its builders).
Submodules are imported on use, so ``import detmine.predict`` stays light.
"""

from __future__ import annotations
