"""Where each node was measured, in the terms a reader at a PACS uses (added to every node row).

`axis_slice` is a 0-based array index, which a PACS does not show: it numbers a series' images by
Instance Number, which need not follow the slices' order in space (a Philips series numbers them from
the top down, so array slice 1 of 10 is image 9). Each row therefore also carries:

- `slice_position_mm`: the measured slice's position along the normal of the input's slice axis (the
  array axis `axis_slice` counts along): dot(world position of that slice's first voxel, that axis'
  unit direction). For a volume read from DICOM this is dot(ImagePositionPatient, slice normal) of the
  instance, the "slice location" a viewer shows next to the image.
- `instance_number`, `sop_instance_uid`: for DICOM input, when that axis is the series' own slice axis
  (array z; the files are read in that order, so slice k is `ScanInfo.files[k]`), the Instance Number
  and SOP Instance UID of that file's header; otherwise None (a NIfTI file, or a DICOM series stored
  sagittally or coronally, whose axial slices are not instances).
- `side`: "right", "left" or "midline": the centroid's x (LPS: +x is the patient's left, whatever the
  display; a radiological display puts the patient's right on the screen's left) against the body's
  midline on the measured slice, the mean x of the voxels above `BODY_HU` there. Within
  `MIDLINE_TOLERANCE_MM` of it the node is "midline": a node whose centroid is that close straddles the
  midline as soon as it is 10 mm across (the RECIST short axis of a normal node), and the body's mean x
  itself moves by a few mm with head rotation or asymmetric shoulders, so calling it right or left
  would be a guess. None without a CT (`measure` without an image) or when the slice holds no body.

A node without RECIST axes (`axis_slice` None) has None in all four.
"""
from __future__ import annotations

import numpy as np

from .volume import Orientation, Volume

FIELDS = ("slice_position_mm", "instance_number", "sop_instance_uid", "side")
BODY_HU = -500.0  # body (any tissue, not air) on the measured slice, for its midline
MIDLINE_TOLERANCE_MM = 5.0  # centroid within this of the body's midline: "midline" (see above)


def slice_axis(orient: Orientation) -> int:
    """The input array axis (0 = z, 1 = y, 2 = x) closest to the patient's superior-inferior axis: the
    one `axis_slice` counts along."""
    return int(orient.perm[0])


def axis_direction(vol: Volume, axis: int) -> np.ndarray:
    """The unit direction (LPS) in which input array axis `axis` (numpy order) runs."""
    col = np.asarray(vol.direction, dtype=np.float64)[:, 2 - axis]
    return col / np.linalg.norm(col)


def slice_position_mm(vol: Volume, axis: int, k: int) -> float:
    """dot(world position of the first voxel of slice k along `axis`, that axis' direction), mm."""
    idx = np.zeros(3)
    idx[axis] = k
    return round(float(np.dot(vol.index_to_world(idx), axis_direction(vol, axis))), 3)


def body_midline_x_mm(vol: Volume, image: np.ndarray, axis: int, k: int, threshold: float = BODY_HU):
    """World x (mm) of the body's midline on slice k along `axis`: the mean x of the voxels above
    `threshold` HU there (the mean of world points is the world point of the mean index: the map is
    affine). None when the slice holds no such voxel."""
    body = np.take(image, k, axis=axis) > threshold
    if not body.any():
        return None
    idx = np.empty(3)
    idx[[a for a in range(3) if a != axis]] = [float(c.mean()) for c in np.nonzero(body)]
    idx[axis] = k
    return float(vol.index_to_world(idx)[0])


def side_of(x_mm: float, midline_x_mm: float | None, tolerance_mm: float = MIDLINE_TOLERANCE_MM):
    """"right", "left" or "midline" of a world x against the midline's (LPS: +x is the patient's left)."""
    if midline_x_mm is None:
        return None
    d = float(x_mm) - float(midline_x_mm)
    if abs(d) <= tolerance_mm:
        return "midline"
    return "left" if d > 0 else "right"


def dicom_instances(files, slices) -> dict:
    """{k: (Instance Number or None, SOP Instance UID or None)} of files[k], from the headers only."""
    import pydicom

    out = {}
    for k in sorted(set(slices)):
        ds = pydicom.dcmread(files[k], stop_before_pixels=True, specific_tags=["InstanceNumber", "SOPInstanceUID"])
        number = ds.get("InstanceNumber")
        uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        out[k] = (int(number) if number not in (None, "") else None, uid or None)
    return out


def node_references(nodes: list, vol: Volume, orient: Orientation, image: np.ndarray | None = None,
                    files=()) -> list:
    """The rows with the four reference fields (see the module's text) after `axis_slice`.

    `vol` is the input's geometry, `image` its CT in HU on that grid (None: no side), `files` the DICOM
    files in array z order (empty: no instance fields). Reads only the files of measured slices."""
    axis = slice_axis(orient)
    files = list(files or ())
    by_instance = axis == 0 and len(files) == vol.shape[0]
    slices = [n["axis_slice"] for n in nodes if n.get("axis_slice") is not None]
    instances = dicom_instances(files, slices) if by_instance and slices else {}
    midlines = {}
    out = []
    for n in nodes:
        k = n.get("axis_slice")
        refs = dict.fromkeys(FIELDS)
        if k is not None:
            refs["slice_position_mm"] = slice_position_mm(vol, axis, k)
            refs["instance_number"], refs["sop_instance_uid"] = instances.get(k, (None, None))
            if image is not None:
                if k not in midlines:
                    midlines[k] = body_midline_x_mm(vol, image, axis, k)
                refs["side"] = side_of(n["centroid_mm"][0], midlines[k])
        row = {}
        for key, value in n.items():
            if key not in FIELDS:
                row[key] = value
            if key == "axis_slice":
                row.update(refs)
        row.update({k2: v for k2, v in refs.items() if k2 not in row})
        out.append(row)
    return out
