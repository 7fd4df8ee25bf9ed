"""detmine: dense object detectors trained under extreme class imbalance.

One pipeline -- backbone -> head -> anchor matching -> miner -> loss -- with
SSD-style hard negative mining, OHEM and the focal loss as one-line swaps.
"""

# The one place the version is set: pyproject.toml reads it (``[tool.setuptools.dynamic]``).
__version__ = "0.3.0.dev0"
