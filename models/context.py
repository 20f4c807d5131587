"""Anatomy around the neck, and the abdomen, as negatives for the node network (numpy only).

A network trained only on the neck between the thoracic inlet and the mandible has never been told what
is *not* a node elsewhere. On real head-and-neck CT (which covers the head, the shoulders and the
lung apices) and on abdominal CT it then calls hundreds of node-like blobs. This module draws what
lies above and below the phantom neck of `lnrt.models.neck`, and a separate abdomen, with no node
labels, so that those structures are learnt as background. The node-like confounders, and the
anatomical or imaging fact behind each:

- Head above the mandible (`Context.above` mm): the skull as a shell with a cortical outer and inner
  table and a diploe of lower density (1200-1500 / 400-650 HU); brain (25-40 HU: node density over a
  large volume, only its bony enclosure tells it apart), ventricles (CSF, 0-10 HU); orbits of fat with
  round eye globes (5-15 HU, 24 mm: round soft tissue in fat, the classic node mimic); maxillary
  sinuses and the nasal cavity (air inside thin bone); tongue and masticator muscles (55-75 HU); teeth
  (1800-2800 HU) with streaks from dental fillings; the skull base and mastoids as bone.
- Shoulders and upper chest below the thoracic inlet (`Context.below` mm): the body widens to the
  shoulders over about 35 mm; clavicles, humeral heads, scapulae, ribs and the manubrium as bones
  with a cortex (800-1100 HU) around cancellous marrow (100-300 HU, the density that a coarse scan
  blurs into node-like values); pectoral, deltoid and periscapular muscles; lung apices (-880..-800
  HU) with vessels that look like round nodules in one slice but are tubes in 3D; the mediastinum with
  the trachea, oesophagus and great vessels (enhanced or not, as in the neck).
- Abdomen (`AbdomenSpec`, `render_abdomen`): liver, spleen, kidneys, aorta and IVC, stomach, gall
  bladder, psoas and abdominal wall muscles, and bowel loops (small bowel 8-14 mm, colon 16-24 mm
  radius) that are empty and collapsed (soft tissue only: the commonest node mimic in the abdomen),
  fluid-filled, air-filled or opacified by oral contrast; optionally the pelvis (iliac wings, bladder).

Bones follow one pattern (`_bone`): a cortex shell around marrow, because patient bone is not the
uniform 700 HU of the earlier phantoms, and its marrow reaches the node window (-200..400 HU).
Tubes (bowel, lung vessels) are unions of balls along a smooth 3D random walk, so their cross-sections
change with z as a real tube's do. Every shape is analytic in millimetres; the grid does not change it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .neck import _blur_axis, _ellipse, imaging


# ---------------------------------------------------------------------------------------------- painting
class Canvas:
    """One axial slice (HU) on a regular grid, painted with shapes clipped to their bounding boxes."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, s: np.ndarray):
        self.xs, self.ys, self.s = xs, ys, s
        self.dx, self.dy = float(xs[1] - xs[0]), float(ys[1] - ys[0])

    def _box(self, cx, cy, r):
        i0 = max(0, int(np.floor((cx - r - self.xs[0]) / self.dx)))
        i1 = min(len(self.xs), int(np.ceil((cx + r - self.xs[0]) / self.dx)) + 1)
        j0 = max(0, int(np.floor((cy - r - self.ys[0]) / self.dy)))
        j1 = min(len(self.ys), int(np.ceil((cy + r - self.ys[0]) / self.dy)) + 1)
        return j0, j1, i0, i1

    @cached_property
    def grid(self) -> tuple:
        """(X, Y) mm coordinates of every pixel of the slice."""
        return np.meshgrid(self.xs, self.ys)

    def ellipse(self, cx, cy, a, b, value, ang=0.0, within=None):
        """Paint value inside the ellipse; `within` (a full-slice bool mask) limits where it paints."""
        if a <= 0 or b <= 0:
            return
        j0, j1, i0, i1 = self._box(cx, cy, max(a, b))
        if j0 >= j1 or i0 >= i1:
            return
        X, Y = self.grid
        m = _ellipse(X[j0:j1, i0:i1], Y[j0:j1, i0:i1], cx, cy, a, b, ang) <= 1
        if within is not None:
            m &= within[j0:j1, i0:i1]
        self.s[j0:j1, i0:i1][m] = value

    def full(self, cx, cy, a, b, ang=0.0) -> np.ndarray:
        """The ellipse as a full-slice mask."""
        return _ellipse(*self.grid, cx, cy, a, b, ang) <= 1


def _bone(c: Canvas, cx, cy, a, b, cortex_hu, marrow_hu, ang=0.0, cortex=2.0, within=None):
    """A bone in cross-section: a cortical shell `cortex` mm thick around cancellous marrow."""
    c.ellipse(cx, cy, a, b, cortex_hu, ang, within)
    c.ellipse(cx, cy, a - cortex, b - cortex, marrow_hu, ang, within)


def _walk(rng, start, n, step, bounds, inertia=0.8):
    """A smooth 3D random walk of n points (mm), reflected at the box bounds ((lo, hi) per axis)."""
    p = np.array(start, float)
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    out = []
    for _ in range(n):
        d = inertia * d + (1 - inertia) * rng.normal(size=3)
        d /= np.linalg.norm(d)
        p = p + step * d
        for k, (lo, hi) in enumerate(bounds):
            if not lo <= p[k] <= hi:
                d[k] = -d[k]
                p[k] = np.clip(p[k], lo, hi)
        out.append(p.copy())
    return np.array(out)


@dataclass
class Tube:
    """Balls of radius r along a centre line: wall `wall` mm of wall_hu around a lumen of lumen_hu."""
    points: np.ndarray  # (n, 3) x, y, z mm
    radius: float
    wall: float
    wall_hu: float
    lumen_hu: float

    def paint(self, c: Canvas, z: float, within=None):
        near = np.abs(self.points[:, 2] - z) < self.radius
        if not near.any():
            return
        for x, y, pz in self.points[near]:
            r = np.sqrt(self.radius ** 2 - (z - pz) ** 2)
            c.ellipse(x, y, r, r, self.wall_hu, within=within)
        if self.wall > 0:
            for x, y, pz in self.points[near]:
                ri = self.radius - self.wall
                if abs(z - pz) < ri:
                    r = np.sqrt(ri ** 2 - (z - pz) ** 2)
                    c.ellipse(x, y, r, r, self.lumen_hu, within=within)


def marble(hu: np.ndarray, spacing_zyx, amplitude: float, rng, rows=None, scale_mm: float = 3.0):
    """Texture of soft tissue, in place: a smooth random field (Gaussian, `scale_mm` correlation,
    `amplitude` HU standard deviation) added to voxels of soft-tissue density (0-130 HU) in the slices
    `rows` (all if None). Patient muscle, glands and organs are not uniform: fat infiltrates muscle
    with age, and coarse voxels mix fascia and fat planes into soft tissue. Uniform phantom tissue
    teaches the network that any mottled soft tissue is unusual, which is how it came to call shoulder
    muscles nodes on 4 mm planning CTs."""
    sel = slice(None) if rows is None else rows
    part = hu[sel]
    if amplitude <= 0 or part.size == 0:
        return hu
    f = rng.normal(0, 1, part.shape).astype(np.float32)
    for axis, s in enumerate(spacing_zyx):
        f = _blur_axis(f, scale_mm / s, axis)
    f *= np.float32(amplitude / max(float(f.std()), 1e-6))
    soft = (part > 0) & (part < 130)
    part[soft] += f[soft]
    hu[sel] = part
    return hu


def _smooth(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


# ------------------------------------------------------------------------------- head, shoulders, chest
@dataclass
class Context:
    """What surrounds one neck phantom: `below` mm of shoulders and chest, `above` mm of head."""
    below: float
    above: float
    torso: tuple  # (rx, ry) mm of the upper chest
    head: tuple  # (rx, ry) mm of the skull outline
    enhanced: bool
    fat_hu: float
    muscle_hu: float
    brain_hu: float
    marrow_hu: float
    cortex_hu: float
    lung_hu: float
    texture: float = 0.0  # soft-tissue texture, HU standard deviation (see `marble`)
    couch_y: float = 0.0  # y (mm, posterior) of the couch top under the patient; 0: no couch drawn
    mask_hu: float = 0.0  # thermoplastic immobilisation mask over the face, neck and shoulders; 0: none
    lung_vessels: list = field(default_factory=list)
    ribs: list = field(default_factory=list)  # z (mm, negative) of each rib level
    teeth_streaks: bool = False

    @property
    def fov(self) -> tuple:
        """(x, y) field of view in mm that holds the widest part, shoulders or head."""
        rx = max(self.torso[0] if self.below else 0, self.head[0] if self.above else 0, 75.0)
        ry = max(self.torso[1] + 10 if self.below else 0, self.head[1] + 10 if self.above else 0, 65.0,
                 self.couch_y + 30 if self.couch_y else 0)
        return (2 * rx + 16, 2 * ry + 16)


def make_context(neck, seed: int, below=(30.0, 130.0), above=(30.0, 150.0), p_below=0.8, p_above=0.8):
    """A random `Context` for a `NeckSpec` (deterministic from seed)."""
    rng = np.random.default_rng(seed + 5_000_011)
    enhanced = neck.vessels[1]["hu_a"] > 150
    ctx = Context(below=float(rng.uniform(*below)) if rng.random() < p_below else 0.0,
                  above=float(rng.uniform(*above)) if rng.random() < p_above else 0.0,
                  torso=(float(rng.uniform(150, 195)), float(rng.uniform(95, 125))),
                  head=(float(rng.uniform(68, 80)), float(rng.uniform(85, 100))),
                  enhanced=bool(enhanced), fat_hu=neck.fat_hu, muscle_hu=neck.muscle_hu,
                  brain_hu=float(rng.uniform(25, 40)), marrow_hu=float(rng.uniform(100, 300)),
                  cortex_hu=float(rng.uniform(800, 1100)), lung_hu=float(rng.uniform(-880, -800)),
                  teeth_streaks=bool(rng.random() < 0.5), texture=float(rng.uniform(6, 30)))
    if rng.random() < 0.6:  # a radiotherapy planning CT: the patient lies on a flat couch, often masked
        back = max(neck.ry, 10 + ctx.torso[1] if ctx.below else 0, ctx.head[1] - 5 if ctx.above else 0)
        ctx.couch_y = float(back + rng.uniform(1, 15))
        ctx.mask_hu = float(rng.uniform(100, 300)) if rng.random() < 0.6 else 0.0
    if ctx.below:
        for _ in range(int(rng.integers(14, 30))):  # lung vessels: branching reduced to many tubes
            side = rng.choice([-1, 1])
            start = (side * rng.uniform(25, 70), rng.uniform(-30, 50), -rng.uniform(25, ctx.below))
            pts = _walk(rng, start, int(rng.integers(8, 30)), 1.5,
                        ((-140, 140), (-60, 80), (-ctx.below - 20, -15)), inertia=0.9)
            hu = rng.uniform(150, 300) if enhanced and rng.random() < 0.5 else rng.uniform(30, 60)
            ctx.lung_vessels.append(Tube(pts, float(rng.uniform(1.2, 4.0)), 0.0, float(hu), float(hu)))
        z = -rng.uniform(15, 30)
        while z > -ctx.below:
            ctx.ribs.append(float(z))
            z -= rng.uniform(22, 30)
    return ctx


def _head(c: Canvas, ctx: Context, u: float):
    """Head slice at u mm above the top of the neck phantom."""
    rx, ry = ctx.head
    top = 150.0  # the vertex: head height above the mandible (mm)
    k = np.sqrt(max(0.0, 1 - (max(0.0, u - 70) / (top - 70)) ** 2))  # the dome of the skull
    hx, hy = rx * (0.9 + 0.1 * _smooth(u / 30)) * k, ry * k
    cy = -5.0
    if hx < 5:
        return None
    body = c.full(0, cy, hx, hy)
    c.s[body] = 30.0  # skin
    c.ellipse(0, cy, hx - 2, hy - 2, ctx.fat_hu, within=body)
    m = ctx.muscle_hu
    if u < 40:  # lower face: mandibular rami, masticator muscles, tongue, oropharynx, teeth, mastoids
        for side in (-1, 1):
            c.ellipse(side * (hx - 14), 0, 10, 22, m + 5, side * 0.2)  # masseter
            c.ellipse(side * (hx - 30), 5, 8, 16, m + 5, -side * 0.3)  # pterygoids
            _bone(c, side * (hx - 22), -2, 4, 14, ctx.cortex_hu + 200, ctx.marrow_hu, side * 0.15)  # ramus
            c.ellipse(side * 46, 6, 10, 15, -10.0)  # parotid continues
            if u > 15:
                _bone(c, side * (hx - 12), 30, 10, 12, ctx.cortex_hu, ctx.marrow_hu + 150)  # mastoid
        c.ellipse(0, -38, 28 - 0.3 * u, 24, m + 15)  # tongue
        c.ellipse(0, -5, 11, 6, -1000.0)  # oropharynx
        if 12 < u < 28:  # maxillary teeth and alveolar ridge
            X, Y = c.grid
            r = np.hypot(X, Y + 30)
            teeth = (np.abs(r - 30) < 4) & (Y < -28)
            c.s[teeth & body] = 2300.0
            if ctx.teeth_streaks:
                theta = np.arctan2(Y + 60, X)
                c.s[body] += (120 * np.cos(14 * theta) * np.exp(-np.hypot(X, Y + 60) / 50.0)).astype(np.float32)[body]
    elif u < 70:  # midface and skull base: sinuses, nasal cavity, orbits, petrous bones, cerebellum
        f = (u - 40) / 30
        _bone(c, 0, 40, 44 * (0.6 + 0.4 * f), 32, ctx.cortex_hu + 300, ctx.marrow_hu + 300, cortex=3.0)
        c.ellipse(0, 40, 40 * (0.6 + 0.4 * f), 28, ctx.brain_hu)  # cerebellum in the posterior fossa
        for side in (-1, 1):
            c.ellipse(side * 30, 12, 24, 7, ctx.cortex_hu + 200, side * 0.5)  # petrous bone
            if u < 60:
                _bone(c, side * 22, -38, 16, 18, 700.0, -1000.0, cortex=2.0)  # maxillary sinus
                c.ellipse(side * (hx - 8), -5, 6, 20, m)  # temporalis
            if u > 48:  # orbit: fat cone around the eye globe
                c.ellipse(side * 32, -58, 19, 20, -80.0)
                g = 12.0 ** 2 - (u - 60) ** 2
                if g > 0:
                    c.ellipse(side * 32, -62, np.sqrt(g), np.sqrt(g), float(10 + 5 * side))
        if u < 60:
            c.ellipse(0, -45, 7, 18, -1000.0)  # nasal cavity
            c.ellipse(0, -45, 1.2, 18, 400.0)  # septum
    else:  # cranium: skull shell, brain, ventricles, temporalis
        _bone(c, 0, cy, hx - 3, hy - 3, ctx.cortex_hu + 400, ctx.marrow_hu + 250, cortex=6.0)
        c.ellipse(0, cy, hx - 5, hy - 5, ctx.cortex_hu + 400)
        c.ellipse(0, cy, hx - 9, hy - 9, ctx.brain_hu)
        if 85 < u < 120:
            for side in (-1, 1):
                c.ellipse(side * 8, cy - 5, 5, 25, 5.0, side * 0.15)  # lateral ventricles
        c.ellipse(0, cy, 1.0, hy - 12, ctx.brain_hu + 15)  # falx
        if u < 110:
            for side in (-1, 1):
                c.ellipse(side * (hx - 4), cy, 5, 30, m, within=body)  # temporalis outside the skull
    return body


def _shoulders(c: Canvas, ctx: Context, neck, v: float):
    """Slice v mm below the thoracic inlet: the base of the neck widening into shoulders and chest."""
    w = _smooth(v / 35)
    tx, ty = ctx.torso
    bx, by = neck.rx + (tx - neck.rx) * w, neck.ry + (ty - neck.ry) * w
    cy = 10 * w
    body = c.full(0, cy, bx, by)
    c.s[body] = 30.0
    c.ellipse(0, cy, bx - 2, by - 2, ctx.fat_hu, within=body)
    m, bone, marrow = ctx.muscle_hu, ctx.cortex_hu, ctx.marrow_hu
    for side in (-1, 1):
        c.ellipse(side * 0.4 * bx, cy + by - 22, 0.38 * bx, 13, m, side * 0.15, within=body)  # trapezius
        c.ellipse(side * 20, 40, 14 + 4 * w, 11 + 3 * w, m)  # paraspinal
        if v > 8:
            c.ellipse(side * 0.42 * bx, cy - by + 16, 0.34 * bx, 9 * w, m, -side * 0.12, within=body)  # pectoralis
        if v > 12 and bx > 120:  # humeral head in the deltoid
            hx = side * (bx - 30)
            c.ellipse(hx, cy, 30, 32, m + 5, within=body)
            if v < 80:
                _bone(c, hx, cy, 22, 22, bone, marrow)
            sx_, sy_ = side * 0.55 * bx, cy + by - 42  # the scapula between its muscles, in fat planes
            c.ellipse(sx_ + side * 4, sy_ + 12, 42 * w, 8, m, -side * 0.35, within=body)  # infraspinatus
            c.ellipse(sx_ - side * 4, sy_ - 12, 40 * w, 8, m, -side * 0.35, within=body)  # subscapularis
            c.ellipse(side * (bx - 45), cy + 0.45 * by, 14, 20, m, side * 0.5, within=body)  # teres, latissimus
            _bone(c, sx_, sy_, 45 * w, 4, bone - 100, marrow, -side * 0.35)  # scapula
        if 4 < v < 22:  # clavicle: from the manubrium out to the acromion
            x0, y0, x1, y1 = side * 14, cy - by * 0.55, side * (bx - 38), cy - 5
            L = np.hypot(x1 - x0, y1 - y0)
            _bone(c, (x0 + x1) / 2, (y0 + y1) / 2, L / 2, 7, bone, marrow, np.arctan2(y1 - y0, x1 - x0))
    if neck.back_muscles:
        _back_bellies(c, neck, v, cy + by, bx, body)
    lung = None
    if v > 15:  # lung apices grow downwards
        g = np.sqrt(min(1.0, (v - 15) / 70))
        lung = np.zeros_like(body)
        for side in (-1, 1):
            lung |= c.full(side * (18 + 30 * g), 12, 10 + 45 * g, 12 + 40 * g)
        lung &= body
        for rz in ctx.ribs:  # ribs: a bony ring segment around each lung at its level
            if abs(-v - rz) < 5:
                for side in (-1, 1):
                    ring = c.full(side * (18 + 30 * g), 12, 18 + 45 * g, 20 + 40 * g) & ~lung & body
                    ring &= ~c.full(side * (18 + 30 * g), 12, 12 + 45 * g, 14 + 40 * g)
                    c.s[ring] = bone - 150
        c.s[lung] = ctx.lung_hu
        for t in ctx.lung_vessels:
            t.paint(c, -v, within=lung)
        if v > 30:
            _bone(c, 0, cy - by + 14, 18, 6, bone, marrow)  # manubrium
    # mediastinum and spine continue from the neck
    _bone(c, 0, 15, 14 + 2 * w, 12, bone, marrow)  # vertebral body
    _bone(c, 0, 40, 4, 12, bone, marrow)  # spinous process
    c.ellipse(0, 30, 8, 7, 30.0)  # spinal canal
    c.ellipse(0, -25 + 10 * w, 10, 8, 40.0)  # tracheal wall
    c.ellipse(0, -25 + 10 * w, 8, 6, -1000.0)
    c.ellipse(0, -8 + 10 * w, 7, 5, ctx.muscle_hu - 10)  # oesophagus
    hu_a, hu_v = (neck.vessels[1]["hu_a"], neck.vessels[1]["hu_v"])
    for side in (-1, 1):
        c.ellipse(side * 12, -30 + 5 * w, 5 + 2 * w, 5 + 2 * w, hu_a)  # common carotid / brachiocephalic
        c.ellipse(side * 26, -30 + 5 * w, 7 + 3 * w, 6 + 2 * w, hu_v)  # brachiocephalic vein
    if v > 60:  # the aortic arch
        c.ellipse(0, -15, 30, 12, hu_a)
    return body


def _back_bellies(c: Canvas, neck, v: float, back_y: float, bx: float, body: np.ndarray):
    """The `back_muscles` family continued below the neck (lnrt.models.families): the neck's bellies stay
    beside the spine, as the paraspinal does, and the rhomboids and (at the shoulder) supraspinatus join
    them between the spine and the scapula, each in a fat plane, at the bellies' mean density."""
    fat = neck.fat_hu
    for cx, cy, a, b, ang, dx, dy, hu in neck.back_muscles:
        c.ellipse(cx, cy, a + 1.5, b + 1.5, fat, ang, within=body)
        c.ellipse(cx, cy, a, b, hu, ang, within=body)
    hu = float(np.mean([m[7] for m in neck.back_muscles]))
    for side in (-1, 1):
        shape = [(side * 30, back_y - 32, 4 + 14 * _smooth(v / 35), 5, side * 0.3)]  # rhomboid
        if 10 < v < 45 and bx > 120:
            shape.append((side * 0.55 * bx, back_y - 30, 20, 7, -side * 0.35))  # supraspinatus
        for x, y, a, b, ang in shape:
            c.ellipse(x, y, a + 1.5, b + 1.5, fat, ang, within=body)
            c.ellipse(x, y, a, b, hu, ang, within=body)


def _dilate(m: np.ndarray, steps: int) -> np.ndarray:
    out = m.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def couch(c: Canvas, y0: float, hu_shell: float = 300.0):
    """The CT couch below the patient: two thin carbon-fibre shells around a foam core (-900..-700 HU),
    a flat, straight edge of dense material that a network must not mistake for anatomy."""
    Y = c.ys[:, None]
    rows = np.broadcast_to(Y, c.s.shape)
    c.s[(rows >= y0) & (rows < y0 + 2.5)] = hu_shell
    c.s[(rows >= y0 + 2.5) & (rows < y0 + 27.5)] = -800.0
    c.s[(rows >= y0 + 27.5) & (rows < y0 + 30)] = hu_shell


def planning_setup(c: Canvas, ctx: Context, z: float, body: np.ndarray | None, z_top: float):
    """Radiotherapy planning accessories around slice z (after the body is drawn): the couch, and the
    perforated thermoplastic mask (1.5-2 mm of 100-300 HU, a few mm off the skin over the front of the
    head, neck and shoulders): thin dense shells right next to soft tissue."""
    if not ctx.couch_y:
        return
    if ctx.mask_hu and body is not None and body.any() and -40 < z < z_top:
        px = c.dx
        near, far = _dilate(body, max(1, int(round(2.0 / px)))), _dilate(body, max(2, int(round(4.0 / px))))
        centre_y = c.ys[np.flatnonzero(body.any(axis=1))].mean()
        X, Y = c.grid
        holes = np.cos(2 * np.pi * X / 7.0) * np.cos(2 * np.pi * z / 7.0) > 0.4
        shell = far & ~near & (Y < centre_y + 10) & ~holes
        c.s[shell & (c.s < -500)] = ctx.mask_hu
    couch(c, ctx.couch_y)


def paint_context(c: Canvas, ctx: Context, neck, z: float):
    """Paint the context anatomy for height z (mm, phantom frame) if z lies outside the neck; returns the
    body mask of that slice, or None where z is inside the neck or beyond the context."""
    if z < 0 and -z <= ctx.below:
        return _shoulders(c, ctx, neck, -z)
    if z > neck.height and z - neck.height <= ctx.above:
        return _head(c, ctx, z - neck.height)
    return None


# ------------------------------------------------------------------------------------------------ abdomen
@dataclass
class AbdomenSpec:
    seed: int
    height: float
    rx: float
    ry: float
    wall: float  # subcutaneous fat thickness
    enhanced: bool
    fat_hu: float
    muscle_hu: float
    liver_hu: float
    marrow_hu: float
    noise: float
    blur_sigma: tuple
    pelvis: bool
    texture: float = 0.0
    couch_y: float = 0.0
    gallbladder_hu: float = 10.0
    bowel: list = field(default_factory=list)
    vessels: list = field(default_factory=list)


def make_abdomen(seed: int) -> AbdomenSpec:
    rng = np.random.default_rng(seed + 3_000_017)
    enhanced = bool(rng.random() < 0.7)
    spec = AbdomenSpec(seed=seed, height=float(rng.uniform(90, 220)), rx=float(rng.uniform(135, 185)),
                       ry=float(rng.uniform(100, 135)), wall=float(rng.uniform(8, 35)), enhanced=enhanced,
                       fat_hu=float(rng.uniform(-120, -80)), muscle_hu=float(rng.uniform(45, 65)),
                       liver_hu=float(rng.uniform(95, 125) if enhanced else rng.uniform(50, 65)),
                       marrow_hu=float(rng.uniform(120, 300)), noise=float(rng.uniform(5, 25)),
                       blur_sigma=(float(rng.uniform(0.4, 1.6)), float(rng.uniform(0.3, 1.0))),
                       pelvis=bool(rng.random() < 0.4), texture=float(rng.uniform(6, 30)))
    if rng.random() < 0.7:
        spec.couch_y = spec.ry + float(rng.uniform(1, 10))
    spec.gallbladder_hu = float(np.random.default_rng(seed).uniform(0, 20))  # bile, 0-20 HU
    inner = ((-spec.rx + spec.wall + 25, spec.rx - spec.wall - 25), (-spec.ry + spec.wall + 15, spec.ry - 70),
             (0, spec.height))
    for _ in range(int(rng.integers(8, 17))):
        colon = rng.random() < 0.3
        r = rng.uniform(16, 24) if colon else rng.uniform(8, 14)
        start = [rng.uniform(*inner[0]), rng.uniform(*inner[1]), rng.uniform(0, spec.height)]
        pts = _walk(rng, start, int(rng.integers(15, 45)), r * 0.6, inner, inertia=0.85)
        kind = rng.choice(["collapsed", "fluid", "air", "contrast"], p=[0.35, 0.3, 0.2, 0.15])
        lumen = {"collapsed": rng.uniform(35, 60), "fluid": rng.uniform(0, 20), "air": -1000.0,
                 "contrast": rng.uniform(200, 450)}[kind]
        wall_hu = rng.uniform(70, 120) if enhanced else rng.uniform(35, 50)
        if kind == "collapsed":
            r = min(r, rng.uniform(5, 9))  # an empty loop is a soft-tissue cord
        spec.bowel.append(Tube(pts, float(r), float(rng.uniform(1.5, 3.0)), float(wall_hu), float(lumen)))
    for _ in range(int(rng.integers(6, 16))):  # mesenteric vessels
        start = [rng.uniform(*inner[0]) * 0.5, rng.uniform(*inner[1]), rng.uniform(0, spec.height)]
        pts = _walk(rng, start, int(rng.integers(10, 30)), 2.0, inner, inertia=0.9)
        hu = rng.uniform(150, 280) if enhanced else rng.uniform(35, 55)
        spec.vessels.append(Tube(pts, float(rng.uniform(1.5, 3.5)), 0.0, float(hu), float(hu)))
    return spec


def _abdomen_slice(c: Canvas, spec: AbdomenSpec, z: float):
    t = z / spec.height  # 0 at the bottom, 1 at the top (the dome of the liver)
    rx, ry, m = spec.rx, spec.ry, spec.muscle_hu
    body = c.full(0, 0, rx, ry)
    c.s[body] = 30.0
    c.ellipse(0, 0, rx - 2, ry - 2, spec.fat_hu, within=body)
    cav = (rx - spec.wall - 10, ry - spec.wall - 10)
    c.ellipse(0, 0, rx - spec.wall, ry - spec.wall, m, within=body)  # abdominal wall muscles
    c.ellipse(0, 0, *cav, spec.fat_hu + 10, within=body)  # peritoneal and retroperitoneal fat
    pelvic = spec.pelvis and t < 0.35
    for tube in spec.bowel + spec.vessels:
        tube.paint(c, z, within=body)
    art = 220.0 if spec.enhanced else 45.0
    spine_y = ry - 60
    if not pelvic:
        if t > 0.45:
            f = _smooth((t - 0.45) / 0.3)
            c.ellipse(-0.35 * rx, -0.05 * ry, 0.5 * rx * f, 0.6 * ry * f, spec.liver_hu, within=body)  # liver
            c.ellipse(0.45 * rx, 0.25 * ry, 0.2 * rx * f, 0.35 * ry * f, spec.liver_hu - 5, 0.5)  # spleen
        if 0.5 < t < 0.7:
            c.ellipse(-0.4 * rx, -0.25 * ry, 16, 20, spec.gallbladder_hu)  # gallbladder
        if t > 0.6:  # stomach with air over fluid
            c.ellipse(0.25 * rx, -0.2 * ry, 45, 32, 15.0, 0.3)
            c.ellipse(0.25 * rx, -0.2 * ry - 18, 35, 12, -1000.0, 0.3)
        if 0.25 < t < 0.75:
            for side in (-1, 1):  # kidneys: cortex, medulla and sinus fat
                kx, ky = side * 62, spine_y - 10
                c.ellipse(kx, ky, 26, 38, 160.0 if spec.enhanced else 32.0, side * 0.4)
                c.ellipse(kx, ky, 16, 26, 90.0 if spec.enhanced else 28.0, side * 0.4)
                c.ellipse(kx - side * 10, ky - 8, 7, 10, spec.fat_hu, side * 0.4)
    else:  # pelvis: iliac wings and bladder
        for side in (-1, 1):
            _bone(c, side * 0.6 * rx, spine_y - 10, 12, 45, 900.0, spec.marrow_hu, side * 0.9)
            c.ellipse(side * 0.6 * rx + side * 20, spine_y + 10, 25, 35, m, side * 0.9)  # gluteal
        c.ellipse(0, -0.3 * ry, 45, 35, 10.0)  # bladder
        c.ellipse(0, spine_y - 35, 18, 14, spec.muscle_hu - 5)  # rectum / uterus
        for side in (-1, 1):  # external iliac artery and vein along the pelvic side wall
            c.ellipse(side * 0.45 * rx, spine_y - 40, 5, 5, art)
            c.ellipse(side * 0.45 * rx + side * 4, spine_y - 30, 6.5, 5.5, 160.0 if spec.enhanced else 40.0)
    for side in (-1, 1):
        c.ellipse(side * 30, spine_y - 12, 10 + 12 * (1 - t), 12 + 8 * (1 - t), m)  # psoas
        c.ellipse(side * 25, spine_y + 32, 20, 16, m)  # paraspinal
    _bone(c, 0, spine_y, 22, 18, 900.0, spec.marrow_hu)  # lumbar vertebral body
    _bone(c, 0, spine_y + 32, 5, 14, 900.0, spec.marrow_hu)
    c.ellipse(0, spine_y + 22, 10, 8, 30.0)
    if not pelvic:
        c.ellipse(12, spine_y - 30, 11, 11, art)  # aorta
        c.ellipse(-22, spine_y - 28, 12, 10, 160.0 if spec.enhanced else 40.0)  # IVC
    if t > 0.5:  # lower ribs around the upper abdomen
        X, Y = c.grid
        ring = (np.hypot(X / (rx - spec.wall - 5), Y / (ry - spec.wall - 5)) - 1) ** 2 < 0.0006
        c.s[ring & body & (np.cos(9 * np.arctan2(Y, X) + 7 * t) > 0.3)] = 800.0
    return body


def render_abdomen(spec: AbdomenSpec, spacing_zyx=(2.0, 1.0, 1.0)):
    """(hu float32 (z, y, x), labels uint16 all zero: no neck nodes here, origin_xyz) of an abdomen."""
    sz, sy, sx = spacing_zyx
    fov = (2 * spec.rx + 16, 2 * (spec.couch_y + 30 if spec.couch_y else spec.ry) + 16)
    nz, ny, nx = int(round(spec.height / sz)), int(round(fov[1] / sy)), int(round(fov[0] / sx))
    origin = (-fov[0] / 2, -fov[1] / 2, 0.0)
    xs = (origin[0] + np.arange(nx) * sx).astype(np.float32)
    ys = (origin[1] + np.arange(ny) * sy).astype(np.float32)
    hu = np.empty((nz, ny, nx), np.float32)
    for k in range(nz):
        s = np.full((ny, nx), -1000.0, np.float32)
        body = _abdomen_slice(Canvas(xs, ys, s), spec, k * sz)
        s[~body] = -1000.0
        if spec.couch_y:
            couch(Canvas(xs, ys, s), spec.couch_y)
        hu[k] = s
    marble(hu, spacing_zyx, spec.texture, np.random.default_rng(spec.seed + 9_000_001))
    hu = imaging(hu, spacing_zyx, spec.blur_sigma, spec.noise, np.random.default_rng(spec.seed + 1_000_003))
    return hu, np.zeros(hu.shape, np.uint16), origin
