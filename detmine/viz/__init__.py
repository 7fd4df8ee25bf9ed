"""Pictures of what the miner chose: OpenCV drawing, heat maps, TensorBoard hooks, plots,
the hard-negative gallery and its HTML page."""

from detmine.viz.draw import draw_boxes, draw_legend, line_thickness
from detmine.viz.gallery import HardNegativeGallery, false_positive_mask
from detmine.viz.heatmap import heat_maps, location_losses
from detmine.viz.mining_picture import MiningPicture, draw_mining, draw_mining_picture
from detmine.viz.tensorboard import MiningVisualizer, render_mining_image, render_mining_picture

__all__ = [
    "HardNegativeGallery",
    "MiningPicture",
    "MiningVisualizer",
    "draw_boxes",
    "draw_legend",
    "draw_mining",
    "draw_mining_picture",
    "false_positive_mask",
    "heat_maps",
    "line_thickness",
    "location_losses",
    "render_mining_image",
    "render_mining_picture",
]
