"""Write the bundled sample scan `runtime/data/sample_neck_phantom.nii.gz` (and its truth) from the
phantom generator: `python -m lnrt.models.make_sample`. Deterministic (seed 7)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import SimpleITK as sitk

from .phantoms import neck_phantom

SHAPE, SPACING, SEED = (36, 150, 170), (2.5, 0.9, 0.9), 7
ORIGIN_XYZ = (-76.5, -60.0, -40.0)


def main(out: Path) -> None:
    hu, labels, nodes = neck_phantom(SHAPE, SPACING, seed=SEED, n_nodes=6)
    for arr, name in ((hu, "sample_neck_phantom.nii.gz"), (labels, "sample_neck_phantom.truth.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(SPACING[::-1])
        img.SetOrigin(ORIGIN_XYZ)
        sitk.WriteImage(img, str(out / name), useCompression=True)
    truth = [{"id": i + 1, "long_axis_mm": n.long_axis_mm, "short_axis_mm": n.short_axis_mm,
              "center_zyx_mm": list(n.center_mm)} for i, n in enumerate(nodes)]
    (out / "sample_neck_phantom.truth.json").write_text(json.dumps(truth, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "runtime" / "data")
