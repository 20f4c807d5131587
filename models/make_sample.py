"""Write the bundled sample scan `runtime/data/sample_neck_phantom.nii.gz` (and its truth) from the
neck phantom generator: `python -m lnrt.models.make_sample`. Deterministic: seed 30000, a seed outside
the training (1000+), validation (9000+) and evaluation (20000+) ranges."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .neck import make_spec, render

SEED, SPACING_ZYX = 30000, (3.0, 0.9, 0.9)


def main(out: Path) -> None:
    spec = make_spec(SEED)
    hu, labels, origin = render(spec, SPACING_ZYX, fov_xy=(180.0, 150.0), pad_z=6.0)
    for arr, name in ((np.round(hu).astype(np.int16), "sample_neck_phantom.nii.gz"),
                      (labels, "sample_neck_phantom.truth.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(SPACING_ZYX[::-1])
        img.SetOrigin(origin)
        sitk.WriteImage(img, str(out / name), useCompression=True)
    truth = [{"id": i, "level": str(n.level), "long_axis_mm": round(n.long_axis_mm, 3),
              "short_axis_mm": round(n.short_axis_mm, 3), "center_xyz_mm": [round(float(c), 3) for c in n.center],
              "necrosis": bool(n.necrosis), "lobulated": bool(n.lobes)}
             for i, n in enumerate(spec.nodes, start=1)]
    (out / "sample_neck_phantom.truth.json").write_text(json.dumps(truth, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "runtime" / "data")
