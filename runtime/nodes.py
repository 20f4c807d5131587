"""Connected components, per-component statistics and the per-node table: the CPU twins of
`kernels/ccl.cu` and `kernels/stats.cu`, with the kernels' contracts (docs/ARCHITECTURE.md, "Twins").

Components (`label_components`): 26-connected by default, numbered 1..n in raster order of each
component's first voxel in the C-ordered (z, y, x) array (cc3d's and SciPy's numbering); components
below `min_voxels` are removed and the rest renumbered in the same order; labels are uint16, or uint32
past 65 535 components; a bad connectivity or shape is an `LnrtError`. The CUDA launcher
(`lnrt.kernels.cuda.label_components`) keeps the same contract.

Statistics (`component_stats`): one pass over the labelled voxels (grouped by one stable sort, never
`cc3d.statistics`, which costs about 6x the labelling, and never a Fortran-order copy), returning exactly
the kernel's fields and dtypes: count, inclusive bounding box, sums of z, y, x, intensity and
probability, class votes, and `first`, each component's first voxel in another array order (the input's
raster order when the labels are a canonical view of it), so that a pipeline that labels in canonical
order can number its nodes as the input's raster order does.

The node table (`measure_nodes`): for the components that are still reported after the rules, the RECIST
axes on each node's canonical crop (the axial plane is the patient's) and the row of the report contract.
"""
from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

from .errors import LnrtError
from .preprocess import bounding_box, box_slices
from .recist import max_diameter_3d, recist_axes, recist_category
from .volume import Orientation, Volume, voxel_volume_mm3

CONNECTIVITIES = (6, 18, 26)
NO_INDEX = np.iinfo(np.uint64).max  # `first` of an id with no voxel (the kernel's initial value)
BBOX_EMPTY = (np.iinfo(np.int32).max,) * 3 + (-1,) * 3


def is_multiclass(classes) -> bool:
    """Whether a model's class list (background first) has more than one foreground class: then nodes
    carry their class shares, and the outputs their class (class map, CSV columns, SEG/SR codes, colours)."""
    return len(classes or ()) > 2


def label_dtype(n: int):
    """The label map's dtype for n components: uint16, or uint32 past 65 535."""
    return np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32


def check_connectivity(connectivity: int) -> int:
    if connectivity not in CONNECTIVITIES:
        raise LnrtError(f"connectivity {connectivity}: expected one of {', '.join(map(str, CONNECTIVITIES))}")
    return int(connectivity)


def label_components(foreground: np.ndarray, connectivity: int = 26, min_voxels: int = 0) -> tuple:
    """(labels, n): instance labels of a (z, y, x) foreground, numbered in raster order (see above).

    Labelling runs on the foreground's bounding box only: raster order of (z, y, x) is the same in a
    crop as in the whole array, so the numbering is cc3d's on the full volume.
    """
    check_connectivity(connectivity)
    fg = np.asarray(foreground, dtype=bool)
    if fg.ndim != 3:
        raise LnrtError(f"mask of shape {fg.shape}: expected a 3D (z, y, x) volume")
    box = bounding_box(fg)
    if box is None:
        return np.zeros(fg.shape, dtype=np.uint16), 0
    crop = box_slices(box)
    labels, n = cc3d.connected_components(np.ascontiguousarray(fg[crop]), connectivity=connectivity,
                                          return_N=True)
    if n and min_voxels > 1:
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        labels, n = renumber(labels, counts >= min_voxels)
    out = np.zeros(fg.shape, dtype=label_dtype(n))
    out[crop] = labels
    return out, int(n)


def renumber(labels, keep, order=None) -> tuple:
    """Labels with only the ids where keep[id] (keep[0] ignored), renumbered 1..n: in their old order, or
    in increasing `order[id]` when given. Works on any array module (NumPy, CuPy)."""
    keep = np.asarray(keep, dtype=bool).copy()
    keep[0] = False
    ids = np.flatnonzero(keep)
    if order is not None:
        ids = ids[np.argsort(np.asarray(order)[ids], kind="stable")]
    n = int(ids.size)
    remap = np.zeros(keep.size, dtype=label_dtype(n))
    remap[ids] = np.arange(1, n + 1)
    if not isinstance(labels, np.ndarray):  # a device array: the table goes to the device
        import cupy
        remap = cupy.asarray(remap)
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
    new, _ = renumber(labels, table)
    kept = sorted((r for r, k in zip(rows, keep) if k), key=lambda r: r["id"])
    return new, [dict(row, id=i) for i, row in enumerate(kept, start=1)]


def index_map(orient: Orientation, input_shape: tuple, box_lo=(0, 0, 0)) -> tuple:
    """(base, strides): the input array's flat index of canonical voxel `box_lo + (z, y, x)` is
    `base + z * strides[0] + y * strides[1] + x * strides[2]` (how `first` is computed)."""
    in_strides = (input_shape[1] * input_shape[2], input_shape[2], 1)
    base, strides = 0, []
    for c in range(3):
        a = orient.perm[c]
        if orient.flip[c]:
            strides.append(-in_strides[a])
            base += (input_shape[a] - 1 - int(box_lo[c])) * in_strides[a]
        else:
            strides.append(in_strides[a])
            base += int(box_lo[c]) * in_strides[a]
    return int(base), tuple(int(s) for s in strides)


def component_stats(labels: np.ndarray, n_labels: int, image=None, prob=None, classes=None,
                    n_classes: int = 0, first_map: tuple | None = None) -> dict:
    """Per-component statistics of a (z, y, x) label array, indexed by id - 1 (the kernel's layout):

    count uint64 (n,); bbox int32 (n, 6) = zmin, ymin, xmin, zmax, ymax, xmax inclusive (empty ids:
    INT32_MAX and -1); sums float64 (n, 5) = sum z, y, x, intensity, probability; votes uint64
    (n, n_classes) or None (class ids >= n_classes are not counted); first uint64 (n,), the smallest
    `base + z*s0 + y*s1 + x*s2` over the component (`first_map` = (base, strides), default: the
    labels' own raster order; empty ids: UINT64_MAX). Labels above n_labels are ignored.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise LnrtError(f"labels of shape {labels.shape}: expected a 3D (z, y, x) volume")
    n = max(int(n_labels), 0)
    shape = labels.shape
    base, strides = first_map or (0, (shape[1] * shape[2], shape[2], 1))
    out = {"count": np.zeros(n, np.uint64), "bbox": np.tile(np.array(BBOX_EMPTY, np.int32), (n, 1)),
           "sums": np.zeros((n, 5), np.float64),
           "votes": np.zeros((n, n_classes), np.uint64) if classes is not None and n_classes > 0 else None,
           "first": np.full(n, NO_INDEX, np.uint64)}
    flat = labels.reshape(-1)
    idx = np.flatnonzero(flat)
    lab = flat[idx]
    inside = lab <= n
    if not inside.all():
        idx, lab = idx[inside], lab[inside]
    if idx.size == 0:
        return out
    order = np.argsort(lab, kind="stable")
    idx, lab = idx[order], lab[order]
    ids, starts, counts = np.unique(lab, return_index=True, return_counts=True)
    k = ids.astype(np.int64) - 1
    zyx = np.unravel_index(idx, shape)
    out["count"][k] = counts
    for a, c in enumerate(zyx):
        out["bbox"][k, a] = np.minimum.reduceat(c, starts)
        out["bbox"][k, a + 3] = np.maximum.reduceat(c, starts)
        out["sums"][k, a] = np.add.reduceat(c.astype(np.float64), starts)
    for col, values in ((3, image), (4, prob)):
        if values is not None:
            out["sums"][k, col] = np.add.reduceat(np.asarray(values)[zyx].astype(np.float64), starts)
    if out["votes"] is not None:
        cls = np.asarray(classes)[zyx].astype(np.int64)
        group = np.repeat(np.arange(ids.size), counts)
        ok = cls < n_classes
        table = np.bincount(group[ok] * n_classes + cls[ok], minlength=ids.size * n_classes)
        out["votes"][k] = table.reshape(ids.size, n_classes).astype(np.uint64)
    flat_in = base + zyx[0].astype(np.int64) * strides[0] + zyx[1] * strides[1] + zyx[2] * strides[2]
    out["first"][k] = np.minimum.reduceat(flat_in, starts).astype(np.uint64)
    return out


@dataclass(frozen=True)
class Frame:
    """Where a canonical label crop sits: its box origin in canonical voxels, and the scan it came from
    (input geometry and orientation), so that rows can be written in the input's terms."""

    lo: tuple  # (z, y, x) canonical index of the crop's first voxel
    vol: Volume  # the input's geometry
    orient: Orientation

    def input_sums(self, count: np.ndarray, sums_c: np.ndarray) -> np.ndarray:
        """Sums of input-order (z, y, x) indices from canonical crop-local sums: exact in float64 (integer
        arithmetic below 2**53), so the centroid is rounded once, as if summed in the input order."""
        out = np.empty_like(sums_c)
        cnt = count.astype(np.float64)
        for c in range(3):
            a = self.orient.perm[c]
            g = sums_c[:, c] + cnt * self.lo[c]
            out[:, a] = cnt * (self.vol.shape[a] - 1) - g if self.orient.flip[c] else g
        return out

    def input_box(self, bbox_c: np.ndarray) -> np.ndarray:
        """Inclusive input-order boxes (n, 6) from canonical crop-local ones."""
        out = np.empty_like(bbox_c, dtype=np.int64)
        for c in range(3):
            a = self.orient.perm[c]
            lo, hi = bbox_c[:, c].astype(np.int64) + self.lo[c], bbox_c[:, c + 3].astype(np.int64) + self.lo[c]
            if self.orient.flip[c]:
                lo, hi = self.vol.shape[a] - 1 - hi, self.vol.shape[a] - 1 - lo
            out[:, a], out[:, a + 3] = lo, hi
        return out

    def to_world(self, pts_c: np.ndarray) -> list:
        """World (x, y, z) mm, rounded to 0.001 mm, of canonical crop-local index points (n, 3)."""
        pts_in = self.orient.canonical_index_to_input(np.asarray(pts_c) + np.asarray(self.lo), self.vol.shape)
        return np.round(self.vol.index_to_world(pts_in), 3).tolist()


class MaskMemo:
    """Results of a pure function of a small boolean mask, kept by the mask's shape and bits for one
    scan's measurement. A noisy model's thousands of components repeat a few shapes: on the random-weight
    16.5 M parameter network's output (4,166 components, issue 22) 1,342 node masks and 1,854 slice masks
    were distinct, so measuring each distinct one once cut the measurement 3x, with results that are the
    same to the bit (the function sees an equal array). Masks over `MAX_VOXELS` are not kept (they do not
    repeat, and their key would cost memory)."""

    MAX_VOXELS = 4096

    def __init__(self, fn):
        self.fn, self.seen = fn, {}

    def __call__(self, mask: np.ndarray, *args):
        if mask.size > self.MAX_VOXELS:
            return self.fn(mask, *args)
        key = (mask.shape, np.packbits(mask).tobytes(), args)
        if key not in self.seen:
            self.seen[key] = self.fn(mask, *args)
        return self.seen[key]


def node_axes(labels_c: np.ndarray, ids, bbox, spacing_zyx) -> list:
    """RECIST axes (`lnrt.recist.SliceAxes` or None) of each id, on its crop `bbox[k]` (z0, y0, x0, z1, y1,
    x1 inclusive) of the canonical labels: slice indices and ends local to the crop. The CPU twin of
    `lnrt.kernels.cuda.recist_axes`."""
    out, axes = [], MaskMemo(recist_axes)
    sp = tuple(float(s) for s in spacing_zyx)
    for node_id, b in zip(np.asarray(ids).tolist(), np.asarray(bbox)):
        out.append(axes(labels_c[b[0]:b[3] + 1, b[1]:b[4] + 1, b[2]:b[5] + 1] == node_id, sp))
    return out


def measure_nodes(labels_c: np.ndarray, ids, stats: dict, frame: Frame, class_names: list | None = None,
                  mean_hu: bool = True, probability: bool = True, axes: list | None = None) -> list:
    """One row per id in `ids` (label values in the canonical crop `labels_c`), in the report contract
    (docs/ARCHITECTURE.md, "Contracts"), measured on each node's canonical crop. `axes`: the ids' RECIST
    axes when they were measured already (on the device: `lnrt.kernels.cuda.recist_axes`)."""
    vol, orient = frame.vol, frame.orient
    sp_c = vol.spacing_zyx[list(orient.perm)]
    names = class_names or ["background", "lymph_node"]
    vox_mm3 = voxel_volume_mm3(vol)
    k = np.asarray(ids, dtype=np.int64) - 1
    count = stats["count"][k]
    cents = frame.input_sums(count, stats["sums"][k, :3]) / count.astype(np.float64)[:, None]
    world = vol.index_to_world(cents)
    boxes_in = frame.input_box(stats["bbox"][k])
    if axes is None:
        axes = node_axes(labels_c, ids, stats["bbox"][k], sp_c)
    diameter, sp_in = MaskMemo(max_diameter_3d), tuple(float(s) for s in vol.spacing_zyx)
    rows = []
    for i, node_id in enumerate(np.asarray(ids).tolist()):
        b = stats["bbox"][k[i]]
        crop = labels_c[b[0]:b[3] + 1, b[1]:b[4] + 1, b[2]:b[5] + 1] == node_id
        row_axes = _axes_fields(axes[i], frame, b[:3], orient.perm[0])
        n = float(count[i])
        rows.append({
            "id": int(node_id),
            "class": _node_class(stats["votes"], k[i], names),
            "volume_mm3": round(n * vox_mm3, 3),
            "voxels": int(count[i]),
            "centroid_mm": [round(float(v), 3) for v in world[i]],
            "bbox_voxels": [int(v) for v in boxes_in[i]],
            **row_axes,
            # measured on the input-order view, as the sampled 3D directions are not symmetric under
            # axis permutations: the same number whatever the scan's storage order was before
            "max_diameter_3d_mm": round(diameter(orient.from_canonical(crop), sp_in), 3),
            "mean_hu": round(float(stats["sums"][k[i], 3] / n), 2) if mean_hu else None,
            "probability": round(float(stats["sums"][k[i], 4] / n), 4) if probability else None,
            "recist": recist_category(row_axes["short_axis_mm"]),
            **class_fields(stats, k[i], names),
        })
    return rows


def class_fields(stats: dict, k: int, names: list) -> dict:
    """A multi-class node's evidence beside its voted class (nothing for a binary model): each foreground
    class's share of the node's voxels (`class_fractions`, from the votes) and its mean probability over
    them (`class_mean_prob`; None where the probabilities are unknown, as for `lnrt measure`). A node
    whose P and ENE voxels are mixed shows it here, as Chang et al. found them confused 11 % each way."""
    votes = stats.get("votes")
    if votes is None or votes.shape[1] <= 2:
        return {}
    n = float(stats["count"][k])
    fg = [(c, names[c] if c < len(names) else str(c)) for c in range(1, votes.shape[1])]
    sums = stats.get("class_sums")
    return {"class_fractions": {name: round(float(votes[k, c]) / n, 4) for c, name in fg},
            "class_mean_prob": None if sums is None else {name: round(float(sums[k, c - 1]) / n, 4) for c, name in fg}}


def _node_class(votes, k: int, names: list) -> str:
    if votes is None:
        c = 1
    else:
        v = votes[k].astype(np.int64)
        v[0] = -1  # background never wins a node
        c = int(v.argmax())
    return names[c] if c < len(names) else str(c)


def _axes_fields(axes, frame: Frame, lo_c, axial_axis: int) -> dict:
    """The RECIST fields of a row: axes in mm, their ends in world mm, the input slice index."""
    if axes is None:
        return {"long_axis_mm": 0.0, "short_axis_mm": 0.0, "axis_slice": None, "long_axis_ends_mm": None,
                "short_axis_ends_mm": None}
    lo_c = np.asarray(lo_c, dtype=np.float64)

    def ends(yx):
        return frame.to_world(np.column_stack([np.full(2, axes.slice_index, np.float64), yx]) + lo_c)

    k_in = frame.orient.canonical_index_to_input(np.array([axes.slice_index, 0.0, 0.0]) + lo_c
                                                 + np.asarray(frame.lo), frame.vol.shape)[axial_axis]
    return {"long_axis_mm": round(axes.long_mm, 3), "short_axis_mm": round(axes.short_mm, 3),
            "axis_slice": int(round(k_in)), "long_axis_ends_mm": ends(axes.long_ends),
            "short_axis_ends_mm": ends(axes.short_ends)}


def node_table(labels: np.ndarray, vol: Volume, orientation: Orientation,
               image: np.ndarray | None = None, probability: np.ndarray | None = None,
               classmap: np.ndarray | None = None, class_names: list | None = None) -> list:
    """The rows of every node of an input-order label map (ids kept): statistics and measurement on
    the canonical view, as the pipeline does (docs/ARCHITECTURE.md, "Contracts")."""
    lab_c = orientation.to_canonical(np.asarray(labels))
    n = int(lab_c.max(initial=0))
    if n == 0:
        return []
    canon = (lambda a: None if a is None else orientation.to_canonical(np.asarray(a)))
    k = max(len(class_names or ()), int(classmap.max()) + 1) if classmap is not None else 0
    stats = component_stats(np.ascontiguousarray(lab_c), n, canon(image), canon(probability), canon(classmap), k)
    ids = np.flatnonzero(stats["count"]) + 1
    return measure_nodes(np.ascontiguousarray(lab_c), ids, stats, Frame((0, 0, 0), vol, orientation),
                         class_names, mean_hu=image is not None, probability=probability is not None)
