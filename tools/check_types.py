#!/usr/bin/env python
"""Type-check ``detmine/`` with mypy against a baseline that may only shrink.

    python tools/check_types.py            # fail when mypy reports an error not in the baseline
    python tools/check_types.py --update   # rewrite the baseline (after fixing errors)

The baseline (``.ci/mypy-baseline.txt``) lists the known errors as ``path: [code] message``,
without line numbers, so unrelated edits do not churn it. A new error fails the check (exit
1) and is printed with its line; errors that disappeared are reported so the baseline can be
shrunk with ``--update``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / ".ci" / "mypy-baseline.txt"
_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*?)\s+\[(?P<code>[a-z0-9-]+)\]$")


def run_mypy() -> tuple[Counter[str], dict[str, str]]:
    """``(normalised errors with counts, one full line per normalised error)``."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--show-error-codes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 1):
        sys.exit(f"error: mypy failed to run:\n{proc.stdout}{proc.stderr}")
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        match = _LINE.match(line.strip())
        if match:
            key = f"{match['path']}: [{match['code']}] {match['message']}"
            errors[key] += 1
            examples.setdefault(key, line.strip())
    return errors, examples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the baseline with the current errors")
    args = parser.parse_args()
    errors, examples = run_mypy()
    if args.update:
        BASELINE.write_text("".join(f"{k}\n" * n for k, n in sorted(errors.items())))
        print(f"mypy baseline: {sum(errors.values())} known errors written to {BASELINE.relative_to(ROOT)}")
        return 0
    known = Counter(BASELINE.read_text().splitlines()) if BASELINE.is_file() else Counter()
    new = errors - known
    gone = known - errors
    if new:
        print(f"mypy: {sum(new.values())} new error(s) (not in {BASELINE.relative_to(ROOT)}):")
        for key in sorted(new):
            print(f"  {examples[key]}")
        return 1
    shrink = f"; {sum(gone.values())} fixed -- run tools/check_types.py --update" if gone else ""
    print(f"mypy: no new errors ({sum(errors.values())} known in the baseline{shrink})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
