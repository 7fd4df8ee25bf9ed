"""Pictures of what the miner chose: OpenCV drawing, TensorBoard hooks, hard-negative gallery."""

from detmine.viz.draw import draw_boxes, draw_legend, draw_mining, line_thickness
from detmine.viz.gallery import HardNegativeGallery, false_positive_mask
from detmine.viz.tensorboard import MiningVisualizer, render_mining_image

__all__ = [
    "HardNegativeGallery",
    "MiningVisualizer",
    "draw_boxes",
    "draw_legend",
    "draw_mining",
    "false_positive_mask",
    "line_thickness",
    "render_mining_image",
]
