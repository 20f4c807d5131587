#!/usr/bin/env bash
# Regenerate the QC screenshots in docs/: lnrt infer --qc on the bundled sample (and on the real DICOM
# series when ../shared/data is present), then headless Chromium renders each page.
#   bash docs/make_screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
flags="--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync"
lnrt infer "$(lnrt sample)" --out "$out" --qc --quiet >/dev/null
chromium $flags --user-data-dir="$out/profile" --window-size=1280,2200 \
  --screenshot="$PWD/docs/qc_sample_phantom.png" "file://$out/sample_neck_phantom.qc.html" 2>/dev/null
cp "$out/sample_neck_phantom.qc/overview.png" docs/qc_sample_overview.png
first=$(ls "$out/sample_neck_phantom.qc" | grep node_ | head -1)
cp "$out/sample_neck_phantom.qc/$first" docs/qc_sample_node.png
echo "wrote docs/qc_sample_phantom.png docs/qc_sample_overview.png docs/qc_sample_node.png"
