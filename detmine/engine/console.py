"""Lines for the person watching a run: written above any progress bar, main process only."""

from __future__ import annotations

import sys

from tqdm import tqdm


def log(message: str, *, error: bool = False) -> None:
    """Print one line without breaking a tqdm bar (stdout, or stderr with ``error``)."""
    tqdm.write(message, file=sys.stderr if error else sys.stdout)
