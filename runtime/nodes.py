"""Connected components and the per-node table.

Components: cc3d (26-connected by default), numbered in raster order of each component's first voxel
in the C-ordered (z, y, x) array; removing small components and renumbering the rest keeps that
order. Statistics: one pass over the node voxels (sorted by label once, then reduced per group),
never `cc3d.statistics` and never a Fortran-order copy. RECIST axes: on each node's bounding box,
viewed in the canonical orientation so the axial plane is the patient's.
"""
from __future__ import annotations

import cc3d
import numpy as np

from .preprocess import bounding_box, box_slices
from .recist import max_diameter_3d, recist_axes, recist_category
from .volume import Orientation, Volume, voxel_volume_mm3

CONNECTIVITIES = (6, 18, 26)


def label_components(foreground: np.ndarray, connectivity: int = 26, min_voxels: int = 0) -> tuple:
    """Instance labels (uint16, or uint32 past 65 535 nodes) and their count.

    Labelling runs on the foreground's bounding box only: raster order of (z, y, x) is the same in a
    crop as in the whole array, so the numbering is cc3d's on the full volume.
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity}")
    fg = np.asarray(foreground, dtype=bool)
    box = bounding_box(fg)
    if box is None:
        return np.zeros(fg.shape, dtype=np.uint16), 0
    crop = box_slices(box)
    labels, n = cc3d.connected_components(np.ascontiguousarray(fg[crop]), connectivity=connectivity,
                                          return_N=True)
    if n and min_voxels > 1:
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        labels, n = _renumber(labels, counts >= min_voxels)
    out = np.zeros(fg.shape, dtype=_label_dtype(n))
    out[crop] = labels
    return out, int(n)


def _label_dtype(n: int):
    return np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32


def _renumber(labels: np.ndarray, keep: np.ndarray) -> tuple:
    """Labels with only the ids where keep[id] (keep[0] ignored), renumbered 1..n in their old order."""
    keep = np.asarray(keep, dtype=bool).copy()
    keep[0] = False
    n = int(keep.sum())
    remap = np.zeros(keep.size, dtype=_label_dtype(n))
    remap[keep] = np.arange(1, n + 1)
    return remap[labels], n


def keep_nodes(labels: np.ndarray, rows: list, keep) -> tuple:
    """Drop the nodes where `keep` (one bool per row of `rows`) is False: (labels, rows) renumbered
    1..n in their old order, so that a row's id is still its label. Inputs are not modified."""
    keep = [bool(k) for k in keep]
    if len(keep) != len(rows):
        raise ValueError(f"keep has {len(keep)} entries for {len(rows)} nodes")
    if all(keep):
        return labels, rows
    table = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    for row, k in zip(rows, keep):
        table[row["id"]] = k
    new, _ = _renumber(labels, table)
    kept = sorted((r for r, k in zip(rows, keep) if k), key=lambda r: r["id"])
    return new, [dict(row, id=i) for i, row in enumerate(kept, start=1)]


def _group(labels: np.ndarray) -> tuple:
    """Node voxels grouped by label: (ids, starts, counts, flat indices sorted by label)."""
    flat = labels.reshape(-1)
    idx = np.flatnonzero(flat)
    lab = flat[idx]
    order = np.argsort(lab, kind="stable")
    idx, lab = idx[order], lab[order]
    ids, starts, counts = np.unique(lab, return_index=True, return_counts=True)
    return ids, starts, counts, idx


def node_table(labels: np.ndarray, vol: Volume, orientation: Orientation,
               image: np.ndarray | None = None, probability: np.ndarray | None = None,
               classmap: np.ndarray | None = None, class_names: list | None = None) -> list:
    """One dict per node (DESIGN.md's report contract), all arrays in the input's array order."""
    ids, starts, counts, idx = _group(labels)
    if ids.size == 0:
        return []
    coords = np.unravel_index(idx, labels.shape)
    mins = np.stack([np.minimum.reduceat(c, starts) for c in coords], axis=1)
    maxs = np.stack([np.maximum.reduceat(c, starts) for c in coords], axis=1)
    cents = np.stack([np.add.reduceat(c.astype(np.float64), starts) for c in coords], axis=1)
    cents /= counts[:, None]
    world = vol.index_to_world(cents)
    mean_hu = (np.add.reduceat(image.reshape(-1)[idx].astype(np.float64), starts) / counts
               if image is not None else None)
    mean_p = (np.add.reduceat(probability.reshape(-1)[idx].astype(np.float64), starts) / counts
              if probability is not None else None)
    if classmap is not None:
        cls = classmap.reshape(-1)[idx].astype(np.int64)
        group = np.repeat(np.arange(ids.size), counts)
        votes = np.zeros((ids.size, int(cls.max()) + 1), dtype=np.int64)
        np.add.at(votes, (group, cls), 1)
        votes[:, 0] = -1  # background never wins a node
        node_class = votes.argmax(1)
    else:
        node_class = np.ones(ids.size, dtype=np.int64)
    names = class_names or ["background", "lymph_node"]
    vox_mm3 = voxel_volume_mm3(vol)
    sp_c = vol.spacing_zyx[list(orientation.perm)]
    axial_axis = orientation.perm[0]
    rows = []
    for i, node_id in enumerate(ids.tolist()):
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(mins[i], maxs[i]))
        crop = labels[box] == node_id
        crop_c = orientation.to_canonical(crop)
        axes = recist_axes(crop_c, sp_c)
        long_ends = short_ends = None
        if axes is not None:
            def to_world(ends_yx):
                pts_c = np.column_stack([np.full(2, axes.slice_index, dtype=np.float64), ends_yx])
                pts_in = orientation.canonical_index_to_input(pts_c, crop.shape) + mins[i]
                return np.round(vol.index_to_world(pts_in), 3).tolist()
            long_ends, short_ends = to_world(axes.long_ends), to_world(axes.short_ends)
            k_in = orientation.canonical_index_to_input(
                np.array([axes.slice_index, 0.0, 0.0]), crop.shape)[axial_axis]
            axis_slice = int(round(k_in)) + int(mins[i][axial_axis])
        short_mm = axes.short_mm if axes else 0.0
        c = int(node_class[i])
        rows.append({
            "id": int(node_id),
            "class": names[c] if c < len(names) else str(c),
            "volume_mm3": round(float(counts[i]) * vox_mm3, 3),
            "voxels": int(counts[i]),
            "centroid_mm": [round(float(v), 3) for v in world[i]],
            "bbox_voxels": [int(v) for v in mins[i]] + [int(v) for v in maxs[i]],
            "long_axis_mm": round(axes.long_mm, 3) if axes else 0.0,
            "short_axis_mm": round(short_mm, 3),
            "axis_slice": axis_slice if axes else None,
            "long_axis_ends_mm": long_ends,
            "short_axis_ends_mm": short_ends,
            "max_diameter_3d_mm": round(max_diameter_3d(crop, vol.spacing_zyx), 3),
            "mean_hu": round(float(mean_hu[i]), 2) if mean_hu is not None else None,
            "probability": round(float(mean_p[i]), 4) if mean_p is not None else None,
            "recist": recist_category(short_mm),
        })
    return rows
