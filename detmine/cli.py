"""What every command-line tool does around its work: user errors as one line, exit codes.

Imports nothing heavy (no torch), so a tool can report a config error instantly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from detmine.errors import DetmineError


def run_tool(
    run: Callable[[argparse.Namespace], int], args: argparse.Namespace, *, interrupt_hint: str = ""
) -> int:
    """Call ``run(args)``; a :class:`DetmineError` prints ``error: <message>`` and gives exit 2,
    Ctrl-C prints ``interrupted`` (plus ``interrupt_hint``) and gives exit 130."""
    try:
        return run(args)
    except DetmineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted{'; ' + interrupt_hint if interrupt_hint else ''}", file=sys.stderr)
        return 130
