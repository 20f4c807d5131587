"""Write the bundled sample scan `runtime/data/sample_neck_phantom.nii.gz` (and its truth) from the
neck phantom generator: `python -m lnrt.models.make_sample`. Deterministic: seed 30000, a seed outside
the training (1000+), validation (9000+) and evaluation (20000+) ranges."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .neck import make_spec, render, truth_table

SEED, SPACING_ZYX = 30000, (3.0, 0.9, 0.9)


def main(out: Path) -> None:
    spec = make_spec(SEED)
    hu, labels, origin = render(spec, SPACING_ZYX, fov_xy=(180.0, 150.0))
    for arr, name in ((np.round(hu).astype(np.int16), "sample_neck_phantom.nii.gz"),
                      (labels, "sample_neck_phantom.truth.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(SPACING_ZYX[::-1])
        img.SetOrigin(origin)
        sitk.WriteImage(img, str(out / name), useCompression=True)
    (out / "sample_neck_phantom.truth.json").write_text(json.dumps(truth_table(spec), indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "runtime" / "data")
