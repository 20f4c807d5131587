"""The pipeline of one scan: stages over a `Device`, each a function of (scan context, device) with one job.

    (previous_stage  a cascade only: the first stage's package run on the scan (prepare, window, restore)
                     -> its label map on the scan's canonical grid, timed under "previous_stage_*")
    prepare     canonical view -> model grid -> body mask, body box, neck region -> normalized input
                (a cascade: the CT, then one mask channel per first-stage label, resampled as nnU-Net does)
    window      sliding window over the body's tiles (the backend's calls timed as "network")
    restore     activation -> back onto the scan's canonical grid, only where a node can be
    components  connected components on the canonical grid + per-component statistics (one pass)
    rules       the package's rules on the statistics: size floor, neck region (centroids only)
    measure     RECIST axes and report rows of the components that can still be reported
    output      the resolution floor (needs axes), then one renumbering into the input's array order

The scan's data enters in its canonical orientation (axial slices are `array[k]`, LPS) at `prepare` and
stays so until `output`, which writes the label map in the input's array order once. Node ids follow the
contract of docs/ARCHITECTURE.md (raster order of each node's first voxel in the *input* array), from
the statistics' `first` field, so the outputs are those of labelling the input array directly.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .config import RunConfig
from .device import CPU, Device
from .errors import LnrtError
from .imageio import ScanInfo
from .nodes import Frame, index_map, label_dtype, measure_nodes
from .preprocess import (Grid, body_mask, bounding_box, box_slices, model_grid, normalize, resample,
                         target_spacing_on)
from .region import NeckRegion, find_neck_region
from .sliding_window import sliding_window
from .splines import sample_box, zoom_like_nnunet
from .volume import OBLIQUE_SILENT_DEG, Orientation, Volume, voxel_volume_mm3

log = logging.getLogger("lnrt")
Progress = Callable[[str, int, int], None]
# A native voxel can be foreground only if one of the 8 model-grid values it interpolates exceeds 0.5.
# Scores below this never count (0.001 below 0.5: far beyond float32 rounding of the interpolation).
CANDIDATE_SCORE = 0.5 - 1e-3


@dataclass
class Prepared:
    """The network's input for a scan (what `prepare` makes)."""

    native: Grid  # the scan's grid in canonical order
    grid: Grid  # the model grid over the same extent
    box: tuple | None  # the body's box on the model grid (None: no body)
    image: np.ndarray | None  # normalized network input inside the box (z, y, x), a cascade's (C, z, y, x), float32
    body: np.ndarray | None  # body mask inside the box
    neck: NeckRegion | None = None  # where findings are reported, on the model grid (None: no rule)
    ct: np.ndarray | None = None  # the scan in canonical order, on the device (on the CPU: a view of the input)


@dataclass(frozen=True)
class PreviousStage:
    """A cascade's first stage as its session holds it: its own configuration, backend and CPU fallback
    (out of device memory its window falls back as the second stage's does)."""

    config: RunConfig
    backend: object
    fallback: Callable | None = None


@dataclass
class Scan:
    """One scan's state as it passes through the stages; each stage fills its own fields."""

    vol: Volume  # the input as read (array in the input's order)
    info: ScanInfo
    config: RunConfig
    orient: Orientation
    backend: object = None
    progress: Progress | None = None
    fallback: Callable | None = None  # () -> the CPU backend to use when the device runs out of memory
    warnings: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    previous: PreviousStage | None = None  # a cascade's first stage (None: one stage)
    previous_seg: np.ndarray | None = None  # previous_stage: its label map on the canonical native grid
    prep: Prepared | None = None  # prepare
    logits: np.ndarray | None = None  # window: (K, z, y, x) on the body box of the model grid
    covered: np.ndarray | None = None
    tiles: int = 0
    fg_box: tuple | None = None  # restore: canonical native box holding every possible node voxel
    fg: np.ndarray | None = None  # ... foreground there (bool), its probability and (K > 2) classes
    prob: np.ndarray | None = None
    classes: np.ndarray | None = None
    class_prob: np.ndarray | None = None  # (K, ...) each class's probability there (K > 2 only)
    labels: np.ndarray | None = None  # components: labels over fg_box (canonical, uint32 or uint16)
    stats: dict | None = None
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ids still reported
    rules: dict = field(default_factory=dict)
    nodes: list = field(default_factory=list)  # measure: one row per id in `ids`
    output: np.ndarray | None = None  # output: the label map in the input's array order

    @property
    def source(self) -> str:
        return self.info.path

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning("%s", msg)


def orientation(vol: Volume, source: str, warnings: list) -> Orientation:
    o = Orientation.of(vol.direction, source)
    if o.obliquity_deg > OBLIQUE_SILENT_DEG:
        msg = (f"{source}: image axes are {o.obliquity_deg:.1f} degrees oblique; axes are measured in "
               "the image's own slice plane, the mask stays on the input grid")
        warnings.append(msg)
        log.warning(msg)
    return o


# -- prepare ---------------------------------------------------------------------------------------
def prepare_volume(vol: Volume, orient: Orientation, cfg: RunConfig, dev: Device = CPU,
                   previous_seg: np.ndarray | None = None) -> Prepared:
    """The canonical scan resampled to the model grid, cropped to the body's box and normalized (what
    the sliding window sees), with the body mask and the neck region. The scan enters the device here,
    once (on the CPU: not copied). A cascade's first-stage labels `previous_seg` (canonical native grid)
    add one mask channel per `cfg.previous_labels` after the CT (`mask_channels`)."""
    ct_c = orient.to_canonical(dev.asarray(vol.array))
    native = Grid(tuple(ct_c.shape), tuple(vol.spacing_zyx[list(orient.perm)]))
    mgrid = model_grid(native, cfg.spacing_zyx)
    hu = resample(ct_c, native, mgrid, linear=True, default=-1024.0, dev=dev)
    body = body_mask(hu, cfg.body, dev)
    margin = [math.ceil(cfg.body.margin_mm / s) for s in mgrid.spacing]
    box = bounding_box(body, margin)
    if box is None:
        return Prepared(native, mgrid, None, None, None, ct=ct_c)
    if cfg.body.tiling == "whole_scan":  # the reference's tile grid: the whole scan, body tiles run
        box = tuple((0, n) for n in hu.shape)
    neck = None
    if cfg.neck:
        outline = body if cfg.body.enabled else body_mask(hu, replace(cfg.body, enabled=True), dev)
        neck = find_neck_region(outline, mgrid.spacing, cfg.neck)
    x = model_input(ct_c, hu, native, mgrid, box, cfg, dev)
    if cfg.previous_labels:
        seg = dev.xp.zeros(native.shape, np.uint8) if previous_seg is None else previous_seg
        x = dev.xp.concatenate([x[None], mask_channels(seg, cfg.previous_labels, native, mgrid.crop(box), dev)])
    return Prepared(native, mgrid, box, x, body[box_slices(box)], neck, ct_c)


def model_input(ct_c, hu, native: Grid, mgrid: Grid, box: tuple, cfg: RunConfig, dev: Device = CPU):
    """The network's CT channel inside `box`. lnrt's way: the HU resampled linearly (`hu`), then
    normalized (in place). nnU-Net's way (`cfg.resample_data`): the scan normalized on its own grid, then
    resampled with nnU-Net's splines (`lnrt.splines`), so the network sees what nnU-Net would feed it."""
    if cfg.resample_data is None:
        return normalize(hu[box_slices(box)], cfg.recipe)
    x = normalize(dev.xp.array(ct_c, dtype=np.float32, order="C"), cfg.recipe)  # a copy, in C order
    target = target_spacing_on(native, cfg.spacing_zyx)
    x = zoom_like_nnunet(x, mgrid.shape, native.spacing, target, cfg.resample_data, dev.xp)
    return x[box_slices(box)]


def mask_channels(seg, labels: tuple, native: Grid, dst: Grid, dev: Device = CPU) -> np.ndarray:
    """(len(labels), z, y, x) float32 on `dst`: one-hot masks (1.0 / 0.0) of `seg` (on `native`)
    resampled as nnU-Net resamples a previous stage's segmentation (`resample_data_or_seg` with is_seg,
    order 1, then `convert_labelmap_to_one_hot`): each present label's indicator interpolated linearly,
    the largest wins, and an exact tie goes to the nearest neighbour's label when it is among the tied
    (batchgenerators' `resize_segmentation`; before its 0.25.5 a label won where its indicator reached
    0.5, the same wherever only two labels meet, up to those exact ties). Outside the scan the edge
    value is kept (nnU-Net's mode "edge")."""
    xp = dev.xp
    if native == dst:
        return xp.stack([seg == lab for lab in labels]).astype(np.float32)
    # only the native voxels `dst` interpolates from (its extent and one voxel around), not the whole scan
    region = tuple((max(0, lo - 1), min(n, hi + 1)) for (lo, hi), n in zip(native_region(native, dst), native.shape))
    seg, native = seg[box_slices(region)], native.crop(region)
    present = [int(v) for v in dev.to_host(xp.unique(seg))]
    nearest = resample(seg, native, dst, linear=False, dev=dev)
    best = win = at_nearest = None
    for lab in present:
        score = resample((seg == lab).astype(np.float32), native, dst, linear=True, dev=dev)
        if best is None:
            best, win, at_nearest = score, xp.full(score.shape, lab, np.int32), xp.zeros_like(score)
        else:
            better = score > best
            win[better] = lab
            xp.maximum(best, score, out=best)
        at_nearest = xp.where(nearest == lab, score, at_nearest)
    tie = (at_nearest == best) & (best > 0)
    win[tie] = nearest[tie].astype(np.int32)
    return xp.stack([win == lab for lab in labels]).astype(np.float32)


def previous_stage(scan: Scan, dev: Device) -> None:
    """A cascade's first stage: its package's prepare, window and restore on this scan, the argmax class
    of every canonical native voxel kept as `scan.previous_seg` (background where restore found no
    candidate). Its stages' times are this scan's `previous_stage_<stage>` timings; its warnings are
    this scan's, prefixed."""
    ps = scan.previous
    first = Scan(scan.vol, scan.info, ps.config, scan.orient, ps.backend, fallback=ps.fallback,
                 progress=scan.progress and (lambda st, d, t: scan.progress(f"first stage {st}", d, t)))
    run_stages(first, dev, FIRST_STAGES)
    scan.timings.update({f"previous_stage_{k}": v for k, v in first.timings.items()})
    for msg in first.warnings:
        scan.warn(f"first stage: {msg}")
    seg = dev.xp.zeros(first.prep.native.shape, np.uint8)
    if first.fg_box is not None:
        seg[box_slices(first.fg_box)] = first.fg if first.classes is None else first.classes
    scan.previous_seg = seg


def prepare(scan: Scan, dev: Device) -> None:
    scan.prep = prepare_volume(scan.vol, scan.orient, scan.config, dev, scan.previous_seg)
    scan.previous_seg = None
    if scan.prep.box is None:
        scan.warn(f"{scan.source}: no body found above {scan.config.body.threshold_hu:g} HU; no nodes")


# -- window ----------------------------------------------------------------------------------------
def window(scan: Scan, dev: Device) -> None:
    """Sliding-window logits over the body's tiles; the backend's own time is the "network" stage.

    Out of device memory (the backend raises MemoryError): the tile batch is halved and the window run
    again, down to one tile; then the scan falls back to the session's CPU backend, with a warning in the
    report. A scan never crashes on it."""
    prep = scan.prep
    if prep.box is None:
        return
    cfg, net = scan.config.window, [0.0]

    def predict(batch):
        t0 = dev.clock()
        try:
            if getattr(scan.backend, "device", "cpu") == "cpu" and dev.kind != "cpu":  # the CPU fallback
                out = dev.asarray(scan.backend.run(dev.to_host(batch)))
            else:
                out = scan.backend.run(batch)
        except MemoryError as exc:
            raise NetworkOutOfMemory(str(exc)) from exc
        net[0] += dev.clock() - t0
        return out

    def tiles_done(done, total):
        scan.tiles = total
        if scan.progress:
            scan.progress("network", done, total)

    t0 = dev.clock()
    while True:
        try:
            scan.logits, scan.covered = sliding_window(prep.image, predict, cfg, mask=prep.body,
                                                       progress=tiles_done, xp=dev.xp)
            break
        except NetworkOutOfMemory as exc:  # the stage's own allocations are the session's to handle
            cfg = _after_out_of_memory(scan, cfg, exc)
    scan.timings["network"] = net[0]
    scan.timings["accumulate"] = dev.clock() - t0 - net[0]


class NetworkOutOfMemory(MemoryError):
    """The backend ran out of memory for a batch (not the stage's own arrays)."""


def _after_out_of_memory(scan: Scan, cfg, exc):
    """The window configuration to retry with after `exc`, or an `LnrtError` when nothing is left."""
    name = getattr(scan.backend, "name", "backend")
    if cfg.batch_size > 1:
        scan.warn(f"{scan.source}: {name} ran out of memory at a batch of {cfg.batch_size} tiles; "
                  f"retrying with {cfg.batch_size // 2}")
        return replace(cfg, batch_size=cfg.batch_size // 2)
    if scan.fallback is None:
        raise LnrtError(f"{scan.source}: {name} ran out of memory with one tile ({exc}); expected a "
                        "smaller model or more memory") from None
    scan.backend, scan.fallback = scan.fallback(), None
    scan.warn(f"{scan.source}: {name} ran out of memory with one tile; this scan ran on the CPU "
              f"({scan.backend.name})")
    return scan.config.window


# -- restore ---------------------------------------------------------------------------------------
def activate(logits: np.ndarray, activation: str, xp=np) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + xp.exp(-logits))
    logits = logits - logits.max(axis=0, keepdims=True)
    xp.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


def native_region(native: Grid, crop: Grid) -> tuple:
    """Box of native voxels whose centres lie inside the crop grid's extent."""
    box = []
    for a in range(3):
        lo_edge = crop.origin[a] - 0.5 * crop.spacing[a]
        hi_edge = lo_edge + crop.shape[a] * crop.spacing[a]
        lo = math.ceil((lo_edge - native.origin[a]) / native.spacing[a] - 1e-6)
        hi = math.floor((hi_edge - native.origin[a]) / native.spacing[a] + 1e-6)
        box.append((max(0, lo), min(native.shape[a], hi + 1)))
    return tuple(box)


def dilate(mask: np.ndarray) -> np.ndarray:
    """Dilation by the 3x3x3 cube (three separable passes)."""
    out = mask.copy()
    for axis in range(3):
        src = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(1, None), slice(None, -1)
        out[tuple(hi)] |= src[tuple(lo)]
        out[tuple(lo)] |= src[tuple(hi)]
    return out


def candidate_boxes(score: np.ndarray, crop: Grid, native: Grid, region: tuple, dev: Device = CPU) -> list:
    """Native boxes (within `region`) that hold every voxel whose interpolated score can exceed 0.5:
    one per 26-connected part of the model-grid voxels above CANDIDATE_SCORE, grown by two model voxels
    (the 2x2x2 interpolation cell, plus one of slack) and one native voxel."""
    parts, n = dev.ops.label(dilate(score > CANDIDATE_SCORE), 26)
    if n == 0:
        return []
    bbox = dev.ops.stats(parts, n)["bbox"]
    boxes = []
    for b in bbox:
        box = []
        for a in range(3):
            lo_mm = crop.origin[a] + (int(b[a]) - 2) * crop.spacing[a]
            hi_mm = crop.origin[a] + (int(b[a + 3]) + 2) * crop.spacing[a]
            lo = math.floor((lo_mm - native.origin[a]) / native.spacing[a]) - 1
            hi = math.ceil((hi_mm - native.origin[a]) / native.spacing[a]) + 2
            box.append((max(region[a][0], lo), min(region[a][1], hi)))
        if all(a < b for a, b in box):
            boxes.append(tuple(box))
    return boxes


def restore(scan: Scan, dev: Device) -> None:
    """Class and foreground probability back on the scan's canonical grid, computed only inside the
    boxes where a native voxel can be foreground (elsewhere it is background by construction)."""
    if scan.logits is None:
        return
    prep, cfg, xp = scan.prep, scan.config, dev.xp
    logits = scan.logits if cfg.resample_logits is not None else None
    probs = activate(scan.logits if logits is None else scan.logits.copy(), cfg.activation, xp)
    scan.logits = None
    probs[:, ~scan.covered] = 0.0
    probs[0, ~scan.covered] = 1.0
    crop = prep.grid.crop(prep.box)
    binary = len(cfg.classes) == 2
    score = probs[1] if binary else 1.0 - probs[0]
    boxes = candidate_boxes(score, crop, prep.native, native_region(prep.native, crop), dev)
    if not boxes:
        return
    fg_box = tuple((min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(3))
    shape = tuple(hi - lo for lo, hi in fg_box)
    scan.fg_box, scan.fg = fg_box, xp.zeros(shape, bool)
    scan.prob = xp.zeros(shape, np.float32)
    scan.classes = None if binary else xp.zeros(shape, np.uint8)
    scan.class_prob = None if binary else xp.zeros((len(probs),) + shape, np.float32)
    back_at = native_probabilities(probs[1:2] if binary else probs, logits, scan, dev)
    for box in boxes:
        sl = tuple(slice(lo - f[0], hi - f[0]) for (lo, hi), f in zip(box, fg_box))
        back = back_at(box)
        if binary:
            scan.fg[sl] |= back[0] > 0.5
            scan.prob[sl] = back[0]
        else:
            cls = xp.argmax(back, axis=0).astype(np.uint8)
            scan.classes[sl], scan.fg[sl], scan.prob[sl] = cls, cls > 0, 1.0 - back[0]
            scan.class_prob[(slice(None),) + sl] = back


def native_probabilities(probs, logits, scan: Scan, dev: Device) -> Callable:
    """A function `native box -> (C, z, y, x)` probabilities there. lnrt's way (`logits` None): `probs`
    (the channels kept) interpolated linearly. nnU-Net's way: the logits interpolated as nnU-Net brings
    them back (`cfg.resample_logits`), rounded to half when its sums were (`accumulate`), then
    activated; voxels no tile covered get background's logit 1 and 0 elsewhere, as if a tile had said
    so mildly. Linear on every axis is the device's own linear resampler (nnU-Net's order 1 with edge
    values, to float32 rounding; its C++ loop is cheaper per box than `sample_box`'s NumPy steps)."""
    prep, cfg, xp = scan.prep, scan.config, dev.xp
    crop = prep.grid.crop(prep.box)
    if logits is None:
        channels = [dev.ops.resampler(p, crop) for p in probs]
        return lambda box: xp.stack([r(prep.native.crop(box)) for r in channels])
    logits[:, ~scan.covered] = 0.0
    logits[0, ~scan.covered] = 1.0
    target = target_spacing_on(prep.native, cfg.spacing_zyx)
    res, offset = cfg.resample_logits, tuple(lo for lo, _ in prep.box)
    if prep.grid == prep.native:  # the scan is on the model's grid: nothing to interpolate
        at = lambda box: logits[(slice(None),) + tuple(slice(lo - o, hi - o)  # noqa: E731
                                                       for (lo, hi), o in zip(box, offset))]
    elif res.order == 1 and res.separate_axis(target, prep.native.spacing) is None:
        channels = [dev.ops.resampler(c, crop) for c in logits]
        at = lambda box: xp.stack([r(prep.native.crop(box)) for r in channels])  # noqa: E731
    else:
        at = lambda box: sample_box(logits, prep.grid.shape, prep.native.shape, offset, box,  # noqa: E731
                                    target, prep.native.spacing, res, xp)
    half = cfg.window.accumulate == "float16"
    binary = len(cfg.classes) == 2

    def back(box):
        # nnU-Net's resampled logits keep its sums' dtype: half, when it summed in half
        z = at(box).astype(np.float16 if half else np.float32).astype(np.float32)
        if binary and cfg.activation == "softmax":  # two classes: the foreground's softmax, one exp
            return 1.0 / (1.0 + xp.exp(xp.clip(z[0:1] - z[1:2], -80.0, 80.0)))
        p = activate(z, cfg.activation, xp)
        return p[1:2] if binary else p
    return back


# -- components and rules --------------------------------------------------------------------------
def components(scan: Scan, dev: Device) -> None:
    """Connected components of the foreground (canonical grid) and their statistics in one pass."""
    if scan.fg is None:
        return
    cfg = scan.config
    labels, n = dev.ops.label(scan.fg, cfg.connectivity)
    scan.fg = None
    if cfg.split_touching_mm > 0:
        labels, n = split_components(scan, dev, labels, n)
    lo = [a for a, _ in scan.fg_box]
    ct = scan.prep.ct[box_slices(scan.fg_box)]
    k = len(cfg.classes) if scan.classes is not None else 0
    scan.labels = labels
    scan.stats = dev.ops.stats(labels, n, ct, scan.prob, scan.classes, k,
                               first_map=index_map(scan.orient, scan.vol.shape, lo))
    if scan.class_prob is not None:
        scan.stats["class_sums"] = class_sums(labels, n, scan.class_prob, dev)
        scan.class_prob = None
    keep = scan.stats["count"] >= max(cfg.min_voxels(voxel_volume_mm3(scan.vol)), 1)
    scan.ids = np.flatnonzero(keep) + 1
    # what the size floor removed, said in the report: with a noisy model it can be most of the mask
    scan.rules["min_volume"] = {"mm3": cfg.min_volume_mm3, "dropped": int(n - scan.ids.size),
                                "voxels_dropped": int(scan.stats["count"][~keep].sum())}


def split_components(scan: Scan, dev: Device, labels, n: int) -> tuple:
    """(labels, n) with touching nodes cut apart (`lnrt.touching`), on the host: on a GPU the labels of
    the foreground box make one round trip. The report says how many components were cut."""
    from .touching import split_touching

    cfg = scan.config
    spacing_c = scan.vol.spacing_zyx[list(scan.orient.perm)]
    out, m, cut = split_touching(dev.to_host(labels), n, spacing_c, cfg.split_touching_mm,
                                 cfg.min_voxels(voxel_volume_mm3(scan.vol)), cfg.connectivity)
    scan.rules["split_touching"] = {"h_mm": cfg.split_touching_mm, "split": cut, "pieces_added": m - n}
    return (dev.asarray(out) if cut else labels), m


def class_sums(labels, n: int, class_prob, dev: Device = CPU) -> np.ndarray:
    """(n, K - 1) float64: the sum of each foreground class's probability over each component's voxels
    (rows indexed by id - 1, as the statistics; column c - 1 for class c, background is never reported),
    for the nodes' mean class probabilities. One weighted count per class, on the device where the
    labels are; only (n, K - 1) numbers come to the host."""
    xp, flat = dev.xp, labels.reshape(-1)
    cols = [xp.bincount(flat, weights=p.reshape(-1).astype(np.float64), minlength=n + 1)[1:n + 1]
            for p in class_prob[1:]]
    return np.asarray(dev.to_host(xp.stack(cols, axis=1)), dtype=np.float64)


def rules(scan: Scan, dev: Device) -> None:
    """The neck region on the components' centroids (canonical model-grid slice, mm across): what lies
    outside is never measured. The resolution floor needs the axes and runs in `output`."""
    region, cfg = scan.prep.neck if scan.prep else None, scan.config
    if not cfg.neck or region is None:
        return
    ids = scan.ids
    outside = np.zeros(ids.size, dtype=bool)
    if ids.size:
        st = scan.stats
        c = st["sums"][ids - 1, :3] / st["count"][ids - 1, None].astype(np.float64) + np.array(
            [a for a, _ in scan.fg_box])
        native, mgrid = scan.prep.native, scan.prep.grid
        k = np.floor((c[:, 0] + 0.5) * native.spacing[0] / mgrid.spacing[0])
        outside = ~region.contains(k, (c[:, 2] + 0.5) * native.spacing[2])
    scan.rules["neck_region"] = {**cfg.neck.to_dict(), "neck_sized": region.found,
                                 "across_mm": region.x_mm and [round(v, 1) for v in region.x_mm],
                                 "dropped": int(outside.sum())}
    scan.ids = ids[~outside]
    if not region.found:
        lo, hi = cfg.neck.width_mm
        scan.warn(f"{scan.source}: no neck-sized body section (left-right width {lo:g}-{hi:g} mm) in "
                  f"this scan; the model is for the neck, so no nodes are reported "
                  f"({int(outside.sum())} found; --all-regions reports them)")


# -- measure and output ----------------------------------------------------------------------------
def measure(scan: Scan, dev: Device) -> None:
    """RECIST axes and report rows of the components still reported. The axes are measured where the
    labels are (on a GPU: every node at once); then the labels over the nodes' box come to the host, the
    one array besides the node table that leaves the device."""
    if scan.stats is None or scan.ids.size == 0:
        scan.labels = dev.to_host(scan.labels)
        return
    sp_c = scan.vol.spacing_zyx[list(scan.orient.perm)]
    axes = dev.ops.axes(scan.labels, scan.ids, scan.stats["bbox"][scan.ids - 1], sp_c)
    scan.labels = dev.to_host(scan.labels)
    frame = Frame(tuple(a for a, _ in scan.fg_box), scan.vol, scan.orient)
    scan.nodes = measure_nodes(scan.labels, scan.ids, scan.stats, frame, list(scan.config.classes), axes=axes)


def output(scan: Scan, dev: Device) -> None:
    """The resolution floor, then the label map in the input's array order, renumbered once: ids in
    raster order of each node's first voxel in the input array (the contract's numbering)."""
    cfg = scan.config
    if cfg.min_short_axis_px > 0:
        floor = cfg.min_short_axis_px * min(scan.prep.native.spacing[1:])
        thin = np.array([n["short_axis_mm"] < floor for n in scan.nodes], dtype=bool)
        scan.rules = {"min_short_axis": {"px": cfg.min_short_axis_px, "mm": round(floor, 3),
                                         "dropped": int(thin.sum())}, **scan.rules}
        scan.nodes = [n for n, t in zip(scan.nodes, thin) if not t]
    scan.nodes, scan.output = number_nodes(scan.nodes, scan.stats, scan.labels, scan.fg_box, scan.orient,
                                           scan.vol.shape)
    scan.labels = None


def number_nodes(nodes: list, stats: dict | None, labels_c, box: tuple | None, orient: Orientation,
                 shape: tuple) -> tuple:
    """(rows, label map in the input's array order): the nodes renumbered 1..n in increasing `first`
    (raster order of their first voxel in the input array), each written once, inside its own box,
    through the canonical view of the output."""
    ids = np.array([n["id"] for n in nodes], dtype=np.int64)
    out = np.zeros(shape, dtype=label_dtype(ids.size))
    if not ids.size:
        return [], out
    order = np.argsort(stats["first"][ids - 1], kind="stable")
    view = orient.to_canonical(out)
    lo = np.array([a for a, _ in box])
    for new_id, i in enumerate(order, start=1):
        b = stats["bbox"][ids[i] - 1].astype(np.int64)
        local = tuple(slice(b[a], b[a + 3] + 1) for a in range(3))
        glob = tuple(slice(lo[a] + b[a], lo[a] + b[a + 3] + 1) for a in range(3))
        view[glob][labels_c[local] == ids[i]] = new_id
    return [dict(nodes[i], id=j) for j, i in enumerate(order, start=1)], out


@dataclass(frozen=True)
class Stage:
    name: str  # the timing key
    run: Callable[[Scan, Device], None]
    timed: bool = True  # False: the stage records its own timings and progress (window, previous_stage)


STAGES = (Stage("preprocess", prepare), Stage("window", window, timed=False), Stage("postprocess", restore),
          Stage("components", components), Stage("rules", rules), Stage("measure", measure),
          Stage("output", output))
FIRST_STAGES = STAGES[:3]  # what a cascade's first stage runs: its label map is all the second needs
CASCADE_STAGES = (Stage("previous_stage", previous_stage, timed=False),) + STAGES


def run_stages(scan: Scan, dev: Device, stages=None) -> Scan:
    """Run `stages` (default: `STAGES`, or `CASCADE_STAGES` for a scan with a previous stage) in order."""
    for stage in stages or (STAGES if scan.previous is None else CASCADE_STAGES):
        if scan.progress and stage.timed:
            scan.progress(stage.name, 0, 0)
        t0 = dev.clock()
        stage.run(scan, dev)
        if stage.timed:
            scan.timings[stage.name] = dev.clock() - t0
    return scan


def settings(scan: Scan) -> dict:
    """The report's settings: the configuration's, plus what this run found (grid, box, tiles, rules)."""
    base, prep, o = scan.config.to_dict(), scan.prep, scan.orient
    split = {"split_touching_mm": base["split_touching_mm"]} if "split_touching_mm" in base else {}
    return {**split, "sliding_window": base["sliding_window"],
            "model_grid_zyx": list(prep.grid.shape) if prep else None,
            "body_box_zyx": prep and prep.box and [list(b) for b in prep.box], "tiles": scan.tiles,
            "min_volume_mm3": base["min_volume_mm3"], "connectivity": base["connectivity"], "rules": scan.rules,
            "orientation": {"perm": list(o.perm), "flip": list(o.flip), "obliquity_deg": round(o.obliquity_deg, 3)}}
