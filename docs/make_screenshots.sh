#!/usr/bin/env bash
# Regenerate the QC screenshots in docs/ from the bundled sample (synthetic phantom, so no patient data
# goes into the repository): lnrt infer --qc, then headless Chromium renders the page.
#   bash docs/make_screenshots.sh
# docs/qc_sample_phantom.png   the QC page (1280 px wide), as a browser shows it
# docs/qc_sample_overview.png  the overview (coronal and axial MIPs, bone window, numbered nodes)
# docs/qc_sample_node.png      the picture of the node with the largest short axis (the table's first row)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flags="--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync"
browser=$(command -v chromium || command -v chromium-browser)
lnrt infer "$(lnrt sample)" --out "$out" --qc --quiet >/dev/null
"$browser" $flags --user-data-dir="$out/profile" --window-size=1280,2200 \
  --screenshot="$PWD/docs/qc_sample_phantom.png" "file://$out/sample_neck_phantom.qc.html" 2>/dev/null
cp "$out/sample_neck_phantom.qc/overview.png" docs/qc_sample_overview.png
largest=$(python -c 'import json, sys; r = json.load(open(sys.argv[1]))
print(max(r["nodes"], key=lambda n: n["short_axis_mm"])["id"])' "$out/sample_neck_phantom.report.json")
cp "$out/sample_neck_phantom.qc/$(printf 'node_%03d.png' "$largest")" docs/qc_sample_node.png
echo "wrote docs/qc_sample_phantom.png docs/qc_sample_overview.png docs/qc_sample_node.png (node $largest)"
