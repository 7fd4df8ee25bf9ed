#!/usr/bin/env bash
# Screenshot the hard-negative gallery page (gallery/index.html) in a real headless browser:
# the check that the page opens offline and shows every crop, score, class and source link,
# and the picture docs/gallery_example.png is made with. Not a test (it needs a browser).
#
# Needs:
#   - Debian's chromium:      apt-get install -y chromium
#   - the repository's venv:  .venv/bin/python with Pillow (a matplotlib dependency), used to
#                             shrink the screenshot to a 256-colour PNG (< ~200 KB)
#   - a gallery page written by tools/visualize_negatives.py, e.g.
#       .venv/bin/python tools/visualize_negatives.py configs/quickstart.yaml \
#           runs/quickstart/best.pth --num-images 0 --gallery-size 48 --out-dir runs/negatives
#
# Usage:
#   tools/screenshot_gallery.sh [GALLERY_DIR] [OUT_PNG] [WIDTH,HEIGHT]
#     GALLERY_DIR    folder holding index.html      (default: runs/negatives/gallery)
#     OUT_PNG        the screenshot                  (default: docs/gallery_example.png)
#     WIDTH,HEIGHT   browser window size             (default: 1200,900)
#   CHROMIUM=/path/to/chrome picks another browser binary.
#
# Exit status: 0 with the PNG written; 1 with a one-line error (no browser, no page, no picture).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GALLERY="${1:-$ROOT/runs/negatives/gallery}"
OUT="${2:-$ROOT/docs/gallery_example.png}"
SIZE="${3:-1200,900}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

die() { echo "error: $*" >&2; exit 1; }

BROWSER="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
[ -n "$BROWSER" ] || die "no chromium found: apt-get install -y chromium (or set CHROMIUM=...)"
INDEX="$(cd "$GALLERY" 2>/dev/null && pwd)/index.html" || die "no folder $GALLERY"
[ -f "$INDEX" ] || die "no $INDEX: write it with tools/visualize_negatives.py first"
mkdir -p "$(dirname "$OUT")"

PROFILE="$(mktemp -d)"
RAW="$PROFILE/screenshot.png"
trap 'rm -rf "$PROFILE"' EXIT

# --no-sandbox: chromium refuses to start as root (containers, CI) without it; the page is a
# local file we wrote. --user-data-dir: a throwaway profile, so nothing of the user's is touched.
"$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --user-data-dir="$PROFILE" --window-size="$SIZE" --screenshot="$RAW" \
    "file://$INDEX" >"$PROFILE/chromium.log" 2>&1 || {
    tail -n 5 "$PROFILE/chromium.log" >&2
    die "chromium failed on file://$INDEX"
}
[ -s "$RAW" ] || die "chromium wrote no screenshot (see its output above)"

# 256 colours keep a screenshot of photo crops under ~200 KB with no visible loss at this size
"$PYTHON" - "$RAW" "$OUT" <<'EOF'
import sys
from PIL import Image

src, dst = sys.argv[1:3]
Image.open(src).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
EOF
echo "wrote $OUT ($(du -k "$OUT" | cut -f1) KB) from file://$INDEX"
