"""detmine: dense object detectors trained under extreme class imbalance.

One pipeline -- backbone -> head -> anchor matching -> miner -> loss -- with
SSD-style hard negative mining, OHEM and the focal loss as one-line swaps.
"""

__version__ = "0.1.0"
