"""QC pictures a radiologist checks in seconds, and one self-contained HTML page.

Node pictures: an axial crop at the measured slice, always the same field of view (60 mm square,
centred on the node; 80, 100, ... mm for a node whose in-plane extent plus a 15 mm margin on each side
does not fit), resampled to 480 x 480 square display pixels (bicubic for the CT, nearest for the
outline, so a 3.9 mm scan is not blocky and the outline is the mask as it is), CT window W 400 / L 40,
radiological convention (patient's right on the picture's left, anterior at the top). Every picture has a
10 mm scale bar, orientation letters on its edges, the node's outline in its colour, and the long axis
(yellow) and short axis (cyan) drawn from their reported end points and labelled in mm. Region outside
the scan is tinted blue-grey, not black, so it is not mistaken for air.

Overview: maximum-intensity projections in a wide bone window, W 2500 / L 700, cropped to the body. A
W 400 / L 40 MIP is white wherever a ray meets bone or contrast; the wide window keeps the skeleton
(skull base, mandible, spine, clavicles) as the landmarks that give a node's level and side, with the
soft tissue in grey. The coronal MIP spans the whole scan; the axial MIP spans only the nodes'
superior-inferior extent plus 15 mm (dotted lines on the coronal panel), so the skull and shoulders of
other levels do not cover the neck. Every node is circled at its centroid and numbered (the 40 largest
when there are more; the title says how many are not). Thin stacks: a coronal panel whose height would
be under 160 px (a 10-slice, 2 mm series is a 20 mm strip) is stretched superior-inferior to 160 px,
and its title says by how much. Titles sit in a strip above each picture, never on it.

Every label (axis lengths, node numbers) is placed by `place_labels`: candidate positions around its
anchor, nearest first, the first one that overlaps no other label, no scale bar, orientation letter
or title and stays inside the picture; a leader line joins a label that had to move away to its axis
or node. The HTML page inlines every picture (base64), so it opens from a USB stick with no network
access; its node table sorts by any column (short axis first). Needs Pillow (`pip install 'lnrt[qc]'`).
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .optional import require
from .viewer import CLASS_RGB, class_index, node_color, node_name
from .volume import Orientation, world_to_index

WINDOW = (-160.0, 240.0)  # W 400 / L 40: soft tissue (node pictures)
OVERVIEW_WINDOW = (-550.0, 1950.0)  # W 2500 / L 700: wide bone window for the overview MIPs
FOV_MM, FOV_STEP_MM = 60.0, 20.0  # node pictures: 60 mm square, larger in 20 mm steps
CROP_MARGIN_MM = 15.0  # free margin around the node on each side
NODE_PX = 480  # node picture: NODE_PX x NODE_PX image (plus a title strip above)
SCALE_BAR_MM = 10.0
OVERVIEW_PANEL_PX = 480  # overview panels' width
OVERVIEW_MAX_H_PX = 640
MIN_CORONAL_PX = 160  # thinner coronal panels are stretched superior-inferior, and say so
OVERVIEW_MAX_LABELS = 40  # more nodes than that: only the 40 largest are numbered (said in the title)
OVERVIEW_LEADER_MAX_PX = 80.0  # a number is never farther than that from its node
HEADER_PX = 30
LONG_RGB, SHORT_RGB = (255, 230, 0), (0, 230, 255)
TEXT_RGB, LETTER_RGB = (255, 255, 255), (235, 235, 235)
OUTSIDE_RGB = (28, 34, 58)  # outside the scanned volume
AXIAL_SLAB_MARGIN_MM = 15.0  # axial overview: MIP over the nodes' slab, this much beyond each node
BODY_HU = -400.0  # overview crop: voxels above this are the body (or the table)


# ---------------------------------------------------------------- label layout (pure, no Pillow)

@dataclass(frozen=True)
class Label:
    """A label to place: its size in pixels, the points it may sit next to (axis ends, a node's
    centre), and the target a leader line points to (a segment; a point is a segment of length 0)."""

    w: float
    h: float
    anchors: tuple  # ((x, y), ...): candidate positions are generated around each, in order
    target: tuple  # ((x0, y0), (x1, y1))
    target_radius: float = 0.0  # a leader line stops this far from the target (a node's circle)
    away_from: tuple | None = None  # (x, y): prefer directions pointing away from it (the node's centre)
    anchor_radius: float = 0.0  # candidates start this far from each anchor (a node's circle)


@dataclass(frozen=True)
class Placed:
    box: tuple | None  # (x0, y0, x1, y1), or None when no free place exists on the canvas
    leader: tuple | None  # ((x0, y0), (x1, y1)) from the box's edge towards the target, or None


_RINGS = (3.0, 8.0, 14.0, 22.0, 32.0, 45.0, 60.0, 80.0, 105.0, 135.0, 170.0, 210.0)
_DIRS = [(math.cos(a), -math.sin(a)) for a in np.radians(np.arange(0, 360, 22.5))]


def boxes_overlap(a, b, gap: float = 0.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _inside(box, canvas) -> bool:
    return box[0] >= 0 and box[1] >= 0 and box[2] <= canvas[0] and box[3] <= canvas[1]


def _seg_point_dist(p, a, b) -> tuple:
    """(distance, closest point) from p to the segment a-b."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    L2 = dx * dx + dy * dy
    t = 0.0 if L2 == 0 else max(0.0, min(1.0, ((p[0] - ax) * dx + (p[1] - ay) * dy) / L2))
    q = (ax + t * dx, ay + t * dy)
    return math.hypot(p[0] - q[0], p[1] - q[1]), q


def _box_point(box, p) -> tuple:
    return (min(max(p[0], box[0]), box[2]), min(max(p[1], box[1]), box[3]))


def box_segment_distance(box, a, b) -> tuple:
    """(distance, point on the box, point on the segment) between a box and a segment; 0 if they meet."""
    if _segment_hits_box(a, b, box):
        return 0.0, _box_point(box, a), a
    best = None
    corners = ((box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3]))
    for c in corners:  # box corner to segment
        d, q = _seg_point_dist(c, a, b)
        if best is None or d < best[0]:
            best = (d, c, q)
    for p in (a, b):  # segment end to box
        q = _box_point(box, p)
        d = math.hypot(p[0] - q[0], p[1] - q[1])
        if d < best[0]:
            best = (d, q, p)
    return best


def _segment_hits_box(a, b, box) -> bool:
    """Liang-Barsky: does the segment a-b meet the box?"""
    x0, y0 = a
    dx, dy = b[0] - x0, b[1] - y0
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x0 - box[0]), (dx, box[2] - x0), (-dy, y0 - box[1]), (dy, box[3] - y0)):
        if p == 0:
            if q < 0:
                return False
        else:
            t = q / p
            if p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
            if t0 > t1:
                return False
    return True


def _candidates(lab: Label, canvas, max_dist=None):
    """Boxes around the anchors, nearest ring first; within a ring, directions away from `away_from`
    first. Then a grid over the whole canvas by distance to the first anchor, so a free place is
    always found when one exists on the grid (within `max_dist` of the first anchor, if given)."""
    w, h = lab.w, lab.h
    for d in _RINGS:
        if max_dist is not None and d > max_dist + lab.anchor_radius:
            break
        for ax, ay in lab.anchors:
            dirs = _DIRS
            if lab.away_from is not None:
                ox, oy = ax - lab.away_from[0], ay - lab.away_from[1]
                if ox or oy:
                    dirs = sorted(_DIRS, key=lambda u: -(u[0] * ox + u[1] * oy) / math.hypot(ox, oy))
            for ux, uy in dirs:
                cx = ax + ux * (d + lab.anchor_radius + w / 2)
                cy = ay + uy * (d + lab.anchor_radius + h / 2)
                x0 = min(max(cx - w / 2, 0.0), canvas[0] - w)
                y0 = min(max(cy - h / 2, 0.0), canvas[1] - h)
                yield (x0, y0, x0 + w, y0 + h)
    step = max(3.0, min(w, h) / 2)
    ax, ay = lab.anchors[0]
    xs = np.arange(0.0, canvas[0] - w + 1e-9, step)
    ys = np.arange(0.0, canvas[1] - h + 1e-9, step)
    if xs.size and ys.size:
        gx, gy = np.meshgrid(xs, ys)
        dist = np.hypot(np.maximum(np.abs(gx + w / 2 - ax) - w / 2, 0), np.maximum(np.abs(gy + h / 2 - ay) - h / 2, 0))
        order = np.argsort(dist, axis=None, kind="stable")
        for i in order:
            if max_dist is not None and dist.flat[i] > max_dist + lab.anchor_radius:
                break
            x0, y0 = float(gx.flat[i]), float(gy.flat[i])
            yield (x0, y0, x0 + w, y0 + h)


def place_labels(canvas, labels, obstacles=(), avoid=(), avoid_segments=(), gap: float = 2.0,
                 leader_px: float = 12.0, max_dist: float | None = None) -> list:
    """Place `labels` (in order) on a `canvas` = (width, height) in pixels.

    Hard rules: every box lies inside the canvas and no two boxes (nor a box and an `obstacles` box)
    come closer than `gap`. Soft rules, dropped only where no place obeys them: no box covers an `avoid`
    box (a node) or crosses an `avoid_segments` segment (an axis). A label that ends up farther than
    `leader_px` from its target gets a leader line. A label bigger than the canvas, or with no free
    place at all (within `max_dist` pixels of its first anchor's circle, when given, so leader lines stay
    short), gets `Placed(None, None)` (the caller says so elsewhere).
    """
    taken = [tuple(map(float, b)) for b in obstacles]
    out = []
    for lab in labels:
        if lab.w > canvas[0] or lab.h > canvas[1]:
            out.append(Placed(None, None))
            continue
        cands = list(_candidates(lab, canvas, max_dist))
        if max_dist is not None:
            a = lab.anchors[0]
            cands = [c for c in cands if box_segment_distance(c, a, a)[0] <= max_dist + lab.anchor_radius]
        box = None
        for soft in (True, False):
            for c in cands:
                if not _inside(c, canvas) or any(boxes_overlap(c, t, gap) for t in taken):
                    continue
                if soft and (any(boxes_overlap(c, a) for a in avoid)
                             or any(_segment_hits_box(s[0], s[1], c) for s in avoid_segments)):
                    continue
                box = c
                break
            if box is not None:
                break
        if box is None:
            out.append(Placed(None, None))
            continue
        taken.append(box)
        d, on_box, on_target = box_segment_distance(box, *lab.target)
        leader = None
        if d - lab.target_radius > leader_px:
            vx, vy = on_box[0] - on_target[0], on_box[1] - on_target[1]
            n = math.hypot(vx, vy) or 1.0
            r = lab.target_radius
            leader = (on_box, (on_target[0] + vx / n * r, on_target[1] + vy / n * r))
        out.append(Placed(box, leader))
    return out


def fov_mm(extent_mm: float) -> float:
    """Field of view of a node picture: 60 mm, or the next 20 mm step that holds the node's in-plane
    extent plus the margin on both sides."""
    need = extent_mm + 2 * CROP_MARGIN_MM
    return FOV_MM if need <= FOV_MM else FOV_MM + FOV_STEP_MM * math.ceil((need - FOV_MM) / FOV_STEP_MM - 1e-9)


# ---------------------------------------------------------------- drawing

def _pil():
    require("PIL", "qc", "Pillow")
    from PIL import Image, ImageDraw, ImageFont
    return Image, ImageDraw, ImageFont


def _font(size: int):
    _, _, ImageFont = _pil()
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _grey(hu: np.ndarray, window=WINDOW) -> np.ndarray:
    lo, hi = window
    return (np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _text_size(draw, text, size):
    l, t, r, b = draw.textbbox((0, 0), text, font=_font(size))
    return r - l + 4, b - t + 4, l - 2, t - 2  # with a 2 px halo margin; offsets to draw at


def _text_in_box(draw, box, text, fill, size, halo=True):
    """Draw `text` so that its ink fills `box` as measured by `_text_size`."""
    _, _, ox, oy = _text_size(draw, text, size)
    x, y = box[0] - ox, box[1] - oy
    font = _font(size)
    if halo:
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)):
            draw.text((x + dx, y + dy), text, fill=(0, 0, 0), font=font)
    draw.text((x, y), text, fill=fill, font=font)


def _letters(draw, canvas, letters, size=18):
    """Orientation letters (left, right, top, bottom) on the canvas edges; returns their boxes."""
    W, H = canvas
    boxes = []
    for text, where in zip(letters, ("left", "right", "top", "bottom")):
        w, h, _, _ = _text_size(draw, text, size)
        x = {"left": 3, "right": W - w - 3}.get(where, (W - w) / 2)
        y = {"top": 3, "bottom": H - h - 3}.get(where, (H - h) / 2)
        box = (x, y, x + w, y + h)
        _text_in_box(draw, box, text, LETTER_RGB, size)
        boxes.append(box)
    return boxes


def _scale_bar(draw, canvas, px_per_mm, mm, size=14):
    """A labelled scale bar at the bottom left; returns its box (bar and label)."""
    W, H = canvas
    length = mm * px_per_mm
    text = f"{mm:g} mm"
    tw, th, _, _ = _text_size(draw, text, size)
    x0, y_bar = 10.0, H - 12.0
    draw.rectangle([x0 - 1, y_bar - 3, x0 + length + 1, y_bar + 3], fill=(0, 0, 0))
    draw.rectangle([x0, y_bar - 2, x0 + length, y_bar + 2], fill=TEXT_RGB)
    tb = (x0 + (length - tw) / 2 if length > tw else x0, y_bar - 5 - th)
    tb = (tb[0], tb[1], tb[0] + tw, tb[1] + th)
    _text_in_box(draw, tb, text, TEXT_RGB, size)
    return (min(x0 - 1, tb[0]), tb[1], max(x0 + length + 1, tb[2]), y_bar + 3)


def _header(img, text_left, text_right="", size=15):
    """`img` with a black title strip above it (titles never sit on the picture)."""
    Image, ImageDraw, _ = _pil()
    out = Image.new("RGB", (img.width, img.height + HEADER_PX), (0, 0, 0))
    out.paste(img, (0, HEADER_PX))
    draw = ImageDraw.Draw(out)
    while size > 11 and _text_size(draw, text_left, size)[0] > img.width - 12:  # fit the strip
        size -= 1
    while len(text_left) > 4 and _text_size(draw, text_left, size)[0] > img.width - 12:
        text_left = text_left[:-2].rstrip() + "…"
    w, h, ox, oy = _text_size(draw, text_left, size)
    _text_in_box(draw, (6, (HEADER_PX - h) / 2, 6 + w, (HEADER_PX + h) / 2), text_left, TEXT_RGB, size, False)
    rsize = size - 1
    while text_right and rsize > 10 and 6 + w + 12 + _text_size(draw, text_right, rsize)[0] > img.width - 6:
        rsize -= 1
    if text_right and 6 + w + 12 + _text_size(draw, text_right, rsize)[0] <= img.width - 6:
        wr, hr, _, _ = _text_size(draw, text_right, rsize)
        _text_in_box(draw, (img.width - 6 - wr, (HEADER_PX - hr) / 2, img.width - 6,
                            (HEADER_PX + hr) / 2), text_right, (190, 190, 190), rsize, False)
    return out


def _resample(sl: np.ndarray, cy: float, cx: float, half_y: float, half_x: float, out_wh, method, fill):
    """The window of a 2D array centred on continuous index (cy, cx), `half_*` voxels to each side,
    resampled to `out_wh` pixels with Pillow's `method`; `fill` outside the array (None: its edge)."""
    Image, _, _ = _pil()
    y0, y1 = int(math.floor(cy - half_y)) - 3, int(math.ceil(cy + half_y)) + 4
    x0, x1 = int(math.floor(cx - half_x)) - 3, int(math.ceil(cx + half_x)) + 4
    if fill is None:  # outside the array: its edge values (no ringing at the border; tinted later)
        win = sl[np.clip(np.arange(y0, y1), 0, sl.shape[0] - 1)][:, np.clip(np.arange(x0, x1), 0, sl.shape[1] - 1)]
    else:
        win = np.full((y1 - y0, x1 - x0), fill, np.float32)
        ya, yb, xa, xb = max(0, y0), min(sl.shape[0], y1), max(0, x0), min(sl.shape[1], x1)
        if ya < yb and xa < xb:
            win[ya - y0:yb - y0, xa - x0:xb - x0] = sl[ya:yb, xa:xb]
    # Pillow's coordinates: pixel j spans [j, j + 1], so index i's centre is at i + 0.5
    box = (cx + 0.5 - half_x - x0, cy + 0.5 - half_y - y0, cx + 0.5 + half_x - x0, cy + 0.5 + half_y - y0)
    return np.asarray(Image.fromarray(np.ascontiguousarray(win, np.float32)).resize(tuple(out_wh), method, box=box))


def _outline(m: np.ndarray, width: int = 2) -> np.ndarray:
    inner = m.copy()
    for _ in range(width):
        p = np.pad(inner, 1)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def _fmt_mm(v) -> str:
    return f"{v:.1f}"


def node_layout(ct_c: np.ndarray, lab_c: np.ndarray, can, node: dict) -> dict:
    """The geometry of one node's picture (pure numbers, no drawing): slice, centre, field of view,
    pixel size and the axis end points in picture pixels."""
    sp_y, sp_x = can.spacing[1], can.spacing[0]
    ends_l = world_to_index(can, np.asarray(node["long_axis_ends_mm"], float))
    ends_s = world_to_index(can, np.asarray(node["short_axis_ends_mm"], float))
    k = int(np.clip(round(float(ends_l[:, 0].mean())), 0, ct_c.shape[0] - 1))
    sl_lab = lab_c[k] == node["id"]
    ys, xs = np.nonzero(sl_lab)
    pts = np.concatenate([ends_l[:, 1:], ends_s[:, 1:]])
    if ys.size:
        y_lo, y_hi = min(ys.min(), pts[:, 0].min()), max(ys.max(), pts[:, 0].max())
        x_lo, x_hi = min(xs.min(), pts[:, 1].min()), max(xs.max(), pts[:, 1].max())
    else:  # no voxel on the slice (should not happen): centre on the axes
        (y_lo, x_lo), (y_hi, x_hi) = pts.min(0), pts.max(0)
    cy, cx = (y_lo + y_hi) / 2, (x_lo + x_hi) / 2
    extent = max((y_hi - y_lo + 1) * sp_y, (x_hi - x_lo + 1) * sp_x)
    fov = fov_mm(extent)
    mm_per_px = fov / NODE_PX

    def px(idx):  # canonical (z, y, x) index -> picture pixel (x, y)
        return (float((idx[2] - cx) * sp_x / mm_per_px + NODE_PX / 2),
                float((idx[1] - cy) * sp_y / mm_per_px + NODE_PX / 2))
    node_box = (px((0, y_lo - 0.5, x_lo - 0.5)), px((0, y_hi + 0.5, x_hi + 0.5)))
    return {"k": k, "cy": cy, "cx": cx, "fov_mm": fov, "mm_per_px": mm_per_px,
            "long": (px(ends_l[0]), px(ends_l[1])), "short": (px(ends_s[0]), px(ends_s[1])),
            "node_box": (*node_box[0], *node_box[1]), "centre_px": (NODE_PX / 2, NODE_PX / 2)}


def _node_figure(ct_c: np.ndarray, lab_c: np.ndarray, can, node: dict):
    """(PIL image, {name: box}) of one node's measured slice; the boxes are in image pixels below
    the title strip (for the tests)."""
    Image, ImageDraw, _ = _pil()
    g = node_layout(ct_c, lab_c, can, node)
    sp_y, sp_x = can.spacing[1], can.spacing[0]
    half_y, half_x = g["fov_mm"] / 2 / sp_y, g["fov_mm"] / 2 / sp_x
    size = (NODE_PX, NODE_PX)
    sl = ct_c[g["k"]].astype(np.float32)
    hu = _resample(sl, g["cy"], g["cx"], half_y, half_x, size, Image.BICUBIC, None)
    inside = _resample(np.ones(sl.shape, np.float32), g["cy"], g["cx"], half_y, half_x, size,
                       Image.NEAREST, 0.0) > 0.5
    m = _resample((lab_c[g["k"]] == node["id"]).astype(np.float32), g["cy"], g["cx"], half_y, half_x,
                  size, Image.NEAREST, 0.0) > 0.5
    grey = _grey(hu)
    arr = np.repeat(grey[..., None], 3, axis=2)
    arr[~inside] = OUTSIDE_RGB
    arr[_outline(m)] = node_color(node)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    boxes = {}
    for name, b in zip("RLAP", _letters(draw, size, "RLAP")):
        boxes[f"letter_{name}"] = b
    boxes["scale_bar"] = _scale_bar(draw, size, 1 / g["mm_per_px"], SCALE_BAR_MM)
    for (a, b), rgb in ((g["long"], LONG_RGB), (g["short"], SHORT_RGB)):
        draw.line([a, b], fill=(0, 0, 0), width=4)
        draw.line([a, b], fill=rgb, width=2)
        for p in (a, b):
            draw.ellipse([p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4], outline=rgb, width=2)
    texts = (f"long {_fmt_mm(node['long_axis_mm'])} mm", f"short {_fmt_mm(node['short_axis_mm'])} mm")
    labels = []
    for text, seg in zip(texts, (g["long"], g["short"])):
        w, h, _, _ = _text_size(draw, text, 17)
        labels.append(Label(w, h, seg, seg, away_from=g["centre_px"]))
    placed = place_labels(size, labels, obstacles=list(boxes.values()), avoid=[g["node_box"]],
                          avoid_segments=[g["long"], g["short"]])
    for p, text, rgb, name in zip(placed, texts, (LONG_RGB, SHORT_RGB), ("long", "short")):
        if p.box is None:
            continue
        if p.leader is not None:
            draw.line(p.leader, fill=(0, 0, 0), width=3)
            draw.line(p.leader, fill=rgb, width=1)
        _text_in_box(draw, p.box, text, rgb, 17)
        boxes[f"label_{name}"] = p.box
    pos = node.get("slice_position_mm")
    where = f"slice {node['axis_slice']}" + (f" ({pos:.1f} mm)" if isinstance(pos, (int, float)) else "")
    if node.get("instance_number") is not None:
        where += f", Instance {node['instance_number']}"
    side = node.get("side")
    cls = f" · {node['class']}" if class_index(node) is not None else ""  # a multi-class model's vote
    left = f"node {node['id']}{cls} · {node['recist']}" + (f" · {side}" if side else "")
    img = _header(img, left, f"{where} · FOV {g['fov_mm']:g} mm", size=16)
    return img, boxes


def node_picture(ct_c: np.ndarray, lab_c: np.ndarray, can, node: dict):
    """PIL image of one node's measured slice (canonical arrays, canonical volume geometry)."""
    return _node_figure(ct_c, lab_c, can, node)[0]


def _body_box(ct_c: np.ndarray, can, nodes: list) -> tuple:
    """(z0, z1, y0, y1, x0, x1), inclusive-exclusive canonical index ranges around the body and every
    node, with a 10 mm margin; the whole volume when nothing is above BODY_HU."""
    shape = ct_c.shape
    body = ct_c > BODY_HU
    ranges = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.nonzero(body.any(axis=other))[0]
        lo, hi = (int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, shape[axis])
        for n in nodes:
            c = world_to_index(can, np.asarray(n["centroid_mm"], float))[axis]
            lo, hi = min(lo, int(math.floor(c))), max(hi, int(math.ceil(c)) + 1)
        margin = int(math.ceil(10.0 / can.spacing_zyx[axis]))
        ranges += [max(0, lo - margin), min(shape[axis], hi + margin)]
    return tuple(ranges)


def _axial_slab(can, nodes: list, z0: int, z1: int) -> tuple:
    """Canonical slice range [a0, a1) of the axial MIP: the nodes' superior-inferior extent plus
    AXIAL_SLAB_MARGIN_MM each way, so the skull and shoulders of other levels do not cover the neck."""
    if not nodes:
        return z0, z1
    sz = can.spacing[2]
    lo, hi = math.inf, -math.inf
    for n in nodes:
        c = float(world_to_index(can, np.asarray(n["centroid_mm"], float))[0])
        half = ((n.get("max_diameter_3d_mm") or n["long_axis_mm"]) / 2 + AXIAL_SLAB_MARGIN_MM) / sz
        lo, hi = min(lo, c - half), max(hi, c + half)
    return max(z0, int(math.floor(lo))), min(z1, int(math.ceil(hi)) + 1)


def overview_layout(shape_zyx, spacing_zyx) -> dict:
    """Pixel sizes of the overview panels (pure): a common in-plane scale, and the coronal panel's
    superior-inferior stretch (1 unless the stack is thin)."""
    nz, ny, nx = shape_zyx
    sz, sy, sx = spacing_zyx
    w_mm, h_ax_mm, h_cor_mm = nx * sx, ny * sy, nz * sz
    scale = min(OVERVIEW_PANEL_PX / w_mm, OVERVIEW_MAX_H_PX / h_ax_mm, OVERVIEW_MAX_H_PX / h_cor_mm)
    width = max(1, int(round(w_mm * scale)))
    h_cor = h_cor_mm * scale
    stretch = MIN_CORONAL_PX / h_cor if h_cor < MIN_CORONAL_PX else 1.0
    return {"px_per_mm": scale, "width": width, "axial_h": max(1, int(round(h_ax_mm * scale))),
            "coronal_h": max(1, int(round(h_cor * stretch))), "coronal_stretch": stretch}


def _overview_panel(img, draw, nodes: list, can, px: tuple, to_rc, letters: str, title: str, s: float):
    """One overview panel: letters, scale bar, every node circled, numbers placed without overlap;
    returns (the panel with its title strip, the number boxes)."""
    W, H = img.size
    (row_px, col_px) = px
    obstacles = _letters(draw, (W, H), letters, 16)
    bar_mm = 50.0 if W / s >= 100 else 10.0
    obstacles.append(_scale_bar(draw, (W, H), s, bar_mm, 13))
    marks = []
    for n in nodes:
        r, c = to_rc(world_to_index(can, np.asarray(n["centroid_mm"], float)))
        x, y = (c + 0.5) * col_px, (r + 0.5) * row_px
        rad = max(5.0, n["short_axis_mm"] / 2 * s)
        marks.append((n, x, y, rad))
    for n, x, y, rad in marks:
        draw.ellipse([x - rad - 1, y - rad - 1, x + rad + 1, y + rad + 1], outline=(0, 0, 0), width=4)
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], outline=node_color(n), width=2)
    # numbers go to the largest nodes first (the best places), and to at most OVERVIEW_MAX_LABELS
    marks.sort(key=lambda m: -m[0]["short_axis_mm"])
    labels = []
    for n, x, y, rad in marks[:OVERVIEW_MAX_LABELS]:
        w, h, _, _ = _text_size(draw, str(n["id"]), 15)
        labels.append(Label(w, h, ((x, y),), ((x, y), (x, y)), target_radius=rad + 1,
                            away_from=(x - 1, y + 1), anchor_radius=rad + 1))
    avoid = [(x - rad, y - rad, x + rad, y + rad) for _, x, y, rad in marks]
    placed = place_labels((W, H), labels, obstacles=obstacles, avoid=avoid, gap=2.0, leader_px=4.0,
                          max_dist=OVERVIEW_LEADER_MAX_PX)
    missing = [str(m[0]["id"]) for m in marks[OVERVIEW_MAX_LABELS:]]
    for (n, x, y, rad), p in zip(marks, placed):
        if p.box is None:
            missing.append(str(n["id"]))
            continue
        if p.leader is not None:
            draw.line(p.leader, fill=(0, 0, 0), width=3)
            draw.line(p.leader, fill=node_color(n), width=1)
        draw.rectangle([p.box[0], p.box[1], p.box[2] - 1, p.box[3] - 1], fill=(0, 0, 0))
        _text_in_box(draw, p.box, str(n["id"]), node_color(n), 15, halo=False)
    if missing:  # no room on the panel (dozens of nodes on a small picture): said in the title
        title += (f"; not numbered: {', '.join(missing)}" if len(missing) <= 4 else
                  f"; {len(missing)} smaller not numbered")
    if not nodes:
        title += ", no nodes"
    return _header(img, title, size=14), [p.box for p in placed if p.box is not None]


def _overview_figure(ct_c: np.ndarray, can, nodes: list):
    """(PIL image, {panel: [label boxes]}) of the overview (for the tests)."""
    Image, ImageDraw, _ = _pil()
    z0, z1, y0, y1, x0, x1 = _body_box(ct_c, can, nodes)
    sub = ct_c[z0:z1, y0:y1, x0:x1]
    lay = overview_layout(sub.shape, can.spacing_zyx)
    s, st = lay["px_per_mm"], lay["coronal_stretch"]
    sx, sy, sz = can.spacing
    W = lay["width"]
    stretched = f", thin stack: S-I stretched x{st:.1f}" if st > 1.0 else ""
    a0, a1 = _axial_slab(can, nodes, z0, z1)
    slab = (f"axial MIP of the nodes' {(a1 - a0) * sz:.0f} mm slab" if (a0, a1) != (z0, z1) else "axial MIP")
    panels, placed_boxes = [], {}
    for name, mip, (row_px, col_px), to_rc, letters, title in (
            ("coronal", sub.max(axis=1)[::-1], (sz * s * st, sx * s),
             lambda i: (z1 - 1 - i[0], i[2] - x0), "RLSI", f"coronal MIP{stretched}"),
            ("axial", sub[a0 - z0:a1 - z0].max(axis=0), (sy * s, sx * s), lambda i: (i[1] - y0, i[2] - x0),
             "RLAP", slab)):
        H = lay["coronal_h"] if name == "coronal" else lay["axial_h"]
        img = Image.fromarray(_grey(mip, OVERVIEW_WINDOW)).convert("RGB").resize((W, H), Image.BILINEAR)
        draw = ImageDraw.Draw(img)
        if name == "coronal" and (a0, a1) != (z0, z1):  # where the axial slab lies: dotted lines
            for z in (a0, a1):
                y = (z1 - z) * sz * s * st
                for x in range(0, W, 8):
                    draw.line([(x, y), (x + 3, y)], fill=(150, 150, 150), width=1)
        panel, placed_boxes[name] = _overview_panel(img, draw, nodes, can, (row_px, col_px), to_rc, letters,
                                                    title, s)
        panels.append(panel)
    out = Image.new("RGB", (sum(p.width for p in panels) + 8, max(p.height for p in panels)), (0, 0, 0))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 8
    return out, placed_boxes


def overview_picture(ct_c: np.ndarray, can, nodes: list):
    """Coronal and axial MIPs (bone window) side by side, every node circled and numbered."""
    return _overview_figure(ct_c, can, nodes)[0]


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # optimize=True: 10 x slower for 15 % smaller files
    return buf.getvalue()


def _hu(node: dict) -> str:
    return "" if node.get("mean_hu") is None else f"{node['mean_hu']:.0f}"


def _num(v, fmt="{:.1f}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def _where(n: dict) -> str:
    """The caption's slice phrase: index, position and Instance Number where the report has them."""
    parts = [f"slice {n['axis_slice']}"]
    if _num(n.get("slice_position_mm")):
        parts.append(f"at {_num(n.get('slice_position_mm'))} mm")
    if n.get("instance_number") is not None:
        parts.append(f"Instance Number {n['instance_number']}")
    return ", ".join(parts)


def _link(n: dict, node_pngs: dict) -> str:
    return f'<a href="#node-{n["id"]}">picture</a>' if n["id"] in node_pngs else ""


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def _class_cell(n: dict) -> str:
    """A multi-class node's voted class in its colour, with every class's share of its voxels."""
    esc = html.escape
    rgb = _hex(node_color(n))
    shares = ", ".join(f"{esc(k)} {v:.0%}" for k, v in (n.get("class_fractions") or {}).items())
    return f'<td class="t"><span style="color:{rgb}">&#9632; {esc(str(n["class"]))}</span> ({shares})</td>'


def class_key(nodes: list) -> str:
    """The colour key of a multi-class page (empty for a binary model)."""
    names = next((list(n["class_fractions"]) for n in nodes if class_index(n) is not None), None)
    if not names:
        return ""
    esc = html.escape
    items = ", ".join(f'<span style="color:{_hex(CLASS_RGB[k % len(CLASS_RGB)])}">&#9632;</span> {esc(c)}'
                      for k, c in enumerate(names))
    return (f'<p class="key" id="class-key">Nodes are coloured by the class the model voted for (each node\'s '
            f'class is the majority of its voxels; the table gives every class\'s share): {items}.</p>')


def _node_sections(nodes: list, node_pngs: dict) -> tuple:
    """(the node table, or the no-nodes notice; the node pictures with captions) of the page."""
    esc = html.escape
    instances = any(n.get("instance_number") is not None for n in nodes)  # DICOM input: the column
    classes = any(class_index(n) is not None for n in nodes)  # a multi-class model: the class column
    rows = "\n".join(
        f'<tr id="row-{n["id"]}" class="{esc(n["recist"])}"><td>{n["id"]}</td><td>{n["short_axis_mm"]:.1f}</td>'
        f'<td>{n["long_axis_mm"]:.1f}</td><td>{n["volume_mm3"]:.0f}</td><td>{n["axis_slice"]}</td>'
        f'<td>{_num(n.get("slice_position_mm"))}</td>'
        f'{"<td>" + _num(n.get("instance_number"), "{}") + "</td>" if instances else ""}'
        f'<td class="t">{esc(str(n.get("side") or ""))}</td>'
        f'<td class="t">{esc(n["recist"])}</td>'
        f'{_class_cell(n) if classes else ""}<td>{_hu(n)}</td>'
        f'<td>{", ".join(f"{v:.1f}" for v in n["centroid_mm"])}</td>'
        f'<td>{_link(n, node_pngs)}</td></tr>'
        for n in nodes)
    cards = "\n".join(
        f'<figure id="node-{n["id"]}" class="node"><img alt="{esc(node_name(n))}" width="480" '
        f'src="data:image/png;base64,{base64.b64encode(node_pngs[n["id"]]).decode()}">'
        f'<figcaption>{esc(node_name(n))}, long axis {n["long_axis_mm"]:.1f} mm'
        f'{", " + esc(str(n["side"])) if n.get("side") else ""}; {esc(_where(n))}'
        f'{"; SOP Instance UID " + esc(str(n["sop_instance_uid"])) if n.get("sop_instance_uid") else ""}'
        f'</figcaption></figure>' for n in nodes if n["id"] in node_pngs)
    body = (f'<table id="nodes"><thead><tr><th data-t="n">id</th><th data-t="n">short axis mm</th>'
            f'<th data-t="n">long axis mm</th><th data-t="n">volume mm³</th><th data-t="n">slice</th>'
            f'<th data-t="n">slice position mm</th>'
            f'{"<th data-t=n>Instance Number</th>" if instances else ""}<th>side</th>'
            f'<th>RECIST</th>{"<th>class (voxel shares)</th>" if classes else ""}<th data-t="n">mean HU</th><th>centroid x, y, z mm</th><th></th></tr></thead>'
            f'<tbody>{rows}</tbody></table>' if nodes else
            '<p id="no-nodes" class="none">No nodes found in this scan: the overview shows the scan '
            'with nothing marked, and there are no node pictures.</p>')
    return body, cards


def _page(report: dict, overview: bytes, node_pngs: dict) -> str:
    inp, model = report["input"], report.get("model") or {}
    nodes = sorted(report["nodes"], key=lambda n: -n["short_axis_mm"])
    esc = html.escape
    body, cards = _node_sections(nodes, node_pngs)
    uid = "".join(f"<br>{k.replace('_', ' ')}: {esc(str(inp[k]))}" for k in ("study_uid", "series_uid") if inp.get(k))
    count = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}" if nodes else "no nodes found"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lnrt QC: {esc(inp.get("stem", ""))}</title>
<style>
body{{font-family:system-ui,sans-serif;background:#111;color:#eee;margin:1.5em}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{padding:.3em .7em;border-bottom:1px solid #333;text-align:right}}
td.t{{text-align:left}}td:nth-last-child(2){{white-space:nowrap}}
th{{cursor:pointer;background:#222}}tr.enlarged td{{color:#ff6b6b}}tr.pathological td{{color:#ffb347}}
a{{color:#7cc7ff}}figure.node{{display:inline-block;margin:.5em;vertical-align:top}}
figcaption{{font-size:.9em;max-width:480px}}.meta{{color:#aaa;font-size:.9em}}
p.none{{font-size:1.3em;color:#fff;background:#333;padding:.6em 1em;display:inline-block}}
.key{{color:#aaa;font-size:.9em;max-width:60em}}
</style></head><body>
<h1>lnrt QC: {esc(inp.get("stem", ""))} ({count})</h1>
<p class="meta">input: {esc(str(inp.get("path")))}{uid}<br>model: {esc(str(model.get("name")))} {esc(str(model.get("version")))}
({esc(str(model.get("variant")))}, {esc(str(model.get("backend")))}); {len(nodes)} nodes.
{esc("; ".join(report.get("warnings", [])))}<br>Not for clinical use unless the model is validated for it.</p>
<h2>Overview</h2><img id="overview" alt="overview" src="data:image/png;base64,{base64.b64encode(overview).decode()}">
<p class="key">Maximum-intensity projections in a wide bone window (W 2500 / L 700), radiological
convention (patient's right on the left): coronal over the whole scan, axial over the nodes' slab only
(between the dotted lines on the coronal panel). Each node is circled at its centroid and numbered.</p>
<h2>Nodes</h2>{body}
{class_key(nodes)}
<p class="key">Node pictures: the measured axial slice, W 400 / L 40, a {FOV_MM:g} mm field of view
(larger in {FOV_STEP_MM:g} mm steps for big nodes, written on each picture) with a {SCALE_BAR_MM:g} mm
scale bar; long axis yellow, short axis cyan; blue-grey is outside the scan.</p>
<div id="pictures">{cards}</div>
<script>
document.querySelectorAll("#nodes th").forEach(function(th, col) {{
  th.addEventListener("click", function() {{
    var tb = th.closest("table").tBodies[0], rows = Array.from(tb.rows), num = th.dataset.t === "n";
    var dir = th.dataset.dir === "desc" ? 1 : -1; th.dataset.dir = dir === 1 ? "asc" : "desc";
    function val(r) {{ var v = parseFloat(r.cells[col].textContent); return isNaN(v) ? -Infinity : v; }}
    rows.sort(function(a, b) {{
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      return dir * (num ? (val(a) > val(b)) - (val(a) < val(b)) : x.localeCompare(y));
    }});
    rows.forEach(function(r) {{ tb.appendChild(r); }});
  }});
}});
</script></body></html>
"""


def render_qc(vol, labels: np.ndarray, report: dict) -> tuple:
    """(HTML page, {file name: PNG bytes}) in memory."""
    orient = Orientation.of(vol.direction)
    can = orient.canonical_volume(vol)
    lab_c = orient.to_canonical(labels)
    overview = _png(overview_picture(can.array, can, report["nodes"]))
    pngs = {n["id"]: _png(node_picture(can.array, lab_c, can, n)) for n in report["nodes"]
            if n.get("long_axis_ends_mm") is not None}
    files = {"overview.png": overview, **{f"node_{i:03d}.png": data for i, data in pngs.items()}}
    return _page(report, overview, pngs), files


def qc_outputs(page: str, files: dict) -> dict:
    """The QC folder and page as outputs of a save (`lnrt.outputs.Output`), written all-or-nothing with
    the other files."""
    from .outputs import Output

    def folder(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).write_bytes(data)

    return {"qc_dir": Output(folder, folder=True),
            "qc_html": Output(lambda p: p.write_text(page, encoding="utf-8"))}
